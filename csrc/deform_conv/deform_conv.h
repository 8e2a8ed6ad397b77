#pragma once
// Deformable convolution: the per-point bilinear sampling shared by the CPU and CUDA
// kernels, and the argument checks.
//
// Border rule (torchvision's): a sample is bilinear over its four neighbours and a
// neighbour outside the image counts as 0, so a point with y < -1, y >= H, x < -1 or
// x >= W samples 0 and gets no gradient. The backward differentiates exactly this
// function, one-sided from above at integer coordinates: at y = -1 (where zero offsets
// with padding 1 put the border taps) the value is 0 and the y-derivative is the pixel
// at row 0, as torchvision computes it.
//
// Non-finite values propagate so that a diverging training run shows: a NaN or infinite
// offset makes the sample NaN (torchvision returns 0 for an infinite one in the forward
// and NaN in the backward), and a NaN mask makes the sample NaN even outside the image.
#include <ATen/core/Tensor.h>

#include <cmath>
#include <limits>

#include "common/host_device.h"

namespace rfe {

// The four neighbours of (y, x) with their bilinear weights and the weights' derivatives,
// for the backward. `finite` is false when y or x is NaN or infinite.
template <typename T>
struct Bilinear {
  bool finite;
  bool inside[4];
  int64_t index[4];  // into an H * W plane, where inside
  T weight[4];
  T dweight_dy[4];  // d weight / dy and d weight / dx, for the coordinate gradients
  T dweight_dx[4];
};

// Whether (y, x) has a neighbour inside the H x W image (y = -1 counts: its value is 0
// but its derivative is not).
template <typename T>
RFE_HOST_DEVICE inline bool touches_image(T y, T x, int64_t H, int64_t W) {
  return y >= T(-1) && y < T(H) && x >= T(-1) && x < T(W);
}

template <typename T>
RFE_HOST_DEVICE inline Bilinear<T> bilinear(T y, T x, int64_t H, int64_t W) {
  Bilinear<T> b;
  b.finite = is_finite(y) && is_finite(x);
  for (int k = 0; k < 4; ++k) {
    b.inside[k] = false;
    b.index[k] = 0;
    b.weight[k] = b.dweight_dy[k] = b.dweight_dx[k] = T(0);
  }
  if (!b.finite || !touches_image(y, x, H, W)) return b;
  const T fy = floor(y), fx = floor(x);
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  const T ly = y - fy, lx = x - fx, hy = T(1) - ly, hx = T(1) - lx;
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1}, xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const T wy[4] = {hy, hy, ly, ly}, wx[4] = {hx, lx, hx, lx};
  const T dwy[4] = {T(-1), T(-1), T(1), T(1)}, dwx[4] = {T(-1), T(1), T(-1), T(1)};
  for (int k = 0; k < 4; ++k) {
    if (ys[k] < 0 || ys[k] >= H || xs[k] < 0 || xs[k] >= W) continue;
    b.inside[k] = true;
    b.index[k] = ys[k] * W + xs[k];
    b.weight[k] = wy[k] * wx[k];
    b.dweight_dy[k] = dwy[k] * wx[k];
    b.dweight_dx[k] = wy[k] * dwx[k];
  }
  return b;
}

// The forward's sampling, the one both backends use: the four neighbours' indices and
// their weights times `scale` (the mask), so that the sample is
// sum_k weight[k] * plane[index[k]], read branch-free. A neighbour outside the image has
// index 0 and weight 0 * scale (0, or NaN for a non-finite mask); a non-finite
// coordinate gives weight[0] = NaN.
template <typename T, typename Index>
RFE_HOST_DEVICE inline void bilinear_weights(T y, T x, int64_t H, int64_t W, T scale, Index* index, T* weight) {
  const T outside = T(0) * scale;
  for (int k = 0; k < 4; ++k) index[k] = 0, weight[k] = outside;
  if (!(is_finite(y) && is_finite(x))) {
    weight[0] = std::numeric_limits<T>::quiet_NaN();
    return;
  }
  if (!touches_image(y, x, H, W)) return;
  const T fy = floor(y), fx = floor(x);
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  const T ly = y - fy, lx = x - fx, hy = T(1) - ly, hx = T(1) - lx;
  const bool top = y0 >= 0, bottom = y0 + 1 < H, left = x0 >= 0, right = x0 + 1 < W;
  if (top && left) index[0] = y0 * W + x0, weight[0] = hy * hx * scale;
  if (top && right) index[1] = y0 * W + x0 + 1, weight[1] = hy * lx * scale;
  if (bottom && left) index[2] = (y0 + 1) * W + x0, weight[2] = ly * hx * scale;
  if (bottom && right) index[3] = (y0 + 1) * W + x0 + 1, weight[3] = ly * lx * scale;
}

