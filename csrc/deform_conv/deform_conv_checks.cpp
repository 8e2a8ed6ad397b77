#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "deform_conv/deform_conv.h"

namespace rfe {

namespace {
std::atomic<int64_t> column_budget_override{0};
}

int64_t set_column_budget(int64_t elements) {
  TORCH_CHECK(elements >= 0, "set_deform_conv_column_budget: elements must be >= 0 (0: the default), got ", elements);
  return column_budget_override.exchange(elements);
}

int64_t images_per_chunk(const DeformShape& s, int64_t backend_default) {
  const int64_t set = column_budget_override.load();
  const int64_t budget = set > 0 ? set : backend_default;
  const int64_t per_image = std::max<int64_t>(1, s.C * s.K() * s.L());
  return std::max<int64_t>(1, std::min<int64_t>(s.N, budget / per_image));
}

int64_t positions_per_tile(const DeformShape& s, int64_t backend_default) {
  const int64_t set = column_budget_override.load();
  const int64_t budget = set > 0 ? set : backend_default;
  const int64_t per_position = std::max<int64_t>(1, s.C * s.K());
  return std::max<int64_t>(1, std::min<int64_t>(s.L(), budget / per_position));
}

// Every quantity is validated before anything is divided by it. Written on SymInt, so that
// the Meta kernels below run the very same checks on symbolic shapes (torch.export, compile).
DeformSizes check_deform_conv_sizes(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                    const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                                    int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  TORCH_CHECK(input.dim() == 4, "deform_conv2d: input must have shape [N, C, H, W], got ", input.sym_sizes());
  TORCH_CHECK(weight.dim() == 4, "deform_conv2d: weight must have shape [O, C / groups, kh, kw], got ",
              weight.sym_sizes());
  TORCH_CHECK(stride_h > 0 && stride_w > 0 && dilation_h > 0 && dilation_w > 0 && pad_h >= 0 && pad_w >= 0,
              "deform_conv2d: stride and dilation must be positive and padding non-negative, got stride (", stride_h,
              ", ", stride_w, "), padding (", pad_h, ", ", pad_w, "), dilation (", dilation_h, ", ", dilation_w, ")");
  const c10::SymInt N = input.sym_size(0), C = input.sym_size(1), H = input.sym_size(2), W = input.sym_size(3);
  const c10::SymInt O = weight.sym_size(0), per_group = weight.sym_size(1), kh = weight.sym_size(2),
                    kw = weight.sym_size(3);
  TORCH_CHECK(kh > 0 && kw > 0, "deform_conv2d: the kernel must not be empty, got weight of shape ",
              weight.sym_sizes());
  TORCH_CHECK(H > 0 && W > 0, "deform_conv2d: input must have a non-empty image (H, W > 0), got ", input.sym_sizes());
  TORCH_CHECK(per_group > 0 && C > 0 && C % per_group == 0, "deform_conv2d: input channels (", C,
              ") must be a positive multiple of weight.shape[1] (", per_group, ")");
  DeformSizes s;
  s.groups = C / per_group;
  TORCH_CHECK(O % s.groups == 0, "deform_conv2d: weight.shape[0] (", O, ") must be a multiple of groups (", s.groups,
              ")");
  s.Ho = (H + 2 * pad_h - dilation_h * (kh - 1) - 1) / stride_h + 1;
  s.Wo = (W + 2 * pad_w - dilation_w * (kw - 1) - 1) / stride_w + 1;
  TORCH_CHECK(s.Ho > 0 && s.Wo > 0, "deform_conv2d: the output would be empty (", s.Ho, " x ", s.Wo, ") for input ",
              input.sym_sizes(), " and kernel ", kh, " x ", kw);
  const c10::SymInt K = kh * kw;
  TORCH_CHECK(offset.dim() == 4 && offset.sym_size(0) == N && offset.sym_size(1) > 0 &&
                  offset.sym_size(1) % (2 * K) == 0 && offset.sym_size(2) == s.Ho && offset.sym_size(3) == s.Wo,
              "deform_conv2d: offset must have shape [N, 2 * offset_groups * kh * kw, Ho, Wo] = [", N,
              ", 2 * offset_groups * ", K, ", ", s.Ho, ", ", s.Wo, "], got ", offset.sym_sizes());
  s.offset_groups = offset.sym_size(1) / (2 * K);
  TORCH_CHECK(C % s.offset_groups == 0, "deform_conv2d: input channels (", C, ") must be a multiple of offset groups (",
              s.offset_groups, ")");
  if (mask.defined()) {
    TORCH_CHECK(mask.dim() == 4 && mask.sym_size(0) == N && mask.sym_size(1) == s.offset_groups * K &&
                    mask.sym_size(2) == s.Ho && mask.sym_size(3) == s.Wo,
                "deform_conv2d: mask must have shape [N, offset_groups * kh * kw, Ho, Wo] = [", N, ", ",
                s.offset_groups * K, ", ", s.Ho, ", ", s.Wo, "], got ", mask.sym_sizes());
  }
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.sym_size(0) == O, "deform_conv2d: bias must have shape [", O, "], got ",
                bias.sym_sizes());
  }
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"weight", weight},
                                {"offset", offset},
                                {"mask", mask},
                                {"bias", bias}}) {
    if (!t.defined()) continue;
    TORCH_CHECK(t.scalar_type() == input.scalar_type(), "deform_conv2d: ", name, " must have the dtype of input (",
                input.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(t.device() == input.device(), "deform_conv2d: ", name, " must be on the device of input (",
                input.device(), "), got ", t.device());
  }
  return s;
}

