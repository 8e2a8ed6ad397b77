#pragma once
// Box voting: the groups of a greedy pass in score order, each voted into one detection.
#include <ATen/core/Tensor.h>

#include "common/box_math.h"

namespace rfe {

// Checks box_vote's arguments: boxes [N, 4], scores [N], landmarks [N, D], idxs [N] int64,
// one floating dtype (boxes, scores, landmarks) and one device; iou_threshold in [0, 1].
void check_box_vote_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& landmarks,
                         const at::Tensor& idxs, double iou_threshold);

// Whether box j joins the group headed by box i: its IoU with the head is at least the
// threshold (NaN, for empty boxes, never is).
template <typename T>
RFE_HOST_DEVICE inline bool joins_group(const T* head, T head_area, const T* box, T box_area, T threshold) {
  return box_iou(head[0], head[1], head[2], head[3], head_area, box[0], box[1], box[2], box[3], box_area) >= threshold;
}

}  // namespace rfe
