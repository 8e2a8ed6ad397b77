#pragma once
// Deformable convolution: the per-point bilinear sampling shared by the CPU and CUDA
// kernels, and the argument checks. Border rule (torchvision's): a sample is bilinear
// over its four neighbours, a neighbour outside the image counts as 0, so a point with
// y <= -1, y >= H, x <= -1 or x >= W samples 0 and gets no gradient. The backward
// differentiates exactly this function (one-sided at integer coordinates).
#include <ATen/core/Tensor.h>

#include <cmath>

#include "common/host_device.h"

namespace rfe {

// The four neighbours of (y, x) with their bilinear weights; weight 0 where outside.
template <typename T>
struct Bilinear {
  bool inside[4];
  int64_t index[4];  // into an H * W plane, where inside
  T weight[4];
  // d weight / dy and d weight / dx for the coordinate gradients
  T dweight_dy[4];
  T dweight_dx[4];
};

template <typename T>
RFE_HOST_DEVICE inline Bilinear<T> bilinear(T y, T x, int64_t H, int64_t W) {
  Bilinear<T> b;
  for (int k = 0; k < 4; ++k) {
    b.inside[k] = false;
    b.index[k] = 0;
    b.weight[k] = b.dweight_dy[k] = b.dweight_dx[k] = T(0);
  }
  if (!(y > T(-1) && y < T(H) && x > T(-1) && x < T(W))) return b;
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

// The forward's lean version of bilinear(): the four neighbours' indices and weights
// (times `scale`), index 0 and weight 0 for a neighbour outside the image.
template <typename T, typename Index>
RFE_HOST_DEVICE inline void bilinear_weights(T y, T x, int64_t H, int64_t W, T scale, Index* index, T* weight) {
  for (int k = 0; k < 4; ++k) index[k] = 0, weight[k] = T(0);
  if (!(y > T(-1) && y < T(H) && x > T(-1) && x < T(W))) return;
  const T fy = floor(y), fx = floor(x);
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  const T ly = y - fy, lx = x - fx, hy = T(1) - ly, hx = T(1) - lx;
  const bool top = y0 >= 0, bottom = y0 + 1 < H, left = x0 >= 0, right = x0 + 1 < W;
  if (top && left) index[0] = y0 * W + x0, weight[0] = hy * hx * scale;
  if (top && right) index[1] = y0 * W + x0 + 1, weight[1] = hy * lx * scale;
  if (bottom && left) index[2] = (y0 + 1) * W + x0, weight[2] = ly * hx * scale;
  if (bottom && right) index[3] = (y0 + 1) * W + x0 + 1, weight[3] = ly * lx * scale;
}

template <typename T>
RFE_HOST_DEVICE inline T sample(const Bilinear<T>& b, const T* plane) {
  T v = T(0);
  for (int k = 0; k < 4; ++k)
    if (b.inside[k]) v += b.weight[k] * plane[b.index[k]];
  return v;
}

// Shapes of one deformable convolution call, checked against each other.
struct DeformShape {
  int64_t N, C, H, W, O, kh, kw, Ho, Wo, groups, offset_groups;
  int64_t sh, sw, ph, pw, dh, dw;
  RFE_HOST_DEVICE int64_t K() const { return kh * kw; }
  RFE_HOST_DEVICE int64_t L() const { return Ho * Wo; }
};

// The sampling point of kernel point k for output position l of image n, offset group g,
// computed in acc_t from offsets and mask stored as scalar_t.
template <typename scalar_t, typename acc_t>
struct SamplePoints {
  DeformShape s;
  const scalar_t* offset;  // [N, og * K * 2, Ho, Wo]
  const scalar_t* mask;    // [N, og * K, Ho, Wo] or null

  RFE_HOST_DEVICE Bilinear<acc_t> at(int64_t n, int64_t g, int64_t k, int64_t l, acc_t* modulation) const {
    const int64_t K = s.K(), L = s.L(), i = l / s.Wo, j = l % s.Wo;
    const scalar_t* off = offset + ((n * s.offset_groups + g) * K + k) * 2 * L;
    const acc_t y = acc_t(i * s.sh - s.ph + (k / s.kw) * s.dh) + static_cast<acc_t>(off[l]);
    const acc_t x = acc_t(j * s.sw - s.pw + (k % s.kw) * s.dw) + static_cast<acc_t>(off[L + l]);
    *modulation = mask ? static_cast<acc_t>(mask[((n * s.offset_groups + g) * K + k) * L + l]) : acc_t(1);
    return bilinear(y, x, s.H, s.W);
  }

  // The forward's sampling at output position l = (i, j): neighbour indices and weights
  // times the mask (i and j are passed in: the callers walk them without divisions).
  template <typename Index>
  RFE_HOST_DEVICE void weights(int64_t n, int64_t g, int64_t k, int64_t i, int64_t j, Index* index,
                               acc_t* weight) const {
    const int64_t K = s.K(), L = s.L(), l = i * s.Wo + j;
    const scalar_t* off = offset + ((n * s.offset_groups + g) * K + k) * 2 * L;
    const acc_t y = acc_t(i * s.sh - s.ph + (k / s.kw) * s.dh) + static_cast<acc_t>(off[l]);
    const acc_t x = acc_t(j * s.sw - s.pw + (k % s.kw) * s.dw) + static_cast<acc_t>(off[L + l]);
    const acc_t modulation = mask ? static_cast<acc_t>(mask[((n * s.offset_groups + g) * K + k) * L + l]) : acc_t(1);
    bilinear_weights(y, x, s.H, s.W, modulation, index, weight);
  }
};

DeformShape check_deform_conv_args(const at::Tensor& input, const at::Tensor& weight,
                                   const at::Tensor& offset, const at::Tensor& mask,
                                   const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                                   int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                   int64_t dilation_w);

}  // namespace rfe
