#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

#include "common/box_math.h"

namespace rfe {

// The priors whose face score conf[b, p, 1] > score_threshold, as (image, prior) pairs
// in image-then-prior order, with their scores. Checks decode_detections' arguments.
struct Candidates {
  at::Tensor image_index;  // [K] int64
  at::Tensor prior_index;  // [K] int64
  at::Tensor scores;       // [K]
};
Candidates select_candidates(const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landm,
                             const at::Tensor& priors, at::ArrayRef<double> variances, double score_threshold);

}  // namespace rfe