// The backward's per-channel quantities at one sampling point: the sample (unmodulated)
// and its derivatives along y and x.
template <typename T, typename V>
RFE_HOST_DEVICE inline void sample_and_slopes(const Bilinear<T>& b, const V* plane, T* value, T* dy, T* dx) {
  T v = T(0), sy = T(0), sx = T(0);
  for (int k = 0; k < 4; ++k) {
    if (!b.inside[k]) continue;
    const T p = static_cast<T>(plane[b.index[k]]);
    v += b.weight[k] * p;
    sy += b.dweight_dy[k] * p;
    sx += b.dweight_dx[k] * p;
  }
  *value = v, *dy = sy, *dx = sx;
}

// Shapes of one deformable convolution call, checked against each other.
struct DeformShape {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo, groups, offset_groups;
  int64_t sh, sw, ph, pw, dh, dw;
  RFE_HOST_DEVICE int64_t K() const { return kh * kw; }
  RFE_HOST_DEVICE int64_t L() const { return Ho * Wo; }
};

// The sampling point of kernel point k for output position (i, j) of image n, offset
// group g, computed in acc_t from offsets and mask stored as scalar_t.
template <typename scalar_t, typename acc_t>
struct SamplePoints {
  DeformShape s;
  const scalar_t* offset;  // [N, og * K * 2, Ho, Wo]
  const scalar_t* mask;    // [N, og * K, Ho, Wo] or null

  RFE_HOST_DEVICE void point(int64_t n, int64_t g, int64_t k, int64_t i, int64_t j, acc_t* y, acc_t* x,
                             acc_t* modulation) const {
    const int64_t K = s.K(), L = s.L(), l = i * s.Wo + j;
    const scalar_t* off = offset + ((n * s.offset_groups + g) * K + k) * 2 * L;
    *y = acc_t(i * s.sh - s.ph + (k / s.kw) * s.dh) + static_cast<acc_t>(off[l]);
    *x = acc_t(j * s.sw - s.pw + (k % s.kw) * s.dw) + static_cast<acc_t>(off[L + l]);
    *modulation = mask ? static_cast<acc_t>(mask[((n * s.offset_groups + g) * K + k) * L + l]) : acc_t(1);
  }

  // The backward's view of the point (see bilinear()) and its modulation.
  RFE_HOST_DEVICE Bilinear<acc_t> at(int64_t n, int64_t g, int64_t k, int64_t i, int64_t j, acc_t* modulation) const {
    acc_t y, x;
    point(n, g, k, i, j, &y, &x, modulation);
    return bilinear(y, x, s.H, s.W);
  }

  // The forward's view: neighbour indices and weights times the mask (bilinear_weights()).
  template <typename Index>
  RFE_HOST_DEVICE void weights(int64_t n, int64_t g, int64_t k, int64_t i, int64_t j, Index* index,
                               acc_t* weight) const {
    acc_t y, x, modulation;
    point(n, g, k, i, j, &y, &x, &modulation);
    bilinear_weights(y, x, s.H, s.W, modulation, index, weight);
  }
};

// Images per chunk: the batch runs in chunks whose column buffer ([C * kh * kw,
// images * Ho * Wo]) holds at most `backend_default` elements, or the budget set with
// the op set_deform_conv_column_budget (tests use it to reach the multi-chunk path).
int64_t images_per_chunk(const DeformShape& s, int64_t backend_default);

// Output positions per tile: the CPU kernels run each image in tiles of positions whose
// column buffer ([positions, C * kh * kw]) holds at most the budget (as above).
int64_t positions_per_tile(const DeformShape& s, int64_t backend_default);

// Sets the column budget in elements (0: each backend's default); returns the previous.
int64_t set_column_budget(int64_t elements);

// The sizes that the arguments' checks derive, symbolic where the shapes are.
struct DeformSizes {
  c10::SymInt Ho, Wo, groups, offset_groups;
};

// Checks deform_conv2d's arguments against each other (names the argument, the shape seen
// and the shape wanted); the Meta kernels call it on symbolic shapes.
DeformSizes check_deform_conv_sizes(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                                    int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w);

// The same checks, with the concrete shapes the kernels index with.
DeformShape check_deform_conv_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                   const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                                   int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w);

// deform_conv2d_backward's grad_out: the forward's output shape.
void check_deform_conv_grad_out(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                const DeformSizes& sizes);

}  // namespace rfe
