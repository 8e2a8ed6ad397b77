// Deformable convolution on the CPU, channels-last and in tiles.
//
// The input is copied once into a zero-bordered [N, H + 2, W + 2, C] layout. A sampling
// point that touches the image (see touches_image) then reads its four neighbours as four
// contiguous channel vectors with no bounds checks: a neighbour outside the image reads
// the zero border, which is the border rule, and the backward scatters into a bordered
// gradient whose border is thrown away. Output positions run in tiles whose column
// buffer ([positions, C * K]) stays in cache:
// - forward: sample the tile's columns, then one GEMM per weight group into the output;
// - backward: GEMM to the tile's column gradients, one pass over the sampling points that
//   scatters the input gradient, forms the offset and mask gradients and re-forms the
//   tile's columns, then the weight-gradient GEMM. Each work item (an image, or part of
//   one when there are fewer images than threads) owns its input- and weight-gradient
//   buffers, summed at the end: no atomics, no races, the same result for the same
//   thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "deform_conv/deform_conv.h"

namespace rfe {
namespace {

// Column-buffer elements per tile by default (512 KB of float32, within a core's L2).
constexpr int64_t kTileBudget = int64_t(1) << 17;

// Channel vectors of one tile's columns are laid out [position, group, K, C / groups]: a
// weight group's columns are one block per position, so that each group is one GEMM.
struct Columns {
  int64_t K, Cg, width;  // width = C * K
  int64_t at(int64_t k, int64_t c) const { return (c / Cg) * K * Cg + k * Cg + c % Cg; }
};

// A stretch of channels in one offset group and one weight group: contiguous both in
// the channels-last input and in the columns.
struct ChannelRun {
  int64_t begin, end;
};

std::vector<std::vector<ChannelRun>> runs_per_offset_group(const DeformShape& s) {
  const int64_t per_og = s.C / s.offset_groups, Cg = s.C / s.groups;
  std::vector<std::vector<ChannelRun>> runs(s.offset_groups);
  for (int64_t g = 0; g < s.offset_groups; ++g)
    for (int64_t c = g * per_og; c < (g + 1) * per_og;) {
      const int64_t end = std::min((g + 1) * per_og, (c / Cg + 1) * Cg);
      runs[g].push_back({c, end});
      c = end;
    }
  return runs;
}

// One sampling point: where its four neighbours' channel vectors start in the bordered
// image, their bilinear weights and the weights' derivatives along y and x.
template <typename T>
struct Tap {
  enum Kind { kInside, kOutside, kNonFinite } kind;
  int64_t at[4];
  T weight[4], dweight_dy[4], dweight_dx[4];
  T modulation;
};

template <typename T>
Tap<T> tap(const SamplePoints<T, T>& points, int64_t n, int64_t g, int64_t k, int64_t i, int64_t j) {
  const DeformShape& s = points.s;
  Tap<T> t;
  T y, x;
  points.point(n, g, k, i, j, &y, &x, &t.modulation);
  if (!(is_finite(y) && is_finite(x))) return t.kind = Tap<T>::kNonFinite, t;
  if (!touches_image(y, x, s.H, s.W)) return t.kind = Tap<T>::kOutside, t;
  t.kind = Tap<T>::kInside;
  const T fy = std::floor(y), fx = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  const T ly = y - fy, lx = x - fx, hy = T(1) - ly, hx = T(1) - lx;
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1}, xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const T wy[4] = {hy, hy, ly, ly}, wx[4] = {hx, lx, hx, lx};
  const T dwy[4] = {T(-1), T(-1), T(1), T(1)}, dwx[4] = {T(-1), T(1), T(-1), T(1)};
  for (int q = 0; q < 4; ++q) {
    t.at[q] = ((ys[q] + 1) * (s.W + 2) + xs[q] + 1) * s.C;
    t.weight[q] = wy[q] * wx[q];
    t.dweight_dy[q] = dwy[q] * wx[q];
    t.dweight_dx[q] = wy[q] * dwx[q];
  }
  return t;
}

// The modulated sample of n channels: column[c] = sum_q w[q] * neighbour_q[c].
template <typename T>
void sample(const T* p0, const T* p1, const T* p2, const T* p3, const T* w, int64_t n, T* column) {
  const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) column[c] = w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
}

