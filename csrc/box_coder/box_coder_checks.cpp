#include <ATen/ATen.h>

#include "box_coder/box_coder.h"
#include "common/predictions.h"

namespace rfe {

Candidates select_candidates(const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landm,
                             const at::Tensor& priors, at::ArrayRef<double> variances, double score_threshold) {
  TORCH_CHECK(at::isFloatingType(loc.scalar_type()), "decode_detections: loc must be a floating point tensor, got ",
              loc.scalar_type());
  const int64_t P = check_prediction_shapes("decode_detections", loc, "conf", conf, landm, priors).second;
  TORCH_CHECK(variances.size() == 2, "decode_detections: variances must hold 2 numbers, got ", variances.size());
  const at::Tensor face = conf.select(2, 1);
  const at::Tensor pairs = at::nonzero(face > score_threshold);  // [K, 2], image-then-prior order
  Candidates c;
  c.image_index = pairs.select(1, 0).clone();  // clones: two views of one buffer would alias
  c.prior_index = pairs.select(1, 1).clone();
  c.scores = face.reshape({-1}).index_select(0, c.image_index * P + c.prior_index);
  return c;
}

}  // namespace rfe
