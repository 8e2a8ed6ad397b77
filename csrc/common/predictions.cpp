#include "common/predictions.h"

namespace rfe {

void check_like_loc(const char* op, const char* name, const at::Tensor& t, const at::Tensor& loc) {
  TORCH_CHECK(t.scalar_type() == loc.scalar_type(), op, ": ", name, " must have the dtype of loc (", loc.scalar_type(),
              "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == loc.device(), op, ": ", name, " must be on the device of loc (", loc.device(), "), got ",
              t.device());
}

std::pair<int64_t, int64_t> check_prediction_shapes(const char* op, const at::Tensor& loc, const char* scores_name,
                                                    const at::Tensor& scores, const at::Tensor& landm,
                                                    const at::Tensor& priors) {
  TORCH_CHECK(priors.dim() == 2 && priors.size(1) == 4, op, ": priors must have shape [P, 4] (cx, cy, w, h), got ",
              priors.sizes());
  const int64_t P = priors.size(0);
  TORCH_CHECK(loc.dim() == 3 && loc.size(1) == P && loc.size(2) == 4, op,
              ": loc must have shape [B, P, 4] with P = ", P, ", got ", loc.sizes());
  const int64_t B = loc.size(0);
  TORCH_CHECK(scores.dim() == 3 && scores.size(0) == B && scores.size(1) == P && scores.size(2) == 2, op, ": ",
              scores_name, " must have shape [B, P, 2] = [", B, ", ", P, ", 2] (background, face), got ",
              scores.sizes());
  TORCH_CHECK(landm.dim() == 3 && landm.size(0) == B && landm.size(1) == P && landm.size(2) == 10, op,
              ": landm must have shape [B, P, 10] = [", B, ", ", P, ", 10], got ", landm.sizes());
  check_like_loc(op, scores_name, scores, loc);
  check_like_loc(op, "landm", landm, loc);
  check_like_loc(op, "priors", priors, loc);
  return {B, P};
}

}  // namespace rfe
