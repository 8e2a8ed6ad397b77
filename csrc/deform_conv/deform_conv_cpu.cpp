// Deformable convolution on the CPU, channels-last and in tiles. (Over 400 lines: the
// forward and the fused backward share the bordered layout and the tile loops below.)
//
// The input is copied once into a zero-bordered [N, H + 2, W + 2, C] layout. A sampling
// point that touches the image (see touches_image) then reads its four neighbours as four
// contiguous channel vectors with no bounds checks: a neighbour outside the image reads
// the zero border, which is the border rule, and the backward scatters into a bordered
// gradient whose border is thrown away. Output positions run in tiles whose column
// buffer ([positions, C * K]) stays in cache:
// - forward: sample the tile's columns, then one GEMM per weight group into a
//   position-major [positions, O] block (the faster orientation for BLAS here: about
//   1.4x on these shapes), stored into the NCHW output with the bias;
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
#include <limits>
#include <type_traits>
#include <vector>

#include "deform_conv/deform_conv.h"
#include "deform_conv/deform_conv_layout_cpu.h"

namespace rfe {
namespace {

// Column-buffer elements per tile by default (512 KB of float32, within a core's L2).
constexpr int64_t kTileBudget = int64_t(1) << 17;

// The per-tile loops are compiled for x86-64-v4 (AVX-512), v3 (AVX2 with FMA) and the
// baseline, chosen at load time: the extension is built for baseline x86-64, whose vectors
// hold 4 floats. Unlike the rest of the extension they may contract a * b + c into an FMA:
// this kernel's results already differ from the reference's in rounding (its GEMMs sum in
// another order) and are compared with tolerances.
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define RFE_VECTOR_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), optimize("fp-contract=fast")))
#else
#define RFE_VECTOR_CLONES
#endif

// A tile's columns are laid out [position, group, K, C / groups]: a weight group's columns
// are one block per position, so that each group is one GEMM.
struct Columns {
  int64_t K, Cg, width;  // width = C * K
  int64_t at(int64_t k, int64_t c) const { return (c / Cg) * K * Cg + k * Cg + c % Cg; }
};

// A stretch of channels in one offset group and one weight group: contiguous both in
// the channels-last input and in the columns.
struct ChannelRun {
  int64_t begin, end;
};

using ChannelRuns = std::vector<std::vector<ChannelRun>>;  // per offset group

ChannelRuns runs_per_offset_group(const DeformShape& s) {
  const int64_t per_og = s.C / s.offset_groups, Cg = s.C / s.groups;
  ChannelRuns runs(s.offset_groups);
  for (int64_t g = 0; g < s.offset_groups; ++g)
    for (int64_t c = g * per_og; c < (g + 1) * per_og;) {
      const int64_t end = std::min((g + 1) * per_og, (c / Cg + 1) * Cg);
      runs[g].push_back({c, end});
      c = end;
    }
  return runs;
}

// Where the taps' coordinates come from: each image's offsets [og * K * 2, Ho, Wo] and
// mask [og * K, Ho, Wo], contiguous within the image; images may lie apart (offsets
// sliced from a larger prediction are read where they are).
template <typename T>
struct TapSource {
  DeformShape s;
  const T* offset;
  int64_t offset_image_stride;
  const T* mask;  // null without a mask
  int64_t mask_image_stride;
};

// One sampling point. Its neighbours (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)
// start at `at`, at + C, at + row and at + row + C in the bordered image; with
// h = 1 - l their bilinear weights are hy hx, hy lx, ly hx, ly lx.
template <typename T>
struct Tap {
  enum Kind : int32_t { kInside, kOutside, kNonFinite } kind;
  int64_t at;
  T ly, lx, modulation;
};

// floor(v) for a finite v in [-1, H): truncation, corrected below zero; exact, and
// without the libm call that std::floor is on baseline x86-64.
template <typename T>
inline int64_t floor_index(T v) {
  const int64_t t = static_cast<int64_t>(v);
  return t > v ? t - 1 : t;
}

