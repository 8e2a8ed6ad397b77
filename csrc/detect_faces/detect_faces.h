#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <cmath>

namespace rfe {

// counts[b] of detect_faces for an image whose detections cannot be computed.
constexpr int64_t kNonFiniteScores = -1;      // a face score (over all its priors) is NaN or inf
constexpr int64_t kNonFiniteCandidates = -2;  // a decoded candidate box or landmark is NaN or inf

// Checks detect_faces' arguments (both backends).
void check_detect_faces_args(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& landm,
                             const at::Tensor& priors, const c10::optional<at::Tensor>& inside,
                             const c10::optional<at::Tensor>& factor, int64_t canvas_height, int64_t canvas_width,
                             at::ArrayRef<double> variances, double score_threshold, int64_t top_k,
                             double nms_threshold, int64_t keep_top_k);

// The face probabilities [B, P]: sigmoid(face - background) (the two-class softmax),
// times inside where given, as ATen computes them (CUDA).
at::Tensor face_scores(const at::Tensor& logits, const c10::optional<at::Tensor>& inside);

// One face probability from its logits, as ATen's scalar sigmoid computes it (its
// vectorised loop may differ in the last bit).
template <typename T>
inline T face_score(T background, T face) {
  return T(1) / (T(1) + std::exp(-(face - background)));
}

}  // namespace rfe
