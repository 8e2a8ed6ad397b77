#include <ATen/ATen.h>
#include <torch/library.h>

#include "box_iou/box_iou.h"

namespace rfe {

void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  TORCH_CHECK((boxes1.dim() == 2 || boxes1.dim() == 3) && boxes1.sym_size(-1) == 4,
              "box_iou: boxes1 must have shape [N, 4] or [B, N, 4], got ", boxes1.sym_sizes());
  TORCH_CHECK(boxes2.dim() == boxes1.dim() && boxes2.sym_size(-1) == 4, "box_iou: boxes2 must have shape ",
              boxes1.dim() == 2 ? "[M, 4]" : "[B, M, 4]", " like boxes1, got ", boxes2.sym_sizes());
  TORCH_CHECK(boxes1.dim() == 2 || boxes1.sym_size(0) == boxes2.sym_size(0),
              "box_iou: boxes1 and boxes2 must have the same batch size, got ", boxes1.sym_size(0), " and ",
              boxes2.sym_size(0));
  TORCH_CHECK(at::isFloatingType(boxes1.scalar_type()), "box_iou: boxes1 must be a floating point tensor, got ",
              boxes1.scalar_type());
  TORCH_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), "box_iou: boxes2 must have the dtype of boxes1 (",
              boxes1.scalar_type(), "), got ", boxes2.scalar_type());
  TORCH_CHECK(boxes2.device() == boxes1.device(), "box_iou: boxes2 must be on the device of boxes1 (", boxes1.device(),
              "), got ", boxes2.device());
}

std::pair<at::Tensor, at::Tensor> box_iou_batched_views(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);
  if (boxes1.dim() == 2) return {boxes1.unsqueeze(0).contiguous(), boxes2.unsqueeze(0).contiguous()};
  return {boxes1.contiguous(), boxes2.contiguous()};
}

namespace {

at::Tensor box_iou_meta(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_box_iou_args(boxes1, boxes2);
  if (boxes1.dim() == 2) return at::empty_symint({boxes1.sym_size(0), boxes2.sym_size(0)}, boxes1.options());
  return at::empty_symint({boxes1.sym_size(0), boxes1.sym_size(1), boxes2.sym_size(1)}, boxes1.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, Meta, m) {
  m.impl("box_iou", &box_iou_meta);
}

}  // namespace rfe