// The taps of kernel point k, offset group g, for positions [l0, l0 + count) of image n.
template <typename T>
__attribute__((always_inline)) inline void taps(const TapSource<T>& points, int64_t n, int64_t g, int64_t k, int64_t l0,
                                                int64_t count, Tap<T>* out) {
  const DeformShape& s = points.s;
  const int64_t L = s.L(), channel = g * s.K() + k;
  const T* offset_y = points.offset + n * points.offset_image_stride + channel * 2 * L;
  const T* offset_x = offset_y + L;
  const T* mask = points.mask ? points.mask + n * points.mask_image_stride + channel * L : nullptr;
  const int64_t y_base = (k / s.kw) * s.dh - s.ph, x_base = (k % s.kw) * s.dw - s.pw;
  int64_t i = l0 / s.Wo, j = l0 % s.Wo;
  for (int64_t q = 0; q < count; ++q) {
    const int64_t l = l0 + q;
    Tap<T>& t = out[q];
    const T y = T(i * s.sh + y_base) + offset_y[l];
    const T x = T(j * s.sw + x_base) + offset_x[l];
    if (++j == s.Wo) j = 0, ++i;
    t.modulation = mask ? mask[l] : T(1);
    if (!(is_finite(y) && is_finite(x))) {
      t.kind = Tap<T>::kNonFinite;
    } else if (!touches_image(y, x, s.H, s.W)) {
      t.kind = Tap<T>::kOutside;
    } else {
      const int64_t y0 = floor_index(y), x0 = floor_index(x);
      t.kind = Tap<T>::kInside;
      t.at = ((y0 + 1) * (s.W + 2) + x0 + 1) * s.C;
      t.ly = y - T(y0), t.lx = x - T(x0);
    }
  }
}

// The columns of a tap that samples nothing: 0 outside the image (NaN for a NaN mask, as
// the reference), NaN for a non-finite coordinate.
template <typename T>
inline void fill_columns(const Tap<T>& p, const std::vector<ChannelRun>& runs, const Columns& layout, int64_t k,
                         T* row) {
  const T value = p.kind == Tap<T>::kNonFinite ? std::numeric_limits<T>::quiet_NaN() : T(0) * p.modulation;
  for (const ChannelRun& run : runs) std::fill_n(row + layout.at(k, run.begin), run.end - run.begin, value);
}

// Samples the columns of positions [l0, l0 + count) of image n; `tap_buffer` holds count taps.
// kWidth > 0: every channel run is kWidth wide (see channel_width).
template <typename T, int kWidth>
RFE_VECTOR_CLONES void tile_columns(const T* image, const TapSource<T>& points, const ChannelRuns& runs,
                                    const Columns& layout, int64_t n, int64_t l0, int64_t count, Tap<T>* tap_buffer,
                                    T* columns) {
  const DeformShape& s = points.s;
  const int64_t row = (s.W + 2) * s.C;
  for (int64_t k = 0; k < s.K(); ++k)
    for (int64_t g = 0; g < s.offset_groups; ++g) {
      taps(points, n, g, k, l0, count, tap_buffer);
      for (int64_t t = 0; t < count; ++t) {
        const Tap<T>& p = tap_buffer[t];
        if (p.kind != Tap<T>::kInside) {
          fill_columns(p, runs[g], layout, k, columns + t * layout.width);
          continue;
        }
        const T hy = T(1) - p.ly, hx = T(1) - p.lx, m = p.modulation;
        const T w0 = hy * hx * m, w1 = hy * p.lx * m, w2 = p.ly * hx * m, w3 = p.ly * p.lx * m;
        for (const ChannelRun& run : runs[g]) {
          const T* p0 = image + p.at + run.begin;
          const T *p1 = p0 + s.C, *p2 = p0 + row, *p3 = p2 + s.C;
          T* column = columns + t * layout.width + layout.at(k, run.begin);
          const int64_t width = kWidth > 0 ? kWidth : run.end - run.begin;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) column[c] = w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
        }
      }
    }
}

// a[0] + ... + a[15], pairwise: the compiler may not reorder a plain reduction, and in
// order the final sum was 15 dependent additions per tap.
template <typename T>
__attribute__((always_inline)) inline T pairwise_sum16(T* a) {
#pragma GCC unroll 8
  for (int v = 0; v < 8; ++v) a[v] += a[v + 8];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) a[v] += a[v + 4];
  return (a[0] + a[2]) + (a[1] + a[3]);
}

