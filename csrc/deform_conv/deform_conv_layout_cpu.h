#pragma once
// Layout changes around the CPU deformable convolution: the zero-bordered channels-last
// copy of the input, and back for the input gradient.
#include <ATen/core/Tensor.h>

#include "deform_conv/deform_conv.h"

namespace rfe {

// [N, C, H, W] -> [N, H + 2, W + 2, C] with a zero border.
at::Tensor bordered_channels_last(const at::Tensor& input);

// The interior of bordered parts [N, parts, H + 2, W + 2, C], summed over the parts, as
// [N, C, H, W] (the input gradient).
at::Tensor unbordered_sum(const at::Tensor& parts, const DeformShape& s);

// `t` if each image's part of it is contiguous (its images may lie apart), else a copy.
at::Tensor images_contiguous(const at::Tensor& t);

}  // namespace rfe
