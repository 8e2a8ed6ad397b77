#include <ATen/ATen.h>

#include "nms/nms.h"

namespace rfe {

void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold,
                    const char* op_name) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op_name, ": boxes must have shape [N, 4] (x1, y1, x2, y2), got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op_name,
              ": scores must have shape [N] with N = boxes.shape[0] = ", boxes.size(0), ", got ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op_name, ": boxes must be a floating point tensor, got ",
              boxes.scalar_type());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), op_name, ": scores must have the dtype of boxes (",
              boxes.scalar_type(), "), got ", scores.scalar_type());
  TORCH_CHECK(scores.device() == boxes.device(), op_name, ": scores must be on the device of boxes (", boxes.device(),
              "), got ", scores.device());
  if (idxs.defined()) {
    TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op_name,
                ": idxs must have shape [N] with N = boxes.shape[0] = ", boxes.size(0), ", got ", idxs.sizes());
    TORCH_CHECK(idxs.scalar_type() == at::kLong, op_name, ": idxs must be int64, got ", idxs.scalar_type());
    TORCH_CHECK(idxs.device() == boxes.device(), op_name, ": idxs must be on the device of boxes (", boxes.device(),
                "), got ", idxs.device());
  }
  TORCH_CHECK(iou_threshold >= 0.0, op_name, ": iou_threshold must be a number >= 0 (IoU lies in [0, 1]), got ",
              iou_threshold);
}

}  // namespace rfe