// The backward of positions [l0, l0 + count) of image n, given the tile's column
// gradients: scatters into the bordered input gradient, writes the offset and mask
// gradients, and re-forms the columns (for the weight gradient). kWidth as tile_columns.
template <typename T, int kWidth>
RFE_VECTOR_CLONES void tile_backward(const T* image, const TapSource<T>& points, const ChannelRuns& runs,
                                     const Columns& layout, int64_t n, int64_t l0, int64_t count, Tap<T>* tap_buffer,
                                     const T* grad_columns, T* grad_image, T* columns, T* grad_offset, T* grad_mask) {
  const DeformShape& s = points.s;
  const int64_t K = s.K(), L = s.L(), row = (s.W + 2) * s.C;
  constexpr int kLanes = 16;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t g = 0; g < s.offset_groups; ++g) {
      taps(points, n, g, k, l0, count, tap_buffer);
      const int64_t channel = (n * s.offset_groups + g) * K + k;
      T* grad_y = grad_offset + channel * 2 * L + l0;
      T* grad_x = grad_y + L;
      T* grad_m = grad_mask ? grad_mask + channel * L + l0 : nullptr;
      for (int64_t t = 0; t < count; ++t) {
        const Tap<T>& p = tap_buffer[t];
        if (p.kind != Tap<T>::kInside) {  // a NaN or infinite offset: NaN gradients
          const T value = p.kind == Tap<T>::kNonFinite ? std::numeric_limits<T>::quiet_NaN() : T(0);
          grad_y[t] = grad_x[t] = value;
          if (grad_m) grad_m[t] = value;
          fill_columns(p, runs[g], layout, k, columns + t * layout.width);
          continue;
        }
        const T ly = p.ly, lx = p.lx, hy = T(1) - ly, hx = T(1) - lx, m = p.modulation;
        const T v0 = hy * hx, v1 = hy * lx, v2 = ly * hx, v3 = ly * lx;  // bilinear weights
        const T w0 = v0 * m, w1 = v1 * m, w2 = v2 * m, w3 = v3 * m;      // times the mask
        // per lane: grad * d sample / dy, grad * d sample / dx and grad * sample
        T along_y[kLanes] = {}, along_x[kLanes] = {}, sampled[kLanes] = {};
        for (const ChannelRun& run : runs[g]) {
          const int64_t first = t * layout.width + layout.at(k, run.begin);
          const int64_t width = kWidth > 0 ? kWidth : run.end - run.begin;
          const T* grad = grad_columns + first;
          T* column = columns + first;
          const T* p0 = image + p.at + run.begin;
          const T *p1 = p0 + s.C, *p2 = p0 + row, *p3 = p2 + s.C;
          T* g0 = grad_image + p.at + run.begin;
          T *g1 = g0 + s.C, *g2 = g0 + row, *g3 = g2 + s.C;
          for (int64_t start = 0; start < width; start += kLanes) {
            const int lanes = static_cast<int>(std::min<int64_t>(kLanes, width - start));
#pragma omp simd
            for (int v = 0; v < lanes; ++v) {
              const int64_t c = start + v;
              const T gc = grad[c], a = p0[c], b = p1[c], d = p2[c], e = p3[c];
              along_y[v] += gc * (hx * (d - a) + lx * (e - b));
              along_x[v] += gc * (hy * (b - a) + ly * (e - d));
              sampled[v] += gc * (v0 * a + v1 * b + v2 * d + v3 * e);
              g0[c] += w0 * gc, g1[c] += w1 * gc, g2[c] += w2 * gc, g3[c] += w3 * gc;
              column[c] = w0 * a + w1 * b + w2 * d + w3 * e;
            }
          }
        }
        grad_y[t] = pairwise_sum16(along_y) * m;
        grad_x[t] = pairwise_sum16(along_x) * m;
        if (grad_m) grad_m[t] = pairwise_sum16(sampled);
      }
    }
}

// Calls f(std::integral_constant<int, width>) with the channel runs' common width where it
// is one the per-tile loops are compiled for (one run of 16, 32 or 64 channels: the
// compiler then unrolls a tap's channels into whole vectors), else with 0 (any runs).
template <typename F>
void with_channel_width(const DeformShape& s, F&& f) {
  if (s.groups == 1 && s.offset_groups == 1) {
    if (s.C == 16) return f(std::integral_constant<int, 16>{});
    if (s.C == 32) return f(std::integral_constant<int, 32>{});
    if (s.C == 64) return f(std::integral_constant<int, 64>{});
  }
  f(std::integral_constant<int, 0>{});
}

// The worker threads of at::parallel_for do not inherit the caller's dispatch state: the
// GEMMs there would otherwise see the weight's requires_grad and refuse out= arguments.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

