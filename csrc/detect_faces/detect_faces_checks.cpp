#include <ATen/ATen.h>

#include "common/predictions.h"
#include "detect_faces/detect_faces.h"

namespace rfe {

void check_detect_faces_args(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& landm,
                             const at::Tensor& priors, const c10::optional<at::Tensor>& inside,
                             const c10::optional<at::Tensor>& factor, int64_t canvas_height, int64_t canvas_width,
                             at::ArrayRef<double> variances, double score_threshold, int64_t top_k,
                             double nms_threshold, int64_t keep_top_k) {
  TORCH_CHECK(loc.scalar_type() == at::kFloat || loc.scalar_type() == at::kDouble,
              "detect_faces: loc must be float32 or float64, got ", loc.scalar_type());
  const auto [B, P] = check_prediction_shapes("detect_faces", loc, "logits", logits, landm, priors);
  if (inside.has_value()) {
    TORCH_CHECK(inside->dim() == 2 && inside->size(0) == B && inside->size(1) == P,
                "detect_faces: inside must have shape [B, P] = [", B, ", ", P, "], got ", inside->sizes());
    check_like_loc("detect_faces", "inside", *inside, loc);
  }
  if (factor.has_value()) {
    TORCH_CHECK(factor->dim() == 1 && factor->size(0) == B, "detect_faces: factor must have shape [B] = [", B,
                "], got ", factor->sizes());
    check_like_loc("detect_faces", "factor", *factor, loc);
  }
  TORCH_CHECK(canvas_height > 0 && canvas_width > 0, "detect_faces: the canvas size must be positive, got ",
              canvas_height, "x", canvas_width);
  TORCH_CHECK(variances.size() == 2, "detect_faces: variances must hold 2 numbers, got ", variances.size());
  TORCH_CHECK(score_threshold >= 0.0 && score_threshold <= 1.0, "detect_faces: score_threshold must be in [0, 1], got ",
              score_threshold);
  TORCH_CHECK(nms_threshold >= 0.0 && nms_threshold <= 1.0, "detect_faces: nms_threshold must be in [0, 1], got ",
              nms_threshold);
  TORCH_CHECK(top_k >= 1 && keep_top_k >= 1, "detect_faces: top_k and keep_top_k must be at least 1, got ", top_k,
              " and ", keep_top_k);
}

at::Tensor face_scores(const at::Tensor& logits, const c10::optional<at::Tensor>& inside) {
  at::Tensor face = at::sigmoid(logits.select(2, 1) - logits.select(2, 0));
  return inside.has_value() ? face * *inside : face;
}

}  // namespace rfe
