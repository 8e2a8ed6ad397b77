#include <ATen/ATen.h>
#include <torch/library.h>

#include "match/match.h"

namespace rfe {

std::tuple<c10::SymInt, c10::SymInt, c10::SymInt> check_match_sizes(const at::Tensor& truths, const at::Tensor& labels,
                                                                    const at::Tensor& landmarks,
                                                                    const at::Tensor& num_truths,
                                                                    const at::Tensor& priors, double threshold,
                                                                    at::ArrayRef<double> variances) {
  TORCH_CHECK(truths.dim() == 3 && truths.sym_size(2) == 4,
              "match: truths must have shape [B, G, 4] (x1, y1, x2, y2), got ", truths.sym_sizes());
  const c10::SymInt B = truths.sym_size(0), G = truths.sym_size(1);
  TORCH_CHECK(labels.dim() == 2 && labels.sym_size(0) == B && labels.sym_size(1) == G,
              "match: labels must have shape [B, G] = [", B, ", ", G, "], got ", labels.sym_sizes());
  TORCH_CHECK(
      landmarks.dim() == 3 && landmarks.sym_size(0) == B && landmarks.sym_size(1) == G && landmarks.sym_size(2) == 10,
      "match: landmarks must have shape [B, G, 10] = [", B, ", ", G, ", 10], got ", landmarks.sym_sizes());
  TORCH_CHECK(num_truths.dim() == 1 && num_truths.sym_size(0) == B, "match: num_truths must have shape [B] = [", B,
              "], got ", num_truths.sym_sizes());
  TORCH_CHECK(priors.dim() == 2 && priors.sym_size(1) == 4, "match: priors must have shape [P, 4] (cx, cy, w, h), got ",
              priors.sym_sizes());
  TORCH_CHECK(G < (int64_t(1) << 31), "match: at most 2^31 - 1 truths per image, got G = ", G);
  TORCH_CHECK(truths.scalar_type() == at::kFloat || truths.scalar_type() == at::kDouble,
              "match: truths must be float32 or float64, got ", truths.scalar_type());
  TORCH_CHECK(landmarks.scalar_type() == truths.scalar_type() && priors.scalar_type() == truths.scalar_type(),
              "match: truths, landmarks and priors must share one dtype, got ", truths.scalar_type(), ", ",
              landmarks.scalar_type(), ", ", priors.scalar_type());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "match: labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK(num_truths.scalar_type() == at::kLong, "match: num_truths must be int64, got ", num_truths.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"labels", labels},
                                {"landmarks", landmarks},
                                {"num_truths", num_truths},
                                {"priors", priors}}) {
    TORCH_CHECK(t.device() == truths.device(), "match: ", name, " must be on the device of truths (", truths.device(),
                "), got ", t.device());
  }
  // NaN fails both comparisons; a negative threshold would make every prior a face.
  TORCH_CHECK(threshold >= 0.0 && threshold <= 1.0, "match: threshold must be an IoU in [0, 1], got ", threshold);
  TORCH_CHECK(variances.size() == 2, "match: variances must hold 2 numbers, got ", variances.size());
  TORCH_CHECK(variances[0] > 0 && variances[1] > 0, "match: variances must be positive, got (", variances[0], ", ",
              variances[1], ")");
  return {B, G, priors.sym_size(0)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_targets(const at::Tensor& truths, int64_t priors) {
  const int64_t B = truths.size(0);
  return {at::empty({B, priors, 4}, truths.options()), at::empty({B, priors}, truths.options().dtype(at::kLong)),
          at::empty({B, priors, 10}, truths.options())};
}

std::tuple<int64_t, int64_t, int64_t> check_match_args(const at::Tensor& truths, const at::Tensor& labels,
                                                       const at::Tensor& landmarks, const at::Tensor& num_truths,
                                                       const at::Tensor& priors, double threshold,
                                                       at::ArrayRef<double> variances) {
  const auto [B, G, P] = check_match_sizes(truths, labels, landmarks, num_truths, priors, threshold, variances);
  return {B.expect_int(), G.expect_int(), P.expect_int()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_targets(const at::Tensor& truths, const c10::SymInt& priors) {
  const c10::SymInt B = truths.sym_size(0);
  return {at::empty_symint({B, priors, 4}, truths.options()),
          at::empty_symint({B, priors}, truths.options().dtype(at::kLong)),
          at::empty_symint({B, priors, 10}, truths.options())};
}

void finish_size_encoding(at::Tensor& loc_t, at::Tensor& ratio, double v1) {
  // On the contiguous buffer, in place: ATen's log of a strided view is ten times slower.
  loc_t.narrow(2, 2, 2).copy_(ratio.log_().div_(v1));
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_meta(const at::Tensor& truths, const at::Tensor& labels,
                                                          const at::Tensor& landmarks, const at::Tensor& num_truths,
                                                          const at::Tensor& priors, double threshold,
                                                          at::ArrayRef<double> variances) {
  const auto sizes = check_match_sizes(truths, labels, landmarks, num_truths, priors, threshold, variances);
  return empty_targets(truths, std::get<2>(sizes));
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, Meta, m) {
  m.impl("match", &match_meta);
}

}  // namespace rfe
