#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/box_math.h"

namespace rfe {

// Box area with the convention that a degenerate box (x2 < x1 or y2 < y1) has zero area.
template <typename T>
RFE_HOST_DEVICE inline T box_area(T x1, T y1, T x2, T y2) {
  return mul_rn(max_of(x2 - x1, T(0)), max_of(y2 - y1, T(0)));
}

// The threshold as the box dtype T such that, for every finite T value v,
// (v > result) == (double(v) > iou_threshold): the largest T not above iou_threshold.
// Comparing in T keeps the inner loops in one width (torchvision compares in double).
template <typename T>
inline T threshold_as(double iou_threshold) {
  T t = static_cast<T>(iou_threshold);
  if (static_cast<double>(t) > iou_threshold) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// Shared argument checks of the NMS ops (both backends): shapes, dtypes, devices,
// the threshold. Finiteness is checked inside the kernels, which read every value anyway.
// `idxs` is undefined for plain NMS.
void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold,
                    const char* op_name);

// NMS over n boxes [n, 4] on the CPU, for kernels that run it on their own buffers:
// the kept indices in decreasing score order (equal scores: lower index first); boxes
// only suppress boxes of their own class (classes [n], or nullptr for one class).
// Values must be finite.
template <typename scalar_t>
std::vector<int64_t> nms_keep_cpu(const scalar_t* boxes, const scalar_t* scores, const int64_t* classes, int64_t n,
                                  double iou_threshold);

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold);

}  // namespace rfe
