// decode_detections on the CPU: only the priors whose face score passes the threshold
// are decoded, straight into the compact outputs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "box_coder/box_coder.h"

namespace rfe {
namespace {

// Candidates per parallel work item.
constexpr int64_t kCandidatesPerTask = 2048;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_detections_cpu(
    const at::Tensor& loc_in, const at::Tensor& conf, const at::Tensor& landm_in, const at::Tensor& priors_in,
    at::ArrayRef<double> variances, double score_threshold) {
  TORCH_CHECK(loc_in.scalar_type() == at::kFloat || loc_in.scalar_type() == at::kDouble,
              "decode_detections: loc on the CPU must be float32 or float64, got ", loc_in.scalar_type());
  Candidates c = select_candidates(loc_in, conf, landm_in, priors_in, variances, score_threshold);
  const int64_t K = c.image_index.size(0), P = priors_in.size(0);
  at::Tensor boxes = at::empty({K, 4}, loc_in.options());
  at::Tensor landmarks = at::empty({K, 10}, loc_in.options());
  const at::Tensor loc = loc_in.contiguous(), landm = landm_in.contiguous(), priors = priors_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(loc.scalar_type(), "decode_detections_cpu", [&] {
    using T = scalar_t;
    const T v0 = static_cast<T>(variances[0]), v1 = static_cast<T>(variances[1]);
    const int64_t* image = c.image_index.data_ptr<int64_t>();
    const int64_t* prior = c.prior_index.data_ptr<int64_t>();
    const T *pl = loc.data_ptr<T>(), *pm = landm.data_ptr<T>(), *pp = priors.data_ptr<T>();
    T *ob = boxes.data_ptr<T>(), *om = landmarks.data_ptr<T>();
    auto exp_fn = [](T x) { return std::exp(x); };
    at::parallel_for(0, K, kCandidatesPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const int64_t i = image[k] * P + prior[k];
        decode_box(pl + 4 * i, pp + 4 * prior[k], v0, v1, exp_fn, ob + 4 * k);
        decode_landmarks(pm + 10 * i, pp + 4 * prior[k], v0, om + 10 * k);
      }
    });
  });
  return {boxes, c.scores, landmarks, c.image_index, c.prior_index};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("decode_detections", &decode_detections_cpu);
}

}  // namespace rfe
