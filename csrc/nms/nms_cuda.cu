// NMS on CUDA: the 64-box bitmask algorithm. One kernel writes, for every box in score
// order, a bitmask of the later boxes it suppresses; a second kernel, a single block,
// walks the masks in order and gathers the keep list on the GPU. The host reads back
// three numbers (the count and two finiteness flags), never the mask.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/accumulate.h"
#include "common/launch.h"
#include "nms/nms.h"

namespace rfe {
namespace {

constexpr int kBoxesPerBlock = 64;
constexpr int kGatherThreads = 256;
constexpr int64_t kBadBoxes = 1, kBadScores = 2;

// status[0]: number kept; status[1]: kBadBoxes | kBadScores flags.
template <typename scalar_t, typename acc_t>
__global__ void nms_mask_kernel(int64_t n, int64_t col_blocks, const scalar_t* __restrict__ boxes,
                                const scalar_t* __restrict__ scores, const int64_t* __restrict__ classes,
                                acc_t threshold, unsigned long long* __restrict__ mask,
                                unsigned long long* __restrict__ status) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) return;
  const int row_size = static_cast<int>(min_of<int64_t>(n - row_block * kBoxesPerBlock, kBoxesPerBlock));
  const int col_size = static_cast<int>(min_of<int64_t>(n - col_block * kBoxesPerBlock, kBoxesPerBlock));

  __shared__ acc_t col_boxes[kBoxesPerBlock][5];
  __shared__ int64_t col_classes[kBoxesPerBlock];
  const int t = threadIdx.x;
  if (t < col_size) {
    const int64_t j = col_block * kBoxesPerBlock + t;
    const acc_t x1 = static_cast<acc_t>(boxes[4 * j]), y1 = static_cast<acc_t>(boxes[4 * j + 1]);
    const acc_t x2 = static_cast<acc_t>(boxes[4 * j + 2]), y2 = static_cast<acc_t>(boxes[4 * j + 3]);
    col_boxes[t][0] = x1;
    col_boxes[t][1] = y1;
    col_boxes[t][2] = x2;
    col_boxes[t][3] = y2;
    col_boxes[t][4] = box_area(x1, y1, x2, y2);
    col_classes[t] = classes ? classes[j] : 0;
    if (row_block == col_block) {  // every box passes here exactly once
      unsigned long long bad = 0;
      if (!(is_finite(x1) && is_finite(y1) && is_finite(x2) && is_finite(y2))) bad |= kBadBoxes;
      if (!is_finite(static_cast<acc_t>(scores[j]))) bad |= kBadScores;
      if (bad) atomicOr(status + 1, bad);
    }
  }
  __syncthreads();
  if (t >= row_size) return;

  const int64_t i = row_block * kBoxesPerBlock + t;
  const acc_t x1 = static_cast<acc_t>(boxes[4 * i]), y1 = static_cast<acc_t>(boxes[4 * i + 1]);
  const acc_t x2 = static_cast<acc_t>(boxes[4 * i + 2]), y2 = static_cast<acc_t>(boxes[4 * i + 3]);
  const acc_t area = box_area(x1, y1, x2, y2);
  const int64_t cls = classes ? classes[i] : 0;
  unsigned long long bits = 0;
  for (int k = row_block == col_block ? t + 1 : 0; k < col_size; ++k) {
    const acc_t* b = col_boxes[k];
    if (col_classes[k] == cls && box_iou(x1, y1, x2, y2, area, b[0], b[1], b[2], b[3], b[4]) > threshold)
      bits |= 1ULL << k;
  }
  mask[i * col_blocks + col_block] = bits;
}

