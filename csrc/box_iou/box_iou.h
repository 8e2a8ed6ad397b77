#pragma once
#include <ATen/core/Tensor.h>

#include "common/box_math.h"

namespace rfe {

// Checks box_iou's arguments (symbolic shapes too: the Meta kernel calls it).
void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2);

// Checks box_iou's arguments; returns boxes1 and boxes2 as [B, N, 4] and [B, M, 4]
// (B = 1 for the unbatched form).
std::pair<at::Tensor, at::Tensor> box_iou_batched_views(const at::Tensor& boxes1, const at::Tensor& boxes2);

}  // namespace rfe
