#include <ATen/ATen.h>

#include "box_coder/box_coder.h"

namespace rfe {

Candidates select_candidates(const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landm,
                             const at::Tensor& priors, at::ArrayRef<double> variances,
                             double score_threshold) {
  TORCH_CHECK(priors.dim() == 2 && priors.size(1) == 4,
              "decode_detections: priors must have shape [P, 4] (cx, cy, w, h), got ", priors.sizes());
  const int64_t P = priors.size(0);
  TORCH_CHECK(loc.dim() == 3 && loc.size(1) == P && loc.size(2) == 4,
              "decode_detections: loc must have shape [B, P, 4] with P = ", P, ", got ", loc.sizes());
  const int64_t B = loc.size(0);
  TORCH_CHECK(conf.dim() == 3 && conf.size(0) == B && conf.size(1) == P && conf.size(2) == 2,
              "decode_detections: conf must have shape [B, P, 2] = [", B, ", ", P,
              ", 2] (background, face probabilities), got ", conf.sizes());
  TORCH_CHECK(landm.dim() == 3 && landm.size(0) == B && landm.size(1) == P && landm.size(2) == 10,
              "decode_detections: landm must have shape [B, P, 10] = [", B, ", ", P, ", 10], got ",
              landm.sizes());
  TORCH_CHECK(at::isFloatingType(loc.scalar_type()),
              "decode_detections: loc must be a floating point tensor, got ", loc.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"conf", conf},
                                {"landm", landm}, {"priors", priors}}) {
    TORCH_CHECK(t.scalar_type() == loc.scalar_type(), "decode_detections: ", name,
                " must have the dtype of loc (", loc.scalar_type(), "), got ", t.scalar_type());
    TORCH_CHECK(t.device() == loc.device(), "decode_detections: ", name,
                " must be on the device of loc (", loc.device(), "), got ", t.device());
  }
  TORCH_CHECK(variances.size() == 2, "decode_detections: variances must hold 2 numbers, got ",
              variances.size());
  const at::Tensor face = conf.select(2, 1);
  const at::Tensor pairs = at::nonzero(face > score_threshold);  // [K, 2], image-then-prior order
  Candidates c;
  c.image_index = pairs.select(1, 0).clone();  // clones: two views of one buffer would alias
  c.prior_index = pairs.select(1, 1).clone();
  c.scores = face.reshape({-1}).index_select(0, c.image_index * P + c.prior_index);
  return c;
}

}  // namespace rfe