// One block walks the boxes in score order, 64 at a time: thread 0 settles which of the
// 64 survive (from the diagonal mask words), then all threads OR the survivors' masks
// into the words of later boxes that they own.
__global__ void nms_gather_kernel(int64_t n, int64_t col_blocks, const unsigned long long* __restrict__ mask,
                                  const int64_t* __restrict__ order, unsigned long long* __restrict__ removed,
                                  int64_t* __restrict__ keep, unsigned long long* __restrict__ status) {
  __shared__ unsigned long long diagonal[kBoxesPerBlock];
  __shared__ unsigned long long survivors;
  int64_t kept = 0;  // meaningful in thread 0
  for (int64_t block = 0; block < col_blocks; ++block) {
    const int size = static_cast<int>(min_of<int64_t>(n - block * kBoxesPerBlock, kBoxesPerBlock));
    if (threadIdx.x < size) diagonal[threadIdx.x] = mask[(block * kBoxesPerBlock + threadIdx.x) * col_blocks + block];
    __syncthreads();  // also publishes removed[block], written in the last round
    if (threadIdx.x == 0) {
      unsigned long long dropped = removed[block], alive = 0;
      for (int k = 0; k < size; ++k) {
        if (dropped >> k & 1ULL) continue;
        alive |= 1ULL << k;
        dropped |= diagonal[k];
        keep[kept++] = order[block * kBoxesPerBlock + k];
      }
      survivors = alive;
    }
    __syncthreads();
    const unsigned long long alive = survivors;
    const unsigned long long* rows = mask + block * kBoxesPerBlock * col_blocks;
    for (int64_t word = block + 1 + threadIdx.x; word < col_blocks; word += blockDim.x) {
      unsigned long long acc = removed[word];
#pragma unroll 8
      for (int k = 0; k < kBoxesPerBlock; ++k)
        if (alive >> k & 1ULL) acc |= rows[k * col_blocks + word];
      removed[word] = acc;
    }
  }
  if (threadIdx.x == 0) status[0] = static_cast<unsigned long long>(kept);
}

at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                         double iou_threshold, const char* op_name) {
  check_nms_args(boxes, scores, idxs, iou_threshold, op_name);
  TORCH_CHECK(boxes.is_cuda(), op_name, ": boxes must be a CUDA tensor here");
  const int64_t n = boxes.size(0);
  const int64_t col_blocks = (n + kBoxesPerBlock - 1) / kBoxesPerBlock;
  TORCH_CHECK(col_blocks <= kMaxGridYZ, op_name, ": at most ", kMaxGridYZ * kBoxesPerBlock, " boxes on CUDA, got ", n);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  c10::cuda::CUDAGuard guard(boxes.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  auto sorted = scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true);
  const at::Tensor sorted_scores = std::get<0>(sorted).contiguous();
  const at::Tensor order = std::get<1>(sorted).contiguous();
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  const at::Tensor sorted_classes = idxs.defined() ? idxs.index_select(0, order).contiguous() : at::Tensor();

  const auto long_options = boxes.options().dtype(at::kLong);
  at::Tensor mask = at::empty({n, col_blocks}, long_options);
  at::Tensor removed = at::zeros({col_blocks}, long_options);
  at::Tensor keep = at::empty({n}, long_options);
  at::Tensor status = at::zeros({2}, long_options);
  auto* status_ptr = reinterpret_cast<unsigned long long*>(status.data_ptr<int64_t>());
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const dim3 grid(col_blocks, col_blocks);
    nms_mask_kernel<scalar_t, acc_t><<<grid, kBoxesPerBlock, 0, stream>>>(
        n, col_blocks, sorted_boxes.data_ptr<scalar_t>(), sorted_scores.data_ptr<scalar_t>(),
        sorted_classes.defined() ? sorted_classes.data_ptr<int64_t>() : nullptr, threshold_as<acc_t>(iou_threshold),
        mask_ptr, status_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  nms_gather_kernel<<<1, kGatherThreads, 0, stream>>>(
      n, col_blocks, mask_ptr, order.data_ptr<int64_t>(),
      reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()), keep.data_ptr<int64_t>(), status_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor host_status = status.cpu();  // the one synchronisation: the keep count
  const int64_t num_kept = host_status[0].item<int64_t>();
  const int64_t bad = host_status[1].item<int64_t>();
  TORCH_CHECK(!(bad & kBadBoxes), op_name, ": boxes contains NaN or inf; NMS needs finite values");
  TORCH_CHECK(!(bad & kBadScores), op_name, ": scores contains NaN or inf; NMS needs finite values");
  return keep.narrow(0, 0, num_kept);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda_impl(boxes, scores, at::Tensor(), iou_threshold, "nms");
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return nms_cuda_impl(boxes, scores, idxs, iou_threshold, "batched_nms");
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace rfe
