// Batched prior matching on CUDA: the whole batch in four kernels on the current stream,
// no per-image host loop and no host synchronisation. num_truths is clamped to [0, G]
// on the device (the Python wrapper validates it, on request).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/launch.h"
#include "match/match.h"

namespace rfe {
namespace {

__device__ inline int64_t truth_count(const int64_t* num_truths, int64_t b, int64_t G) {
  return min_of<int64_t>(max_of<int64_t>(num_truths[b], 0), G);
}

template <typename T>
__device__ inline T truth_prior_iou(const T* t, const T* prior) {
  T c[4];
  prior_corners(prior, c);
  return box_iou(t[0], t[1], t[2], t[3], plain_area(t[0], t[1], t[2], t[3]), c[0], c[1], c[2], c[3],
                 plain_area(c[0], c[1], c[2], c[3]));
}

// Each prior's best truth (first maximum, as torch.max over truths).
template <typename T>
__global__ void best_truth_kernel(int64_t G, int64_t P, const T* __restrict__ truths,
                                  const int64_t* __restrict__ num_truths, const T* __restrict__ priors,
                                  int64_t* __restrict__ truth_of_prior, T* __restrict__ overlap_of_prior) {
  const int64_t b = blockIdx.y, p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  const int64_t n = truth_count(num_truths, b, G);
  int64_t best_truth = 0;
  T best = T(0);
  for (int64_t g = 0; g < n; ++g) {
    const T iou = truth_prior_iou(truths + (b * G + g) * 4, priors + 4 * p);
    if (g == 0 || iou > best) {
      best = iou;
      best_truth = g;
    }
  }
  truth_of_prior[b * P + p] = best_truth;
  overlap_of_prior[b * P + p] = best;
}

// Each truth's best prior (first maximum over priors): one block per (truth, image).
template <typename T>
__global__ void best_prior_kernel(int64_t G, int64_t P, const T* __restrict__ truths,
                                  const int64_t* __restrict__ num_truths, const T* __restrict__ priors,
                                  int64_t* __restrict__ prior_of_truth, T* __restrict__ overlap_of_truth) {
  const int64_t g = blockIdx.x, b = blockIdx.y;
  if (g >= truth_count(num_truths, b, G)) return;
  const T* truth = truths + (b * G + g) * 4;
  T best = T(-1);
  int64_t best_prior = 0;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {  // ascending: strict > keeps the first
    const T iou = truth_prior_iou(truth, priors + 4 * p);
    if (iou > best) {
      best = iou;
      best_prior = p;
    }
  }
  __shared__ T values[kThreads];
  __shared__ int64_t indices[kThreads];
  values[threadIdx.x] = best;
  indices[threadIdx.x] = best_prior;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      const T other = values[threadIdx.x + stride];
      const int64_t other_index = indices[threadIdx.x + stride];
      if (other > values[threadIdx.x] || (other == values[threadIdx.x] && other_index < indices[threadIdx.x])) {
        values[threadIdx.x] = other;
        indices[threadIdx.x] = other_index;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    prior_of_truth[b * G + g] = indices[0];
    overlap_of_truth[b * G + g] = values[0];
  }
}

// The seed's forcing, per image: truths whose best overlap reaches 0.2 give their best
// prior overlap 2; then every truth, in order, claims its best prior.
template <typename T>
__global__ void force_kernel(int64_t B, int64_t G, int64_t P, const int64_t* __restrict__ num_truths,
                             const int64_t* __restrict__ prior_of_truth, const T* __restrict__ overlap_of_truth,
                             int64_t* __restrict__ truth_of_prior, T* __restrict__ overlap_of_prior,
                             bool* __restrict__ has_targets) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= B) return;
  const int64_t n = truth_count(num_truths, b, G);
  bool any = false;
  for (int64_t g = 0; g < n; ++g) {
    if (overlap_of_truth[b * G + g] >= static_cast<T>(kMinForcedOverlap)) {
      any = true;
      overlap_of_prior[b * P + prior_of_truth[b * G + g]] = static_cast<T>(kForcedOverlap);
    }
  }
  for (int64_t g = 0; g < n; ++g) truth_of_prior[b * P + prior_of_truth[b * G + g]] = g;
  has_targets[b] = any;
}

