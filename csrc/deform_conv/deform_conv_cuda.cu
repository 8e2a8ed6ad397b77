// Deformable convolution on CUDA: im2col with bilinear sampling into a bounded column
// buffer, GEMMs through ATen (cuBLAS) on the current stream; the backward scatters input
// gradients with atomics (into a float32 buffer for float16/bfloat16) and writes each
// offset/mask gradient from the one thread that owns it. 64-bit indexing throughout.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <ATen/cuda/Atomic.cuh>

#include <algorithm>
#include <limits>

#include "common/accumulate.h"
#include "common/launch.h"
#include "deform_conv/deform_conv.h"

namespace rfe {
namespace {

// Elements per column buffer by default (256 MB of float32).
constexpr int64_t kColumnBudget = int64_t(1) << 26;

// One thread per (image, offset group, kernel point, output position), looping channels;
// the sampling is the CPU's (bilinear_weights), computed in acc_t.
template <typename scalar_t>
__global__ void im2col_kernel(const scalar_t* __restrict__ input, SamplePoints<scalar_t, acc_type<scalar_t>> points,
                              int64_t n0, int64_t nb, scalar_t* __restrict__ columns) {
  using acc_t = acc_type<scalar_t>;
  const DeformShape& s = points.s;
  const int64_t K = s.K(), L = s.L(), og = s.offset_groups, per_group = s.C / og;
  const int64_t total = nb * og * K * L;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = t % L, k = (t / L) % K, g = (t / (L * K)) % og, n = t / (L * K * og);
    int64_t index[4];
    acc_t weight[4];
    points.weights(n0 + n, g, k, l / s.Wo, l % s.Wo, index, weight);
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
      const scalar_t* plane = input + ((n0 + n) * s.C + c) * s.H * s.W;
      acc_t v = acc_t(0);
      for (int q = 0; q < 4; ++q) v += weight[q] * static_cast<acc_t>(plane[index[q]]);
      columns[(c * K + k) * (nb * L) + n * L + l] = static_cast<scalar_t>(v);
    }
  }
}

template <typename scalar_t>
__global__ void col2im_coord_kernel(const scalar_t* __restrict__ grad_columns, const scalar_t* __restrict__ input,
                                    SamplePoints<scalar_t, acc_type<scalar_t>> points, int64_t n0, int64_t nb,
                                    acc_type<scalar_t>* __restrict__ grad_input, scalar_t* __restrict__ grad_offset,
                                    scalar_t* __restrict__ grad_mask) {
  using acc_t = acc_type<scalar_t>;
  const DeformShape& s = points.s;
  const int64_t K = s.K(), L = s.L(), og = s.offset_groups, per_group = s.C / og;
  const int64_t total = nb * og * K * L;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t l = t % L, k = (t / L) % K, g = (t / (L * K)) % og, n = t / (L * K * og), image = n0 + n;
    const int64_t channel = (image * og + g) * K + k;
    acc_t modulation;
    const Bilinear<acc_t> b = points.at(image, g, k, l / s.Wo, l % s.Wo, &modulation);
    if (!b.finite) {  // a NaN or infinite offset: NaN gradients, no input gradient
      const scalar_t nan = static_cast<scalar_t>(std::numeric_limits<acc_t>::quiet_NaN());
      grad_offset[channel * 2 * L + l] = grad_offset[(channel * 2 + 1) * L + l] = nan;
      if (grad_mask) grad_mask[channel * L + l] = nan;
      continue;
    }
    acc_t d_y = 0, d_x = 0, d_mask = 0;
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
      const acc_t grad = static_cast<acc_t>(grad_columns[(c * K + k) * (nb * L) + n * L + l]);
      const scalar_t* plane = input + (image * s.C + c) * s.H * s.W;
      acc_t* grad_plane = grad_input + (image * s.C + c) * s.H * s.W;
      for (int q = 0; q < 4; ++q)
        if (b.inside[q]) gpuAtomicAdd(grad_plane + b.index[q], b.weight[q] * grad * modulation);
      acc_t value, dy, dx;
      sample_and_slopes(b, plane, &value, &dy, &dx);
      d_y += grad * modulation * dy;
      d_x += grad * modulation * dx;
      d_mask += grad * value;
    }
    grad_offset[channel * 2 * L + l] = static_cast<scalar_t>(d_y);
    grad_offset[(channel * 2 + 1) * L + l] = static_cast<scalar_t>(d_x);
    if (grad_mask) grad_mask[channel * L + l] = static_cast<scalar_t>(d_mask);
  }
}

at::Tensor grouped(const at::Tensor& weight, const DeformShape& s) {
  return weight.reshape({s.groups, s.O / s.groups, s.C / s.groups * s.K()});
}

