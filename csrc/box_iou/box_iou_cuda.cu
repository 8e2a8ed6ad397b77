#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_iou/box_iou.h"
#include "common/accumulate.h"
#include "common/launch.h"

namespace rfe {
namespace {

// Grid size cap of the grid-stride loop.
constexpr int64_t kMaxBlocks = 65535LL * 8;

template <typename scalar_t>
__global__ void box_iou_kernel(int64_t B, int64_t N, int64_t M, const scalar_t* __restrict__ a,
                               const scalar_t* __restrict__ b, scalar_t* __restrict__ out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t total = B * N * M;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % M, row = i / M, batch = row / N;
    const scalar_t* x = a + 4 * row;
    const scalar_t* y = b + 4 * (batch * M + j);
    const acc_t x1 = x[0], x2 = x[1], x3 = x[2], x4 = x[3];
    const acc_t y1 = y[0], y2 = y[1], y3 = y[2], y4 = y[3];
    out[i] = static_cast<scalar_t>(
        box_iou(x1, x2, x3, x4, plain_area(x1, x2, x3, x4), y1, y2, y3, y4, plain_area(y1, y2, y3, y4)));
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const auto [a, b] = box_iou_batched_views(boxes1, boxes2);
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t B = a.size(0), N = a.size(1), M = b.size(1);
  at::Tensor out = at::empty({B, N, M}, a.options());
  const int64_t total = B * N * M;
  if (total > 0) {
    const int64_t blocks = blocks_for(total, kMaxBlocks);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "box_iou_cuda", [&] {
      box_iou_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          B, N, M, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return boxes1.dim() == 2 ? out.squeeze(0) : out;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace rfe
