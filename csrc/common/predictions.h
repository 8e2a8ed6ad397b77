// The shapes of a network's predictions, checked once for every op that takes them
// (decode_detections, detect_faces): priors [P, 4]; loc [B, P, 4]; scores [B, P, 2]
// (probabilities or logits); landm [B, P, 10]; all of loc's dtype and device.
#pragma once

#include <ATen/ATen.h>

#include <utility>

namespace rfe {

// Returns {B, P}; the error names op and argument (``scores_name`` is conf or logits).
std::pair<int64_t, int64_t> check_prediction_shapes(const char* op, const at::Tensor& loc, const char* scores_name,
                                                    const at::Tensor& scores, const at::Tensor& landm,
                                                    const at::Tensor& priors);

// ``t`` has loc's dtype and device.
void check_like_loc(const char* op, const char* name, const at::Tensor& t, const at::Tensor& loc);

}  // namespace rfe