template <typename T>
__global__ void encode_kernel(int64_t G, int64_t P, const T* __restrict__ truths, const int64_t* __restrict__ labels,
                              const T* __restrict__ landmarks, const T* __restrict__ priors,
                              const int64_t* __restrict__ truth_of_prior, const T* __restrict__ overlap_of_prior,
                              const bool* __restrict__ has_targets, T threshold, T v0, T* __restrict__ loc,
                              int64_t* __restrict__ conf, T* __restrict__ ratio, T* __restrict__ landm) {
  const int64_t b = blockIdx.y, p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (p >= P) return;
  const int64_t i = b * P + p;
  if (!has_targets[b]) {  // all-zero targets; size ratio 1, as log(1) / v1 = 0
    for (int k = 0; k < 4; ++k) loc[4 * i + k] = T(0);
    ratio[2 * i] = ratio[2 * i + 1] = T(1);
    for (int k = 0; k < 10; ++k) landm[10 * i + k] = T(0);
    conf[i] = 0;
    return;
  }
  const int64_t g = truth_of_prior[i];
  const T* truth = truths + (b * G + g) * 4;
  conf[i] = overlap_of_prior[i] < threshold ? 0 : labels[b * G + g];
  encode_centre(truth, priors + 4 * p, v0, loc + 4 * i);
  encode_size_ratio(truth, priors + 4 * p, ratio + 2 * i);
  encode_landmarks(landmarks + (b * G + g) * 10, priors + 4 * p, v0, landm + 10 * i);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_cuda(const at::Tensor& truths_in, const at::Tensor& labels_in,
                                                          const at::Tensor& landmarks_in,
                                                          const at::Tensor& num_truths_in, const at::Tensor& priors_in,
                                                          double threshold, at::ArrayRef<double> variances) {
  const auto [B, G, P] =
      check_match_args(truths_in, labels_in, landmarks_in, num_truths_in, priors_in, threshold, variances);
  TORCH_CHECK(G <= kMaxGridYZ, "match: at most ", kMaxGridYZ, " truths per image on CUDA, got G = ", G);
  c10::cuda::CUDAGuard guard(truths_in.device());
  auto [loc_t, conf_t, landm_t] = empty_targets(truths_in, P);
  if (B == 0 || P == 0) return {loc_t, conf_t, landm_t};
  TORCH_CHECK(B <= kMaxGridYZ, "match: at most ", kMaxGridYZ, " images per call on CUDA, got B = ", B);

  const at::Tensor truths = truths_in.contiguous(), labels = labels_in.contiguous(),
                   landmarks = landmarks_in.contiguous(), num_truths = num_truths_in.contiguous(),
                   priors = priors_in.contiguous();
  const auto long_options = truths.options().dtype(at::kLong);
  at::Tensor truth_of_prior = at::empty({B, P}, long_options);
  at::Tensor overlap_of_prior = at::empty({B, P}, truths.options());
  at::Tensor prior_of_truth = at::empty({B, std::max<int64_t>(G, 1)}, long_options);
  at::Tensor overlap_of_truth = at::empty({B, std::max<int64_t>(G, 1)}, truths.options());
  at::Tensor has_targets = at::empty({B}, truths.options().dtype(at::kBool));
  at::Tensor size_ratio = at::empty({B, P, 2}, truths.options());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const dim3 prior_grid(blocks_for(P), B);

  AT_DISPATCH_FLOATING_TYPES(truths.scalar_type(), "match_cuda", [&] {
    using T = scalar_t;
    const T* t = truths.data_ptr<T>();
    const T* pr = priors.data_ptr<T>();
    const int64_t* counts = num_truths.data_ptr<int64_t>();
    best_truth_kernel<T><<<prior_grid, kThreads, 0, stream>>>(G, P, t, counts, pr, truth_of_prior.data_ptr<int64_t>(),
                                                              overlap_of_prior.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (G > 0) {
      best_prior_kernel<T><<<dim3(G, B), kThreads, 0, stream>>>(G, P, t, counts, pr, prior_of_truth.data_ptr<int64_t>(),
                                                                overlap_of_truth.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    force_kernel<T><<<blocks_for(B), kThreads, 0, stream>>>(
        B, G, P, counts, prior_of_truth.data_ptr<int64_t>(), overlap_of_truth.data_ptr<T>(),
        truth_of_prior.data_ptr<int64_t>(), overlap_of_prior.data_ptr<T>(), has_targets.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    encode_kernel<T><<<prior_grid, kThreads, 0, stream>>>(
        G, P, t, labels.data_ptr<int64_t>(), landmarks.data_ptr<T>(), pr, truth_of_prior.data_ptr<int64_t>(),
        overlap_of_prior.data_ptr<T>(), has_targets.data_ptr<bool>(), static_cast<T>(threshold),
        static_cast<T>(variances[0]), loc_t.data_ptr<T>(), conf_t.data_ptr<int64_t>(), size_ratio.data_ptr<T>(),
        landm_t.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  finish_size_encoding(loc_t, size_ratio, variances[1]);
  return {loc_t, conf_t, landm_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("match", &match_cuda);
}

}  // namespace rfe
