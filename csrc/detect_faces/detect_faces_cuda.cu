// detect_faces on CUDA: the PyTorch reference's steps as ATen ops around our CUDA
// decode_detections and batched_nms (no kernel of its own: every step is already a
// parallel kernel; what the CPU version saves, Python's per-op cost, is gone here too).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "detect_faces/detect_faces.h"

namespace rfe {
namespace {

using Decoded = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Decoded decode_detections(const at::Tensor& loc, const at::Tensor& conf, const at::Tensor& landm,
                          const at::Tensor& priors, at::ArrayRef<double> variances, double score_threshold) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("retinaface_ext::decode_detections", "")
                       .typed<Decoded(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      at::ArrayRef<double>, double)>();
  return op.call(loc, conf, landm, priors, variances, score_threshold);
}

at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double threshold) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("retinaface_ext::batched_nms", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>();
  return op.call(boxes, scores, idxs, threshold);
}

// Per image of `image` [K] (in 0..B-1, sorted), the rank of each row within its image.
at::Tensor rank_in_image(const at::Tensor& image, int64_t B, at::Tensor* counts) {
  *counts = at::zeros({B}, image.options()).index_add_(0, image, at::ones_like(image));
  const at::Tensor starts = at::cumsum(*counts, 0) - *counts;
  return at::arange(image.size(0), image.options()) - starts.index_select(0, image);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect_faces_cuda(
    const at::Tensor& loc, const at::Tensor& logits, const at::Tensor& landm, const at::Tensor& priors,
    const c10::optional<at::Tensor>& inside, const c10::optional<at::Tensor>& factor, int64_t canvas_height,
    int64_t canvas_width, at::ArrayRef<double> variances, double score_threshold, int64_t top_k, double nms_threshold,
    int64_t keep_top_k) {
  check_detect_faces_args(loc, logits, landm, priors, inside, factor, canvas_height, canvas_width, variances,
                          score_threshold, top_k, nms_threshold, keep_top_k);
  c10::cuda::CUDAGuard guard(loc.device());
  const int64_t B = loc.size(0);
  const at::Tensor face = face_scores(logits, inside);
  auto [boxes, scores, points, image, prior] =
      decode_detections(loc, at::stack({1 - face, face}, -1), landm, priors, variances, score_threshold);
  const double w = static_cast<double>(canvas_width), h = static_cast<double>(canvas_height);
  boxes = boxes * at::tensor({w, h, w, h}, boxes.options().device(at::kCPU)).to(boxes.device());
  points = points * at::tensor({w, h, w, h, w, h, w, h, w, h}, points.options().device(at::kCPU)).to(points.device());
  if (factor.has_value()) {
    const at::Tensor divisor = factor->index_select(0, image).unsqueeze(1);
    boxes = boxes / divisor;
    points = points / divisor;
  }
  // Images whose scores or candidates are not finite keep nothing (NMS cannot order NaN).
  const at::Tensor bad_scores = at::logical_not(at::isfinite(face).all(1));
  const at::Tensor bad_rows = at::logical_not(at::isfinite(boxes).all(1).logical_and(at::isfinite(points).all(1)));
  const at::Tensor bad_candidates = at::zeros({B}, image.options()).index_add_(0, image, bad_rows.to(at::kLong)) > 0;
  const at::Tensor usable = at::logical_not(bad_scores.logical_or(bad_candidates)).index_select(0, image);
  const at::Tensor rows = at::nonzero(usable).squeeze(1);
  boxes = boxes.index_select(0, rows);
  scores = scores.index_select(0, rows);
  points = points.index_select(0, rows);
  image = image.index_select(0, rows);
  at::Tensor counts;
  if (boxes.size(0) > top_k) {  // the top_k best of each image (candidates come by image)
    const at::Tensor order = at::argsort(scores, /*stable=*/true, /*dim=*/0, /*descending=*/true);
    const at::Tensor by_image = order.index_select(0, at::argsort(image.index_select(0, order), /*stable=*/true));
    const at::Tensor best = by_image.index_select(
        0, at::nonzero(rank_in_image(image.index_select(0, by_image), B, &counts) < top_k).squeeze(1));
    boxes = boxes.index_select(0, best);
    scores = scores.index_select(0, best);
    points = points.index_select(0, best);
    image = image.index_select(0, best);
  }
  at::Tensor keep = batched_nms(boxes, scores, image, nms_threshold);
  keep = keep.index_select(0, at::argsort(image.index_select(0, keep), /*stable=*/true));
  keep =
      keep.index_select(0, at::nonzero(rank_in_image(image.index_select(0, keep), B, &counts) < keep_top_k).squeeze(1));
  counts = at::clamp_max(counts, keep_top_k);
  counts = at::where(bad_scores, kNonFiniteScores, at::where(bad_candidates, kNonFiniteCandidates, counts));
  return {boxes.index_select(0, keep), scores.index_select(0, keep), points.index_select(0, keep), counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("detect_faces", &detect_faces_cuda);
}

}  // namespace rfe