template <typename scalar_t>
void launch_im2col(const at::Tensor& input, const SamplePoints<scalar_t, acc_type<scalar_t>>& points, int64_t n0,
                   int64_t nb, at::Tensor& columns) {
  const DeformShape& s = points.s;
  const int64_t work = nb * s.offset_groups * s.K() * s.L();
  im2col_kernel<scalar_t><<<blocks_for(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      input.data_ptr<scalar_t>(), points, n0, nb, columns.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor deform_conv2d_cuda(const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
                              const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_,
                              int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                              int64_t dilation_w) {
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const at::Tensor bias = bias_.has_value() ? *bias_ : at::Tensor();
  const DeformShape s = check_deform_conv_args(input_, weight_, offset_, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                               dilation_h, dilation_w);
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous();
  const at::Tensor weight = grouped(weight_.contiguous(), s);
  at::Tensor out = at::empty({s.N, s.O, s.Ho, s.Wo}, input.options());
  const int64_t chunk = images_per_chunk(s, kColumnBudget);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_cuda", [&] {
    const SamplePoints<scalar_t, acc_type<scalar_t>> points{s, offset.data_ptr<scalar_t>(),
                                                            mask.defined() ? mask.data_ptr<scalar_t>() : nullptr};
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.N - n0);
      at::Tensor columns = at::empty({s.C * s.K(), nb * s.L()}, input.options());
      launch_im2col(input, points, n0, nb, columns);
      const at::Tensor result = at::bmm(weight, columns.view({s.groups, -1, nb * s.L()}));
      out.narrow(0, n0, nb).view({nb, s.O, s.L()}).copy_(result.view({s.O, nb, s.L()}).permute({1, 0, 2}));
    }
  });
  if (bias.defined()) out.add_(bias.view({1, s.O, 1, 1}));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_cuda(
    const at::Tensor& grad_out_, const at::Tensor& input_, const at::Tensor& weight_, const at::Tensor& offset_,
    const std::optional<at::Tensor>& mask_, const std::optional<at::Tensor>& bias_, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const at::Tensor mask = mask_.has_value() ? mask_->contiguous() : at::Tensor();
  const at::Tensor bias = bias_.has_value() ? *bias_ : at::Tensor();
  const DeformShape s = check_deform_conv_args(input_, weight_, offset_, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                               dilation_h, dilation_w);
  check_deform_conv_grad_out(grad_out_, input_, weight_, DeformSizes{s.Ho, s.Wo, s.groups, s.offset_groups});
  c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous(), offset = offset_.contiguous(), grad_out = grad_out_.contiguous();
  const at::Tensor weight = grouped(weight_.contiguous(), s);
  const bool reduced = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  at::Tensor grad_input = at::zeros(input.sizes(), input.options().dtype(reduced ? at::kFloat : input.scalar_type()));
  at::Tensor grad_offset = at::empty_like(offset);
  at::Tensor grad_mask = mask.defined() ? at::empty_like(mask) : at::empty({0}, input.options());
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options().dtype(grad_input.scalar_type()));
  at::Tensor grad_bias = bias.defined() ? grad_out.sum({0, 2, 3}) : at::empty({0}, input.options());
  const int64_t chunk = images_per_chunk(s, kColumnBudget), K = s.K(), L = s.L();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const SamplePoints<scalar_t, acc_t> points{s, offset.data_ptr<scalar_t>(),
                                               mask.defined() ? mask.data_ptr<scalar_t>() : nullptr};
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
      const int64_t nb = std::min(chunk, s.N - n0);
      const at::Tensor go = grad_out.narrow(0, n0, nb)
                                .view({nb, s.groups, s.O / s.groups, L})
                                .permute({1, 2, 0, 3})
                                .reshape({s.groups, s.O / s.groups, nb * L});
      const at::Tensor grad_columns = at::bmm(weight.transpose(1, 2), go).contiguous();
      const int64_t work = nb * s.offset_groups * K * L;
      col2im_coord_kernel<scalar_t><<<blocks_for(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          grad_columns.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), points, n0, nb, grad_input.data_ptr<acc_t>(),
          grad_offset.data_ptr<scalar_t>(), mask.defined() ? grad_mask.data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::Tensor columns = at::empty({s.C * K, nb * L}, input.options());
      launch_im2col(input, points, n0, nb, columns);
      grad_weight.add_(at::bmm(go, columns.view({s.groups, -1, nb * L}).transpose(1, 2)));
    }
  });
  return {grad_input.to(input.scalar_type()), grad_weight.to(weight_.scalar_type()).view_as(weight_), grad_offset,
          grad_mask, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_cuda);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_cuda);
}

}  // namespace rfe
