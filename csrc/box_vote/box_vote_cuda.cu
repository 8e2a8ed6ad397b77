// Box voting on CUDA: boxes sorted by (category, score descending, index) with ATen; one
// kernel writes, for every box, a bitmask of the later boxes of its category that would
// join its group (IoU >= threshold); a single block walks the heads in order (the greedy
// pass is sequential), its threads sharing each row's words, and records each box's head;
// the votes are then summed per head with index_add (atomics: the summation order, and
// so the last bits, may differ from the CPU's).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_vote/box_vote.h"
#include "common/launch.h"

namespace rfe {
namespace {

constexpr int kWalkThreads = 256;

// Thread (i, w): bit b of mask[i][w] says whether box 64 w + b (sorted positions) joins
// the group that box i would head: it comes after i, has i's category, and overlaps it.
template <typename T>
__global__ void group_mask_kernel(int64_t n, int64_t words, const T* __restrict__ boxes,
                                  const int64_t* __restrict__ categories, T threshold,
                                  unsigned long long* __restrict__ mask) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= n * words) return;
  const int64_t i = item / words, w = item % words;
  const T* head = boxes + 4 * i;
  const T head_area = plain_area(head[0], head[1], head[2], head[3]);
  unsigned long long bits = 0;
  for (int b = 0; b < 64; ++b) {
    const int64_t j = 64 * w + b;
    if (j >= n) break;
    if (j <= i || categories[j] != categories[i]) continue;
    const T* box = boxes + 4 * j;
    if (joins_group(head, head_area, box, plain_area(box[0], box[1], box[2], box[3]), threshold)) bits |= 1ULL << b;
  }
  mask[item] = bits;
}

// One block: the greedy pass. head_of[j] is the position of the head of j's group.
__global__ void walk_heads_kernel(int64_t n, int64_t words, const unsigned long long* __restrict__ mask,
                                  unsigned long long* __restrict__ taken, int64_t* __restrict__ head_of,
                                  bool* __restrict__ is_head) {
  for (int64_t i = 0; i < n; ++i) {
    __syncthreads();  // the previous row's words written
    const bool taken_already = (taken[i / 64] >> (i % 64)) & 1ULL;
    __syncthreads();              // read by every thread before thread 0 may set it
    if (taken_already) continue;  // the same for every thread
    if (threadIdx.x == 0) {
      taken[i / 64] |= 1ULL << (i % 64);
      head_of[i] = i;
      is_head[i] = true;
    }
    __syncthreads();
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {  // each word one thread's
      unsigned long long group = mask[i * words + w] & ~taken[w];
      taken[w] |= group;
      while (group) {
        const int b = __ffsll(static_cast<long long>(group)) - 1;
        head_of[64 * w + b] = i;
        group &= group - 1;
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> box_vote_cuda(const at::Tensor& boxes_in,
                                                                         const at::Tensor& scores_in,
                                                                         const at::Tensor& landmarks_in,
                                                                         const at::Tensor& idxs_in,
                                                                         double iou_threshold) {
  check_box_vote_args(boxes_in, scores_in, landmarks_in, idxs_in, iou_threshold);
  c10::cuda::CUDAGuard guard(boxes_in.device());
  const int64_t n = boxes_in.size(0), d = landmarks_in.size(1);
  if (n == 0) return {boxes_in.clone(), scores_in.clone(), landmarks_in.clone(), idxs_in.clone()};
  const bool finite = at::isfinite(boxes_in).all().item<bool>() && at::isfinite(scores_in).all().item<bool>();
  TORCH_CHECK(finite, "box_vote: boxes and scores must be finite");
  TORCH_CHECK(scores_in.min().item<double>() >= 0.0, "box_vote: scores must be >= 0 (the votes' weights)");
  const at::Tensor by_score = std::get<1>(at::sort(scores_in, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor by_category =
      std::get<1>(at::sort(idxs_in.index_select(0, by_score), /*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor order = by_score.index_select(0, by_category);
  const at::Tensor boxes = boxes_in.index_select(0, order).contiguous();
  const at::Tensor scores = scores_in.index_select(0, order).contiguous();
  const at::Tensor landmarks = landmarks_in.index_select(0, order).contiguous();
  const at::Tensor idxs = idxs_in.index_select(0, order).contiguous();
  const int64_t words = (n + 63) / 64;
  const auto long_options = idxs.options();
  at::Tensor mask = at::empty({n, words}, long_options);
  at::Tensor taken = at::zeros({words}, long_options);
  at::Tensor head_of = at::empty({n}, long_options);
  at::Tensor is_head = at::zeros({n}, long_options.dtype(at::kBool));
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "box_vote_cuda", [&] {
    group_mask_kernel<scalar_t><<<blocks_for(n * words), kThreads, 0, stream>>>(
        n, words, boxes.data_ptr<scalar_t>(), idxs.data_ptr<int64_t>(), static_cast<scalar_t>(iou_threshold),
        reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  walk_heads_kernel<<<1, kWalkThreads, 0, stream>>>(n, words,
                                                    reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>()),
                                                    reinterpret_cast<unsigned long long*>(taken.data_ptr<int64_t>()),
                                                    head_of.data_ptr<int64_t>(), is_head.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const at::Tensor heads = at::nonzero(is_head).flatten();  // sorted positions: by category, best first
  const int64_t k = heads.size(0);
  const at::Tensor slot = at::cumsum(is_head.to(at::kLong), 0) - 1;
  const at::Tensor slot_of = slot.index_select(0, head_of);
  const at::Tensor values = at::cat({boxes, landmarks}, 1);
  const at::Tensor weighted = values * scores.unsqueeze(1);
  const at::Tensor sums = at::zeros({k, 4 + d}, values.options()).index_add_(0, slot_of, weighted);
  const at::Tensor totals = at::zeros({k}, scores.options()).index_add_(0, slot_of, scores);
  const at::Tensor head_values = values.index_select(0, heads);
  const at::Tensor voted = at::where((totals > 0).unsqueeze(1), sums / totals.unsqueeze(1), head_values);
  return {voted.narrow(1, 0, 4).contiguous(), scores.index_select(0, heads), voted.narrow(1, 4, d).contiguous(),
          idxs.index_select(0, heads)};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("box_vote", &box_vote_cuda);
}

}  // namespace rfe