// The tile's outputs, position-major [count, O], into the NCHW output (row stride L),
// plus the bias.
template <typename T>
void store_outputs(const T* products, int64_t count, int64_t O, const T* bias, T* out, int64_t L) {
  for (int64_t o = 0; o < O; ++o) {
    T* row = out + o * L;
    if (bias) {
      const T b = bias[o];
      for (int64_t q = 0; q < count; ++q) row[q] = products[q * O + o] + b;
    } else {
      for (int64_t q = 0; q < count; ++q) row[q] = products[q * O + o];
    }
  }
}

// weight [O, Cg, kh, kw] -> [groups, O / groups, K * Cg] in the columns' order.
at::Tensor weight_as_columns(const at::Tensor& weight, const DeformShape& s) {
  const int64_t Cg = s.C / s.groups;
  return weight.reshape({s.groups, s.O / s.groups, Cg, s.K()})
      .permute({0, 1, 3, 2})
      .reshape({s.groups, s.O / s.groups, s.K() * Cg});
}

template <typename T>
TapSource<T> tap_source(const DeformShape& s, const at::Tensor& offset, const at::Tensor& mask) {
  return {s, offset.data_ptr<T>(), offset.stride(0), mask.defined() ? mask.data_ptr<T>() : nullptr,
          mask.defined() ? mask.stride(0) : 0};
}