DeformShape check_deform_conv_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                   const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                                   int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const DeformSizes sizes = check_deform_conv_sizes(input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                                                    dilation_h, dilation_w);
  return DeformShape{input.size(0),
                     input.size(1),
                     input.size(2),
                     input.size(3),
                     weight.size(0),
                     weight.size(2),
                     weight.size(3),
                     sizes.Ho.expect_int(),
                     sizes.Wo.expect_int(),
                     sizes.groups.expect_int(),
                     sizes.offset_groups.expect_int(),
                     stride_h,
                     stride_w,
                     pad_h,
                     pad_w,
                     dilation_h,
                     dilation_w};
}

void check_deform_conv_grad_out(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                const DeformSizes& sizes) {
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.sym_size(0) == input.sym_size(0) &&
                  grad_out.sym_size(1) == weight.sym_size(0) && grad_out.sym_size(2) == sizes.Ho &&
                  grad_out.sym_size(3) == sizes.Wo,
              "deform_conv2d_backward: grad_out must have shape [", input.sym_size(0), ", ", weight.sym_size(0), ", ",
              sizes.Ho, ", ", sizes.Wo, "], got ", grad_out.sym_sizes());
}

namespace {

// Meta kernels: the output shapes, after the kernels' own checks.
at::Tensor deform_conv2d_meta(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                              const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                              int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                              int64_t dilation_w) {
  const DeformSizes s =
      check_deform_conv_sizes(input, weight, offset, mask.value_or(at::Tensor()), bias.value_or(at::Tensor()), stride_h,
                              stride_w, pad_h, pad_w, dilation_h, dilation_w);
  return at::empty_symint({input.sym_size(0), weight.sym_size(0), s.Ho, s.Wo}, input.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deform_conv2d_backward_meta(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w,
    int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  const DeformSizes s =
      check_deform_conv_sizes(input, weight, offset, mask.value_or(at::Tensor()), bias.value_or(at::Tensor()), stride_h,
                              stride_w, pad_h, pad_w, dilation_h, dilation_w);
  check_deform_conv_grad_out(grad_out, input, weight, s);
  const auto like = [](const at::Tensor& t) { return at::empty_symint(t.sym_sizes(), t.options()); };
  const at::Tensor none = at::empty({0}, input.options());
  return {like(input), like(weight), like(offset), mask.has_value() ? like(*mask) : none,
          bias.has_value() ? like(*bias) : none.clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, Meta, m) {
  m.impl("deform_conv2d", &deform_conv2d_meta);
  m.impl("deform_conv2d_backward", &deform_conv2d_backward_meta);
}

}  // namespace rfe
