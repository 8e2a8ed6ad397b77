#include <ATen/ATen.h>

#include "image/image.h"

namespace rfe {

at::Tensor image_planes_input(const at::Tensor& image, at::ArrayRef<double> mean) {
  TORCH_CHECK(image.dim() == 3 || image.dim() == 4,
              "image_planes: image must have shape [H, W, C] or [B, H, W, C] (channels last), got ", image.sizes());
  TORCH_CHECK(image.scalar_type() == at::kByte || image.scalar_type() == at::kFloat,
              "image_planes: image must be uint8 or float32, got ", image.scalar_type());
  const int64_t channels = image.size(-1);
  TORCH_CHECK(channels >= 1 && channels <= 4,
              "image_planes: image must have 1 to 4 channels (its last "
              "dimension), got shape ",
              image.sizes());
  TORCH_CHECK(static_cast<int64_t>(mean.size()) == channels,
              "image_planes: mean must hold one value per "
              "channel (",
              channels, "), got ", mean.size());
  return (image.dim() == 3 ? image.unsqueeze(0) : image).contiguous();
}

at::Tensor image_planes_output(const at::Tensor& image, const at::Tensor& rows) {
  at::Tensor planes =
      at::empty({rows.size(0), rows.size(3), rows.size(1), rows.size(2)}, rows.options().dtype(at::kFloat));
  return image.dim() == 3 ? planes.squeeze(0) : planes;
}

}  // namespace rfe
