#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

#include "common/box_math.h"

namespace rfe {

// Truths with a best-prior overlap below this force no prior (the seed's "ignore hard gt").
constexpr double kMinForcedOverlap = 0.2;
// Overlap given to a truth's forced best prior, so that no threshold drops it.
constexpr double kForcedOverlap = 2.0;

// Shapes, dtypes, devices, threshold and variances of match's arguments; returns {B, G, P}
// (symbolic shapes too: the Meta kernel calls it).
std::tuple<c10::SymInt, c10::SymInt, c10::SymInt> check_match_sizes(const at::Tensor& truths, const at::Tensor& labels,
                                                                    const at::Tensor& landmarks,
                                                                    const at::Tensor& num_truths,
                                                                    const at::Tensor& priors, double threshold,
                                                                    at::ArrayRef<double> variances);

// The same checks, with the concrete {B, G, P} the kernels index with.
std::tuple<int64_t, int64_t, int64_t> check_match_args(const at::Tensor& truths, const at::Tensor& labels,
                                                       const at::Tensor& landmarks, const at::Tensor& num_truths,
                                                       const at::Tensor& priors, double threshold,
                                                       at::ArrayRef<double> variances);

// Allocates (uninitialised) loc_t [B, P, 4], conf_t [B, P] int64, landm_t [B, P, 10].
std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_targets(const at::Tensor& truths, const c10::SymInt& priors);

// loc_t[..., 2:4] = log(ratio) / v1 for the size ratios [B, P, 2] ((x2 - x1) / w and
// (y2 - y1) / h, overwritten), with ATen's own log, so that it rounds as torch.log does.
void finish_size_encoding(at::Tensor& loc_t, at::Tensor& ratio, double v1);

}  // namespace rfe
