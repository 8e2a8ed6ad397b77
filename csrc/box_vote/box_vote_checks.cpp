#include <ATen/ATen.h>

#include "box_vote/box_vote.h"

namespace rfe {

void check_box_vote_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& landmarks,
                         const at::Tensor& idxs, double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "box_vote: boxes must have shape [N, 4] (x1, y1, x2, y2), got ",
              boxes.sizes());
  const int64_t n = boxes.size(0);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == n,
              "box_vote: scores must have shape [N] with N = boxes.shape[0] = ", n, ", got ", scores.sizes());
  TORCH_CHECK(landmarks.dim() == 2 && landmarks.size(0) == n,
              "box_vote: landmarks must have shape [N, D] with N = boxes.shape[0] = ", n, ", got ", landmarks.sizes());
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == n, "box_vote: idxs must have shape [N] with N = boxes.shape[0] = ", n,
              ", got ", idxs.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble,
              "box_vote: boxes must be float32 or float64, got ", boxes.scalar_type());
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"scores", scores}, {"landmarks", landmarks}}) {
    TORCH_CHECK(t.scalar_type() == boxes.scalar_type(), "box_vote: ", name, " must have the dtype of boxes (",
                boxes.scalar_type(), "), got ", t.scalar_type());
  }
  TORCH_CHECK(idxs.scalar_type() == at::kLong, "box_vote: idxs must be int64, got ", idxs.scalar_type());
  for (const auto& [name, t] :
       {std::pair<const char*, const at::Tensor&>{"scores", scores}, {"landmarks", landmarks}, {"idxs", idxs}}) {
    TORCH_CHECK(t.device() == boxes.device(), "box_vote: ", name, " must be on the device of boxes (", boxes.device(),
                "), got ", t.device());
  }
  // NaN fails both comparisons.
  TORCH_CHECK(iou_threshold >= 0.0 && iou_threshold <= 1.0, "box_vote: iou_threshold must be an IoU in [0, 1], got ",
              iou_threshold);
}

}  // namespace rfe
