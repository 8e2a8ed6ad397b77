// Deformable convolution on the CPU: im2col with bilinear sampling into a bounded column
// buffer (the batch in chunks), then one batched GEMM per chunk over the weight groups.
// The backward: GEMM to column gradients, then col2im and the offset/mask gradients in
// one pass parallel over (image, offset group), which owns its slice of every gradient:
// no atomics, no races.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "deform_conv/deform_conv.h"

namespace rfe {
namespace {

// Elements per column buffer by default (64 MB of float32): a whole training batch of
// the SSH's convolutions fits, and memory stays bounded for large inputs.
constexpr int64_t kColumnBudget = int64_t(1) << 24;

constexpr int64_t kPositionBlock = 1024;  // output positions per im2col work item

// columns[n, c * K + k, l] for the nb images from n0: the modulated samples.
// Work items are (image, offset group, kernel point, block of positions): the four
// neighbours and their weights (times the mask; see bilinear_weights) are computed
// once per position, then every channel of the group is sampled branch-free.
template <typename T>
void im2col(const T* input, const SamplePoints<T, T>& points, const DeformShape& s, int64_t n0,
            int64_t nb, T* columns) {
  const int64_t K = s.K(), L = s.L(), og = s.offset_groups, per_group = s.C / og;
  const int64_t blocks = (L + kPositionBlock - 1) / kPositionBlock;
  at::parallel_for(0, nb * og * K * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> index(4 * kPositionBlock);
    std::vector<T> weight(4 * kPositionBlock);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item % blocks, k = (item / blocks) % K, g = (item / (blocks * K)) % og,
                    n = item / (blocks * K * og);
      const int64_t l0 = block * kPositionBlock, l1 = std::min(L, l0 + kPositionBlock);
      for (int64_t l = l0, i = l0 / s.Wo, j = l0 % s.Wo; l < l1; ++l) {
        points.weights(n0 + n, g, k, i, j, index.data() + 4 * (l - l0), weight.data() + 4 * (l - l0));
        if (++j == s.Wo) j = 0, ++i;
      }
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        const T* plane = input + ((n0 + n) * s.C + c) * s.H * s.W;
        T* out = columns + ((n * s.C + c) * K + k) * L;
        for (int64_t l = l0; l < l1; ++l) {
          const int64_t* i = index.data() + 4 * (l - l0);
          const T* w = weight.data() + 4 * (l - l0);
          out[l] = w[0] * plane[i[0]] + w[1] * plane[i[1]] + w[2] * plane[i[2]] + w[3] * plane[i[3]];
        }
      }
    }
  });
}

at::Tensor grouped(const at::Tensor& weight, const DeformShape& s) {
  return weight.reshape({s.groups, s.O / s.groups, s.C / s.groups * s.K()});
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
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous();
  const at::Tensor weight = grouped(weight_.contiguous(), s);
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo}, input.options());
  const int64_t chunk = images_per_chunk(s, kColumnBudget);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_cpu", [&] {
    using T = scalar_t;
    const SamplePoints<T, T> points{s, offset.data_ptr<T>(), mask.defined() ? mask.data_ptr<T>() : nullptr};
    at::Tensor columns = at::empty({chunk, s.C * s.K(), s.L()}, input.options());
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.N - n0);
      at::Tensor cols = columns.narrow(0, 0, nb);
      im2col(input.data_ptr<T>(), points, s, n0, nb, cols.data_ptr<T>());
      // [groups, O/g, CgK] x [nb, groups, CgK, L] -> [nb, groups, O/g, L], straight into out
      at::Tensor result = out.narrow(0, n0, nb).view({nb, s.groups, s.O / s.groups, s.L()});
      at::matmul_out(result, weight, cols.view({nb, s.groups, -1, s.L()}));
    }
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
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), grad_out = grad_out_.contiguous();
  const at::Tensor weight = grouped(weight_.contiguous(), s);
  at::Tensor grad_input = at::zeros_like(input);
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = mask.defined() ? at::empty_like(mask) : at::empty({0}, input.options());
  at::Tensor grad_weight = at::zeros_like(weight);
  at::Tensor grad_bias = bias.defined() ? grad_out.sum({0, 2, 3}) : at::empty({0}, input.options());
  const int64_t chunk = images_per_chunk(s, kColumnBudget), K = s.K(), L = s.L(), og = s.offset_groups;
  const int64_t per_group = s.C / og;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "deform_conv2d_backward_cpu", [&] {
    using T = scalar_t;
    const SamplePoints<T, T> points{s, offset.data_ptr<T>(), mask.defined() ? mask.data_ptr<T>() : nullptr};
    at::Tensor columns = at::empty({chunk, s.C * K, L}, input.options());
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.N - n0);
      const at::Tensor go = grad_out.narrow(0, n0, nb).view({nb, s.groups, s.O / s.groups, L});
      // [groups, CgK, O/g] x [nb, groups, O/g, L] -> [nb, groups, CgK, L] = [nb, C * K, L]
      const at::Tensor grad_columns = at::matmul(weight.transpose(1, 2), go).contiguous();
      const T* gc = grad_columns.data_ptr<T>();
      const T* in = input.data_ptr<T>();
      T* gi = grad_input.data_ptr<T>();
      T* goff = grad_offset.data_ptr<T>();
      T* gm = mask.defined() ? grad_mask.data_ptr<T>() : nullptr;
      at::parallel_for(0, nb * og, 1, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
          const int64_t n = item / og, g = item % og, image = n0 + n;
          for (int64_t k = 0; k < K; ++k) {
            for (int64_t l = 0; l < L; ++l) {
              T modulation;
              const Bilinear<T> b = points.at(image, g, k, l / s.Wo, l % s.Wo, &modulation);
              const int64_t channel = (image * og + g) * K + k;
              if (!b.finite) {  // a NaN or infinite offset: NaN gradients, no input gradient
                const T nan = std::numeric_limits<T>::quiet_NaN();
                goff[channel * 2 * L + l] = goff[(channel * 2 + 1) * L + l] = nan;
                if (gm) gm[channel * L + l] = nan;
                continue;
              }
              T d_y = 0, d_x = 0, d_mask = 0;
              for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
                const T grad = gc[((n * s.C + c) * K + k) * L + l];
                const T* plane = in + (image * s.C + c) * s.H * s.W;
                T* grad_plane = gi + (image * s.C + c) * s.H * s.W;
                for (int q = 0; q < 4; ++q)
                  if (b.inside[q]) grad_plane[b.index[q]] += b.weight[q] * grad * modulation;
                T value, dy, dx;
                sample_and_slopes(b, plane, &value, &dy, &dx);
                d_y += grad * modulation * dy;
                d_x += grad * modulation * dx;
                d_mask += grad * value;
              }
              goff[channel * 2 * L + l] = d_y;
              goff[(channel * 2 + 1) * L + l] = d_x;
              if (gm) gm[channel * L + l] = d_mask;
            }
          }
        }
      });
      at::Tensor cols = columns.narrow(0, 0, nb);
      im2col(in, points, s, n0, nb, cols.data_ptr<T>());
      // sum over images of [O/g, L] x [L, CgK]
      grad_weight.add_(at::matmul(go, cols.view({nb, s.groups, -1, L}).transpose(2, 3)).sum(0));
    }
  });
  return {grad_input, grad_weight.view_as(weight_), grad_offset, grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_cpu);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cpu);
}

}  // namespace rfe