// The backward at one sampling point for n channels with column gradient `grad`: scatters
// w[q] * grad into the four neighbours' input gradients, re-forms the column, and returns
// in dot[q] the dot product of grad with neighbour q.
template <typename T>
void backprop(const T* grad, const T* p0, const T* p1, const T* p2, const T* p3, T* g0, T* g1, T* g2, T* g3,
              const T* w, int64_t n, T* column, T* dot) {
  const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  T d0 = 0, d1 = 0, d2 = 0, d3 = 0;
#pragma omp simd reduction(+ : d0, d1, d2, d3)
  for (int64_t c = 0; c < n; ++c) {
    const T gc = grad[c], v0 = p0[c], v1 = p1[c], v2 = p2[c], v3 = p3[c];
    d0 += gc * v0, d1 += gc * v1, d2 += gc * v2, d3 += gc * v3;
    g0[c] += w0 * gc, g1[c] += w1 * gc, g2[c] += w2 * gc, g3[c] += w3 * gc;
    column[c] = w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3;
  }
  dot[0] = d0, dot[1] = d1, dot[2] = d2, dot[3] = d3;
}

// The worker threads of at::parallel_for do not inherit the caller's dispatch state: the
// GEMMs there would otherwise see the weight's requires_grad and refuse out= arguments.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

template <typename T>
void fill(T* begin, int64_t n, T value) {
  std::fill(begin, begin + n, value);
}

// [N, C, H, W] -> [N, H + 2, W + 2, C] with a zero border.
at::Tensor bordered_channels_last(const at::Tensor& input) {
  return at::constant_pad_nd(input, {1, 1, 1, 1}, 0).permute({0, 2, 3, 1}).contiguous();
}

// weight [O, Cg, kh, kw] -> [groups, O / groups, K * Cg] in the columns' order.
at::Tensor weight_as_columns(const at::Tensor& weight, const DeformShape& s) {
  const int64_t Cg = s.C / s.groups;
  return weight.reshape({s.groups, s.O / s.groups, Cg, s.K()}).permute({0, 1, 3, 2}).reshape(
      {s.groups, s.O / s.groups, s.K() * Cg});
}