at::Tensor deform_conv2d_cpu(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
                             const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_,
                             int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                             int64_t dilation_w) {
  const at::Tensor mask = mask_.has_value() ? images_contiguous(*mask_) : at::Tensor();
  const at::Tensor bias = bias_.has_value() ? bias_->contiguous() : at::Tensor();
  const DeformShape s = check_deform_conv_args(input_, weight_, offset_, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                               dilation_h, dilation_w);
  TORCH_CHECK(input_.scalar_type() == at::kFloat || input_.scalar_type() == at::kDouble,
              "deform_conv2d: input on the CPU must be float32 or float64, got ", input_.scalar_type());
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo}, input_.options());
  if (s.N == 0 || s.O == 0) return bias.defined() ? out.add_(bias.view({1, s.O, 1, 1})) : out;
  const at::Tensor input = bordered_channels_last(input_), offset = images_contiguous(offset_);
  // [groups, K * Cg, O / groups]: the right-hand side of the position-major GEMM
  const at::Tensor weight = weight_as_columns(weight_, s).transpose(1, 2).contiguous();
  const int64_t K = s.K(), L = s.L(), Og = s.O / s.groups, Cg = s.C / s.groups;
  const int64_t tile = positions_per_tile(s, kTileBudget), tiles = (L + tile - 1) / tile;
  const Columns layout{K, Cg, s.C * K};
  const ChannelRuns runs = runs_per_offset_group(s);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cpu", [&] {
    using T = scalar_t;
    const TapSource<T> points = tap_source<T>(s, offset, mask);
    const T* bias_data = bias.defined() ? bias.data_ptr<T>() : nullptr;
    const int64_t image_size = (s.H + 2) * (s.W + 2) * s.C;
    at::parallel_for(0, s.N * tiles, 1, [&](int64_t begin, int64_t end) {
      const BelowAutograd below_autograd;
      at::Tensor columns = at::empty({tile, layout.width}, input.options());
      at::Tensor products = at::empty({tile, s.O}, input.options());
      std::vector<Tap<T>> tap_buffer(tile);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / tiles, l0 = (item % tiles) * tile, count = std::min(tile, L - l0);
        with_channel_width(s, [&](auto width) {
          tile_columns<T, width>(input.data_ptr<T>() + n * image_size, points, runs, layout, n, l0, count,
                                 tap_buffer.data(), columns.data_ptr<T>());
        });
        const at::Tensor cols = columns.narrow(0, 0, count), tile_out = products.narrow(0, 0, count);
        for (int64_t G = 0; G < s.groups; ++G) {  // [count, K * Cg] x [K * Cg, O/g]
          at::Tensor part = tile_out.narrow(1, G * Og, Og);
          at::mm_out(part, cols.narrow(1, G * K * Cg, K * Cg), weight[G]);
        }
        store_outputs(products.data_ptr<T>(), count, s.O, bias_data, out.data_ptr<T>() + n * s.O * L + l0, L);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cpu(
    const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
    const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const at::Tensor mask = mask_.has_value() ? images_contiguous(*mask_) : at::Tensor();
  const at::Tensor bias = bias_.has_value() ? *bias_ : at::Tensor();
  const DeformShape s = check_deform_conv_args(input_, weight_, offset_, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                               dilation_h, dilation_w);
  check_deform_conv_grad_out(grad_out_, input_, weight_, DeformSizes{s.Ho, s.Wo, s.groups, s.offset_groups});
  const at::Tensor offset = images_contiguous(offset_), grad_out = grad_out_.contiguous();
  const at::Tensor input = bordered_channels_last(input_), weight = weight_as_columns(weight_, s);
  const int64_t K = s.K(), L = s.L(), Og = s.O / s.groups, Cg = s.C / s.groups;
  const int64_t tile = positions_per_tile(s, kTileBudget), tiles = (L + tile - 1) / tile;
  // Parts per image: enough work items for every thread even for a small batch.
  const int64_t threads = at::get_num_threads(), images = std::max<int64_t>(s.N, 1);
  const int64_t parts = std::min(tiles, (threads + images - 1) / images);
  const int64_t tiles_per_part = (tiles + parts - 1) / parts;
  const Columns layout{K, Cg, s.C * K};
  const ChannelRuns runs = runs_per_offset_group(s);
  // Each work item zeroes its own part of these (in parallel, and in the cache that uses it).
  at::Tensor grad_input_parts = at::empty({s.N, parts, s.H + 2, s.W + 2, s.C}, input.options());
  at::Tensor grad_weight_parts = at::empty({s.N * parts, s.groups, Og, K * Cg}, input.options());
  at::Tensor grad_offset = at::empty(offset.sizes(), offset.options());
  at::Tensor grad_mask = mask.defined() ? at::empty(mask.sizes(), mask.options()) : at::empty({0}, input.options());
  at::Tensor grad_bias = bias.defined() ? grad_out.sum({0, 2, 3}) : at::empty({0}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    using T = scalar_t;
    const TapSource<T> points = tap_source<T>(s, offset, mask);
    const int64_t image_size = (s.H + 2) * (s.W + 2) * s.C;
    at::parallel_for(0, s.N * parts, 1, [&](int64_t begin, int64_t end) {
      const BelowAutograd below_autograd;
      at::Tensor grad_columns = at::empty({tile, layout.width}, input.options());
      at::Tensor columns = at::empty({tile, layout.width}, input.options());
      std::vector<Tap<T>> tap_buffer(tile);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / parts, part = item % parts;
        T* grad_image = grad_input_parts.data_ptr<T>() + item * image_size;
        std::fill_n(grad_image, image_size, T(0));
        at::Tensor grad_weight = grad_weight_parts[item].zero_();
        for (int64_t index = part * tiles_per_part; index < std::min(tiles, (part + 1) * tiles_per_part); ++index) {
          const int64_t l0 = index * tile, count = std::min(tile, L - l0);
          const at::Tensor go = grad_out[n].view({s.O, L}).narrow(1, l0, count);
          const at::Tensor gcols = grad_columns.narrow(0, 0, count), cols = columns.narrow(0, 0, count);
          for (int64_t G = 0; G < s.groups; ++G) {  // [count, O/g] x [O/g, K * Cg]
            at::Tensor part_columns = gcols.narrow(1, G * K * Cg, K * Cg);
            at::mm_out(part_columns, go.narrow(0, G * Og, Og).t(), weight[G]);
          }
          with_channel_width(s, [&](auto width) {
            tile_backward<T, width>(input.data_ptr<T>() + n * image_size, points, runs, layout, n, l0, count,
                                    tap_buffer.data(), grad_columns.data_ptr<T>(), grad_image, columns.data_ptr<T>(),
                                    grad_offset.data_ptr<T>(), mask.defined() ? grad_mask.data_ptr<T>() : nullptr);
          });
          for (int64_t G = 0; G < s.groups; ++G)  // [O/g, count] x [count, K * Cg]
            grad_weight[G].addmm_(go.narrow(0, G * Og, Og), cols.narrow(1, G * K * Cg, K * Cg));
        }
      }
    });
  });
  const at::Tensor grad_input = unbordered_sum(grad_input_parts, s);
  const at::Tensor grad_weight =
      grad_weight_parts.sum(0).view({s.groups, Og, K, Cg}).permute({0, 1, 3, 2}).reshape(weight_.sizes()).contiguous();
  return {grad_input, grad_weight, grad_offset, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace rfe
