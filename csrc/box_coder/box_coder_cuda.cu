// decode_detections on CUDA: one thread per candidate decodes its box and landmarks.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "box_coder/box_coder.h"
#include "common/accumulate.h"
#include "common/launch.h"

namespace rfe {
namespace {

template <typename scalar_t>
__global__ void decode_detections_kernel(int64_t K, int64_t P, const int64_t* __restrict__ image,
                                         const int64_t* __restrict__ prior, const scalar_t* __restrict__ loc,
                                         const scalar_t* __restrict__ landm, const scalar_t* __restrict__ priors,
                                         double v0_d, double v1_d, scalar_t* __restrict__ boxes,
                                         scalar_t* __restrict__ landmarks) {
  using acc_t = acc_type<scalar_t>;
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= K) return;
  const int64_t i = image[k] * P + prior[k];
  acc_t p[4], l[4], m[10], box[4], points[10];
  for (int j = 0; j < 4; ++j) p[j] = static_cast<acc_t>(priors[4 * prior[k] + j]);
  for (int j = 0; j < 4; ++j) l[j] = static_cast<acc_t>(loc[4 * i + j]);
  for (int j = 0; j < 10; ++j) m[j] = static_cast<acc_t>(landm[10 * i + j]);
  const acc_t v0 = static_cast<acc_t>(v0_d), v1 = static_cast<acc_t>(v1_d);
  decode_box(l, p, v0, v1, [](acc_t x) { return exp(x); }, box);
  decode_landmarks(m, p, v0, points);
  for (int j = 0; j < 4; ++j) boxes[4 * k + j] = static_cast<scalar_t>(box[j]);
  for (int j = 0; j < 10; ++j) landmarks[10 * k + j] = static_cast<scalar_t>(points[j]);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_detections_cuda(
    const at::Tensor& loc_in, const at::Tensor& conf, const at::Tensor& landm_in, const at::Tensor& priors_in,
    at::ArrayRef<double> variances, double score_threshold) {
  c10::cuda::CUDAGuard guard(loc_in.device());
  Candidates c = select_candidates(loc_in, conf, landm_in, priors_in, variances, score_threshold);
  const int64_t K = c.image_index.size(0), P = priors_in.size(0);
  at::Tensor boxes = at::empty({K, 4}, loc_in.options());
  at::Tensor landmarks = at::empty({K, 10}, loc_in.options());
  if (K > 0) {
    const at::Tensor loc = loc_in.contiguous(), landm = landm_in.contiguous(), priors = priors_in.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, loc.scalar_type(), "decode_detections_cuda", [&] {
      decode_detections_kernel<scalar_t><<<blocks_for(K), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          K, P, c.image_index.data_ptr<int64_t>(), c.prior_index.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(),
          landm.data_ptr<scalar_t>(), priors.data_ptr<scalar_t>(), variances[0], variances[1],
          boxes.data_ptr<scalar_t>(), landmarks.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {boxes, c.scores, landmarks, c.image_index, c.prior_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("decode_detections", &decode_detections_cuda);
}

}  // namespace rfe