// Samples the columns of positions [l0, l0 + T) of image n.
template <typename T>
void tile_columns(const T* image, const SamplePoints<T, T>& points, const std::vector<std::vector<ChannelRun>>& runs,
                  const Columns& layout, int64_t n, int64_t l0, int64_t T_, T* columns) {
  const DeformShape& s = points.s;
  for (int64_t k = 0; k < s.K(); ++k)
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t l = l0 + t;
      T* row = columns + t * layout.width;
      for (int64_t g = 0; g < s.offset_groups; ++g) {
        const Tap<T> p = tap(points, n, g, k, l / s.Wo, l % s.Wo);
        for (const ChannelRun& run : runs[g]) {
          T* column = row + layout.at(k, run.begin);
          const int64_t width = run.end - run.begin;
          if (p.kind == Tap<T>::kNonFinite) {
            fill(column, width, std::numeric_limits<T>::quiet_NaN());
          } else if (p.kind == Tap<T>::kOutside) {
            fill(column, width, T(0) * p.modulation);  // NaN for a NaN mask, as the reference
          } else {
            const T w[4] = {p.weight[0] * p.modulation, p.weight[1] * p.modulation, p.weight[2] * p.modulation,
                            p.weight[3] * p.modulation};
            const T* c0 = image + run.begin;
            sample(c0 + p.at[0], c0 + p.at[1], c0 + p.at[2], c0 + p.at[3], w, width, column);
          }
        }
      }
    }
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
                             const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_,
                             int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                             int64_t dilation_h, int64_t dilation_w) {
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const at::Tensor bias = bias_.has_value() ? *bias_ : at::Tensor();
  const DeformShape s = check_deform_conv_args(input_, weight_, offset_, mask, bias, stride_h, stride_w,
                                               pad_h, pad_w, dilation_h, dilation_w);
  TORCH_CHECK(input_.scalar_type() == at::kFloat || input_.scalar_type() == at::kDouble,
              "deform_conv2d: input on the CPU must be float32 or float64, got ", input_.scalar_type());
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo}, input_.options());
  if (s.N == 0 || s.O == 0) return bias.defined() ? out.add_(bias.view({1, s.O, 1, 1})) : out;
  const at::Tensor input = bordered_channels_last(input_), offset = offset_.contiguous();
  const at::Tensor weight = weight_as_columns(weight_, s);
  const int64_t L = s.L(), tile = positions_per_tile(s, kTileBudget), tiles = (L + tile - 1) / tile;
  const int64_t Og = s.O / s.groups, Cg = s.C / s.groups;
  const Columns layout{s.K(), Cg, s.C * s.K()};
  const auto runs = runs_per_offset_group(s);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cpu", [&] {
    using T = scalar_t;
    const SamplePoints<T, T> points{s, offset.data_ptr<T>(), mask.defined() ? mask.data_ptr<T>() : nullptr};
    const int64_t image_size = (s.H + 2) * (s.W + 2) * s.C;
    at::parallel_for(0, s.N * tiles, 1, [&](int64_t begin, int64_t end) {
      const BelowAutograd below_autograd;
      at::Tensor columns = at::empty({tile, layout.width}, input.options());
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / tiles, l0 = (item % tiles) * tile, T_ = std::min(tile, L - l0);
        tile_columns(input.data_ptr<T>() + n * image_size, points, runs, layout, n, l0, T_, columns.data_ptr<T>());
        const at::Tensor cols = columns.narrow(0, 0, T_);
        const at::Tensor result = out[n].view({s.O, L}).narrow(1, l0, T_);
        for (int64_t G = 0; G < s.groups; ++G) {
          at::Tensor part = result.narrow(0, G * Og, Og);
          at::mm_out(part, weight[G], cols.narrow(1, G * s.K() * Cg, s.K() * Cg).t());
        }
      }
    });
  });
  if (bias.defined()) out.add_(bias.view({1, s.O, 1, 1}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight_,
    const at::Tensor& offset_, const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_,
    int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
    int64_t dilation_w) {
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const at::Tensor bias = bias_.has_value() ? *bias_ : at::Tensor();
  const DeformShape s = check_deform_conv_args(input_, weight_, offset_, mask, bias, stride_h, stride_w,
                                               pad_h, pad_w, dilation_h, dilation_w);
  TORCH_CHECK(grad_out_.sizes() == at::IntArrayRef({s.N, s.O, s.Ho, s.Wo}),
              "deform_conv2d_backward: grad_out must have shape [", s.N, ", ", s.O, ", ", s.Ho, ", ", s.Wo,
              "], got ", grad_out_.sizes());
  const at::Tensor offset = offset_.contiguous(), grad_out = grad_out_.contiguous();
  const at::Tensor input = bordered_channels_last(input_), weight = weight_as_columns(weight_, s);
  const int64_t K = s.K(), L = s.L(), og = s.offset_groups, Og = s.O / s.groups, Cg = s.C / s.groups;
  const int64_t tile = positions_per_tile(s, kTileBudget), tiles = (L + tile - 1) / tile;
  // Parts per image: enough work items for every thread even for a small batch.
  const int64_t parts = std::min(tiles, std::max<int64_t>(1, (at::get_num_threads() + s.N - 1) / std::max<int64_t>(s.N, 1)));
  const int64_t tiles_per_part = (tiles + parts - 1) / parts;
  const Columns layout{K, Cg, s.C * K};
  const auto runs = runs_per_offset_group(s);
  at::Tensor grad_input_parts = at::zeros({s.N, parts, s.H + 2, s.W + 2, s.C}, input.options());
  at::Tensor grad_weight_parts = at::zeros({s.N * parts, s.groups, Og, K * Cg}, input.options());
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = mask.defined() ? at::empty_like(mask) : at::empty({0}, input.options());
  at::Tensor grad_bias = bias.defined() ? grad_out.sum({0, 2, 3}) : at::empty({0}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    using T = scalar_t;
    const SamplePoints<T, T> points{s, offset.data_ptr<T>(), mask.defined() ? mask.data_ptr<T>() : nullptr};
    const int64_t image_size = (s.H + 2) * (s.W + 2) * s.C;
    const T nan = std::numeric_limits<T>::quiet_NaN();
    T* goff = grad_offset.data_ptr<T>();
    T* gm = mask.defined() ? grad_mask.data_ptr<T>() : nullptr;
    at::parallel_for(0, s.N * parts, 1, [&](int64_t begin, int64_t end) {
      const BelowAutograd below_autograd;
      at::Tensor grad_columns = at::empty({tile, layout.width}, input.options());
      at::Tensor columns = at::empty({tile, layout.width}, input.options());
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / parts, part = item % parts;
        const T* image = input.data_ptr<T>() + n * image_size;
        T* grad_image = grad_input_parts.data_ptr<T>() + item * image_size;
        for (int64_t tile_index = part * tiles_per_part; tile_index < std::min(tiles, (part + 1) * tiles_per_part);
             ++tile_index) {
          const int64_t l0 = tile_index * tile, T_ = std::min(tile, L - l0);
          const at::Tensor go = grad_out[n].view({s.O, L}).narrow(1, l0, T_);
          const at::Tensor gcols = grad_columns.narrow(0, 0, T_), cols = columns.narrow(0, 0, T_);
          for (int64_t G = 0; G < s.groups; ++G) {  // [T, O/g] x [O/g, K * Cg]
            at::Tensor part = gcols.narrow(1, G * K * Cg, K * Cg);
            at::mm_out(part, go.narrow(0, G * Og, Og).t(), weight[G]);
          }
          const T* gc = grad_columns.data_ptr<T>();
          T* cc = columns.data_ptr<T>();
          for (int64_t k = 0; k < K; ++k)
            for (int64_t t = 0; t < T_; ++t) {
              const int64_t l = l0 + t;
              for (int64_t g = 0; g < og; ++g) {
                const Tap<T> p = tap(points, n, g, k, l / s.Wo, l % s.Wo);
                const int64_t channel = (n * og + g) * K + k;
                T* dy = goff + channel * 2 * L + l;
                T* dx = dy + L;
                T* dm = gm ? gm + channel * L + l : nullptr;
                if (p.kind != Tap<T>::kInside) {  // a NaN or infinite offset: NaN gradients
                  const T value = p.kind == Tap<T>::kNonFinite ? nan : T(0);
                  *dy = *dx = value;
                  if (dm) *dm = value;
                  for (const ChannelRun& run : runs[g])
                    fill(cc + t * layout.width + layout.at(k, run.begin), run.end - run.begin,
                         p.kind == Tap<T>::kNonFinite ? nan : T(0) * p.modulation);
                  continue;
                }
                const T w[4] = {p.weight[0] * p.modulation, p.weight[1] * p.modulation,
                                p.weight[2] * p.modulation, p.weight[3] * p.modulation};
                T d_y = 0, d_x = 0, d_mask = 0;
                for (const ChannelRun& run : runs[g]) {
                  const int64_t column = t * layout.width + layout.at(k, run.begin);
                  const T* c0 = image + run.begin;
                  T* g0 = grad_image + run.begin;
                  T dot[4];
                  backprop(gc + column, c0 + p.at[0], c0 + p.at[1], c0 + p.at[2], c0 + p.at[3], g0 + p.at[0],
                           g0 + p.at[1], g0 + p.at[2], g0 + p.at[3], w, run.end - run.begin, cc + column, dot);
                  for (int q = 0; q < 4; ++q) {
                    d_y += p.dweight_dy[q] * dot[q];
                    d_x += p.dweight_dx[q] * dot[q];
                    d_mask += p.weight[q] * dot[q];
                  }
                }
                *dy = d_y * p.modulation, *dx = d_x * p.modulation;
                if (dm) *dm = d_mask;
              }
            }
          at::Tensor grad_weight = grad_weight_parts[item];
          for (int64_t G = 0; G < s.groups; ++G)  // [O/g, T] x [T, K * Cg]
            grad_weight[G].addmm_(go.narrow(0, G * Og, Og), cols.narrow(1, G * K * Cg, K * Cg));
        }
      }
    });
  });
  const at::Tensor grad_input = grad_input_parts.sum(1)
                                    .narrow(1, 1, s.H)
                                    .narrow(2, 1, s.W)
                                    .permute({0, 3, 1, 2})
                                    .contiguous();
  const at::Tensor grad_weight = grad_weight_parts.sum(0)
                                     .view({s.groups, Og, K, Cg})
                                     .permute({0, 1, 3, 2})
                                     .reshape(weight_.sizes())
                                     .contiguous();
  return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace rfe
