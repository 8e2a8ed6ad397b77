#include <ATen/ATen.h>
#include <torch/library.h>

#include "image/image.h"

namespace rfe {

void check_image_planes_args(const at::Tensor& image, at::ArrayRef<double> mean) {
  TORCH_CHECK(image.dim() == 3 || image.dim() == 4,
              "image_planes: image must have shape [H, W, C] or [B, H, W, C] (channels last), got ", image.sym_sizes());
  TORCH_CHECK(image.scalar_type() == at::kByte || image.scalar_type() == at::kFloat,
              "image_planes: image must be uint8 or float32, got ", image.scalar_type());
  const c10::SymInt channels = image.sym_size(-1);
  TORCH_CHECK(channels >= 1 && channels <= 4,
              "image_planes: image must have 1 to 4 channels (its last "
              "dimension), got shape ",
              image.sym_sizes());
  TORCH_CHECK(channels == static_cast<int64_t>(mean.size()),
              "image_planes: mean must hold one value per "
              "channel (",
              channels, "), got ", mean.size());
}

at::Tensor image_planes_input(const at::Tensor& image, at::ArrayRef<double> mean) {
  check_image_planes_args(image, mean);
  return (image.dim() == 3 ? image.unsqueeze(0) : image).contiguous();
}

at::Tensor image_planes_output(const at::Tensor& image, const at::Tensor& rows) {
  at::Tensor planes =
      at::empty({rows.size(0), rows.size(3), rows.size(1), rows.size(2)}, rows.options().dtype(at::kFloat));
  return image.dim() == 3 ? planes.squeeze(0) : planes;
}

namespace {

at::Tensor image_planes_meta(const at::Tensor& image, at::ArrayRef<double> mean) {
  check_image_planes_args(image, mean);
  const auto options = image.options().dtype(at::kFloat);
  const int64_t d = image.dim() - 3;  // the first of H, W, C
  c10::SymDimVector sizes{image.sym_size(d + 2), image.sym_size(d), image.sym_size(d + 1)};
  if (d == 1) sizes.insert(sizes.begin(), image.sym_size(0));
  return at::empty_symint(sizes, options);
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, Meta, m) {
  m.impl("image_planes", &image_planes_meta);
}

}  // namespace rfe
