#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include "common/host_device.h"

namespace rfe {

// Checks image_planes' arguments (symbolic shapes too: the Meta kernel calls it).
void check_image_planes_args(const at::Tensor& image, at::ArrayRef<double> mean);

// Checks image_planes' arguments; returns the image as a contiguous [B, H, W, C].
at::Tensor image_planes_input(const at::Tensor& image, at::ArrayRef<double> mean);

// The output of image_planes for an image of image.dim() dimensions: [C, H, W] or
// [B, C, H, W] float32, from the [B, H, W, C] view.
at::Tensor image_planes_output(const at::Tensor& image, const at::Tensor& rows);

// One value of a plane: pixel value minus its channel's mean, in float32.
template <typename scalar_t>
RFE_HOST_DEVICE inline float centred(scalar_t value, float mean) {
  return static_cast<float>(value) - mean;
}

}  // namespace rfe
