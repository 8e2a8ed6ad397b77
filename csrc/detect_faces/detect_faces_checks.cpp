#include <ATen/ATen.h>

#include "detect_faces/detect_faces.h"

namespace rfe {

void check_detect_faces_args(const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& landm,
                             const at::Tensor& priors, const c10::optional<at::Tensor>& inside,
                             const c10::optional<at::Tensor>& factor, int64_t canvas_height, int64_t canvas_width,
                             at::ArrayRef<double> variances, double score_threshold, int64_t top_k,
                             double nms_threshold, int64_t keep_top_k) {
  TORCH_CHECK(priors.dim() == 2 && priors.size(1) == 4,
              "detect_faces: priors must have shape [P, 4] (cx, cy, w, h), got ", priors.sizes());
  const int64_t P = priors.size(0);
  TORCH_CHECK(loc.dim() == 3 && loc.size(1) == P && loc.size(2) == 4,
              "detect_faces: loc must have shape [B, P, 4] with P = ", P, ", got ", loc.sizes());
  const int64_t B = loc.size(0);
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == B && logits.size(1) == P && logits.size(2) == 2,
              "detect_faces: logits must have shape [B, P, 2] = [", B, ", ", P, ", 2] (background, face), got ",
              logits.sizes());
  TORCH_CHECK(landm.dim() == 3 && landm.size(0) == B && landm.size(1) == P && landm.size(2) == 10,
              "detect_faces: landm must have shape [B, P, 10] = [", B, ", ", P, ", 10], got ", landm.sizes());
  TORCH_CHECK(loc.scalar_type() == at::kFloat || loc.scalar_type() == at::kDouble,
              "detect_faces: loc must be float32 or float64, got ", loc.scalar_type());
  auto same_kind = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.scalar_type() == loc.scalar_type(), "detect_faces: ", name, " must have the dtype of loc (",
                loc.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(t.device() == loc.device(), "detect_faces: ", name, " must be on the device of loc (",
                loc.device(), "), got ", t.device());
  };
  same_kind("logits", logits);
  same_kind("landm", landm);
  same_kind("priors", priors);
  if (inside.has_value()) {
    TORCH_CHECK(inside->dim() == 2 && inside->size(0) == B && inside->size(1) == P,
                "detect_faces: inside must have shape [B, P] = [", B, ", ", P, "], got ", inside->sizes());
    same_kind("inside", *inside);
  }
  if (factor.has_value()) {
    TORCH_CHECK(factor->dim() == 1 && factor->size(0) == B, "detect_faces: factor must have shape [B] = [", B,
                "], got ", factor->sizes());
    same_kind("factor", *factor);
  }
  TORCH_CHECK(canvas_height > 0 && canvas_width > 0, "detect_faces: the canvas size must be positive, got ",
              canvas_height, "x", canvas_width);
  TORCH_CHECK(variances.size() == 2, "detect_faces: variances must hold 2 numbers, got ", variances.size());
  TORCH_CHECK(score_threshold >= 0.0 && score_threshold <= 1.0,
              "detect_faces: score_threshold must be in [0, 1], got ", score_threshold);
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
