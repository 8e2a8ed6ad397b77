#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "box_iou/box_iou.h"

namespace rfe {
namespace {

// IoU pairs per parallel work item.
constexpr int64_t kPairsPerTask = 4096;

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const auto [a, b] = box_iou_batched_views(boxes1, boxes2);
  TORCH_CHECK(a.scalar_type() == at::kFloat || a.scalar_type() == at::kDouble,
              "box_iou: boxes on the CPU must be float32 or float64, got ", a.scalar_type());
  const int64_t B = a.size(0), N = a.size(1), M = b.size(1);
  at::Tensor out = at::empty({B, N, M}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "box_iou_cpu", [&] {
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(
        0, B * N, std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(M, 1)), [&](int64_t begin, int64_t end) {
          for (int64_t row = begin; row < end; ++row) {
            const scalar_t* x = pa + 4 * row;
            const scalar_t* ys = pb + (row / std::max<int64_t>(N, 1)) * M * 4;
            const scalar_t area_x = plain_area(x[0], x[1], x[2], x[3]);
            for (int64_t j = 0; j < M; ++j) {
              const scalar_t* y = ys + 4 * j;
              po[row * M + j] =
                  box_iou(x[0], x[1], x[2], x[3], area_x, y[0], y[1], y[2], y[3], plain_area(y[0], y[1], y[2], y[3]));
            }
          }
        });
  });
  return boxes1.dim() == 2 ? out.squeeze(0) : out;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace rfe
