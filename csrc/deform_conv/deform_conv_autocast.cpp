// deform_conv2d under torch.autocast, registered at the dispatcher (as torchvision's
// csrc/ops/autocast/ are), so that the raw op works inside an autocast region: every
// floating input is cast to one dtype before the kernels see it, and autograd records
// the casts. CUDA: autocast's dtype (float16 or bfloat16, which the CUDA kernels take),
// the result in it, as a convolution's. CPU: float32 (the CPU kernels take float32 and
// float64 only), the result float32, as autocast's float32 ops. float64 is left alone.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace rfe {
namespace {

using DeformConv2d = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t,
                                int64_t, int64_t, int64_t, int64_t);

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor deform_conv2d_autocast(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offset,
                                  const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& bias,
                                  int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h,
                                  int64_t dilation_w) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const at::ScalarType dtype = device == c10::DeviceType::CUDA ? at::autocast::get_autocast_dtype(device) : at::kFloat;
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("retinaface_ext::deform_conv2d", "").typed<DeformConv2d>();
  const auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(dtype, t, device); };
  const auto cast_optional = [&](const std::optional<at::Tensor>& t) {
    return t.has_value() ? std::optional<at::Tensor>(cast(*t)) : std::nullopt;
  };
  return op.call(cast(input), cast(weight), cast(offset), cast_optional(mask), cast_optional(bias), stride_h, stride_w,
                 pad_h, pad_w, dilation_h, dilation_w);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, AutocastCPU, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(retinaface_ext, AutocastCUDA, m) {
  m.impl("deform_conv2d", &deform_conv2d_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace rfe
