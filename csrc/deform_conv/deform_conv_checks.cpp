#include <ATen/ATen.h>

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

// Every quantity is validated before anything is divided by it.
DeformShape check_deform_conv_args(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                   const at::Tensor& mask, const at::Tensor& bias, int64_t stride_h, int64_t stride_w,
                                   int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w) {
  TORCH_CHECK(input.dim() == 4, "deform_conv2d: input must have shape [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, "deform_conv2d: weight must have shape [O, C / groups, kh, kw], got ", weight.sizes());
  TORCH_CHECK(stride_h > 0 && stride_w > 0 && dilation_h > 0 && dilation_w > 0 && pad_h >= 0 && pad_w >= 0,
              "deform_conv2d: stride and dilation must be positive and padding non-negative, got stride (", stride_h,
              ", ", stride_w, "), padding (", pad_h, ", ", pad_w, "), dilation (", dilation_h, ", ", dilation_w, ")");
  DeformShape s{input.size(0),
                input.size(1),
                input.size(2),
                input.size(3),
                weight.size(0),
                weight.size(2),
                weight.size(3),
                0,
                0,
                0,
                0,
                stride_h,
                stride_w,
                pad_h,
                pad_w,
                dilation_h,
                dilation_w};
  TORCH_CHECK(s.kh > 0 && s.kw > 0, "deform_conv2d: the kernel must not be empty, got weight of shape ",
              weight.sizes());
  TORCH_CHECK(s.H > 0 && s.W > 0, "deform_conv2d: input must have a non-empty image (H, W > 0), got ", input.sizes());
  TORCH_CHECK(weight.size(1) > 0 && s.C > 0 && s.C % weight.size(1) == 0, "deform_conv2d: input channels (", s.C,
              ") must be a positive multiple of weight.shape[1] (", weight.size(1), ")");
  s.groups = s.C / weight.size(1);
  TORCH_CHECK(s.O % s.groups == 0, "deform_conv2d: weight.shape[0] (", s.O, ") must be a multiple of groups (",
              s.groups, ")");
  s.Ho = (s.H + 2 * pad_h - dilation_h * (s.kh - 1) - 1) / stride_h + 1;
  s.Wo = (s.W + 2 * pad_w - dilation_w * (s.kw - 1) - 1) / stride_w + 1;
  TORCH_CHECK(s.Ho > 0 && s.Wo > 0, "deform_conv2d: the output would be empty (", s.Ho, " x ", s.Wo, ") for input ",
              input.sizes(), " and kernel ", s.kh, " x ", s.kw);
  TORCH_CHECK(offset.dim() == 4 && offset.size(0) == s.N && offset.size(1) > 0 && offset.size(1) % (2 * s.K()) == 0 &&
                  offset.size(2) == s.Ho && offset.size(3) == s.Wo,
              "deform_conv2d: offset must have shape [N, 2 * offset_groups * kh * kw, Ho, Wo] = [", s.N,
              ", 2 * offset_groups * ", s.K(), ", ", s.Ho, ", ", s.Wo, "], got ", offset.sizes());
  s.offset_groups = offset.size(1) / (2 * s.K());
  TORCH_CHECK(s.C % s.offset_groups == 0, "deform_conv2d: input channels (", s.C,
              ") must be a multiple of offset groups (", s.offset_groups, ")");
  if (mask.defined()) {
    TORCH_CHECK(mask.dim() == 4 && mask.size(0) == s.N && mask.size(1) == s.offset_groups * s.K() &&
                    mask.size(2) == s.Ho && mask.size(3) == s.Wo,
                "deform_conv2d: mask must have shape [N, offset_groups * kh * kw, Ho, Wo] = [", s.N, ", ",
                s.offset_groups * s.K(), ", ", s.Ho, ", ", s.Wo, "], got ", mask.sizes());
  }
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == s.O, "deform_conv2d: bias must have shape [", s.O, "], got ",
                bias.sizes());
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

}  // namespace rfe
