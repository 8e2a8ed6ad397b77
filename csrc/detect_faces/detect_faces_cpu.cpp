// detect_faces on the CPU: each image in one pass of its own. The face scores are
// computed prior by prior, the candidates above the threshold decoded straight into
// pixels, the top_k best go through NMS, and the first keep_top_k survivors are kept.
// No torch op runs inside: right after a forward pass has flushed the caches, each
// distinct torch op costs tens of microseconds of cold code (measured), and this op
// replaced about thirty of them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/box_math.h"
#include "common/radix_sort.h"
#include "detect_faces/detect_faces.h"
#include "nms/nms.h"

namespace rfe {
namespace {

template <typename T>
struct ImageDetections {
  std::vector<T> boxes, scores, landmarks;  // [n, 4], [n], [n, 10]
  int64_t count = 0;                        // n, or a kNonFinite* code
};

template <typename T>
struct ImageInputs {
  const T *loc, *logits, *landm, *priors, *inside;  // [P, 4], [P, 2], [P, 10], [P, 4], [P] or null
  int64_t num_priors;
  T width, height, factor;  // canvas size; the image's resize factor (1: none)
  bool divide;              // whether to divide by factor
};

template <typename T>
ImageDetections<T> detect_image(const ImageInputs<T>& in, T v0, T v1, T score_threshold, int64_t top_k,
                                double nms_threshold, int64_t keep_top_k) {
  ImageDetections<T> out;
  std::vector<int64_t> prior;
  std::vector<T> face_of;
  bool finite = true;
  // Most priors are far below the threshold: where the logit difference says so (with a
  // margin far above rounding), the exponential is skipped.
  const bool shortcut = score_threshold > 1e-6 && score_threshold < 0.999;
  const double below = shortcut ? std::log(double(score_threshold)) - std::log1p(-double(score_threshold)) - 0.01
                                : -std::numeric_limits<double>::infinity();
  for (int64_t p = 0; p < in.num_priors; ++p) {
    const T background = in.logits[2 * p], foreground = in.logits[2 * p + 1];
    const T mask = in.inside ? in.inside[p] : T(1);
    if (mask == T(1) && double(foreground - background) < below) continue;  // false for NaN
    const T face = mask * face_score(background, foreground);
    finite &= std::isfinite(face);
    if (face > score_threshold) {
      prior.push_back(p);
      face_of.push_back(face);
    }
  }
  if (!finite) {
    out.count = kNonFiniteScores;
    return out;
  }
  // The candidates in pixels: decoded as decode_detections does, then scaled and
  // divided in the order (and so with the roundings) of the PyTorch reference.
  const int64_t n = static_cast<int64_t>(prior.size());
  std::vector<T> boxes(4 * n), landmarks(10 * n), scores(n);
  auto exp_fn = [](T x) { return std::exp(x); };
  for (int64_t k = 0; k < n; ++k) {
    const int64_t p = prior[k];
    T* box = boxes.data() + 4 * k;
    T* points = landmarks.data() + 10 * k;
    decode_box(in.loc + 4 * p, in.priors + 4 * p, v0, v1, exp_fn, box);
    decode_landmarks(in.landm + 10 * p, in.priors + 4 * p, v0, points);
    for (int j = 0; j < 4; ++j) box[j] = mul_rn(box[j], j % 2 ? in.height : in.width);
    for (int j = 0; j < 10; ++j) points[j] = mul_rn(points[j], j % 2 ? in.height : in.width);
    if (in.divide) {
      for (int j = 0; j < 4; ++j) box[j] /= in.factor;
      for (int j = 0; j < 10; ++j) points[j] /= in.factor;
    }
    bool row_finite = true;
    for (int j = 0; j < 4; ++j) row_finite &= std::isfinite(box[j]);
    for (int j = 0; j < 10; ++j) row_finite &= std::isfinite(points[j]);
    finite &= row_finite;
    scores[k] = face_of[k];
  }
  if (!finite) {
    out.count = kNonFiniteCandidates;
    return out;
  }
  // The top_k best (by score, ties in prior order), in that order, for NMS.
  std::vector<int64_t> listed;
  if (n > top_k) {
    listed = stable_order(scores.data(), n, /*descending=*/true);
    listed.resize(top_k);
    std::vector<T> top_boxes(4 * top_k), top_scores(top_k);
    for (int64_t i = 0; i < top_k; ++i) {
      std::copy_n(boxes.data() + 4 * listed[i], 4, top_boxes.data() + 4 * i);
      top_scores[i] = scores[listed[i]];
    }
    std::vector<int64_t> keep = nms_keep_cpu(top_boxes.data(), top_scores.data(), nullptr, top_k, nms_threshold);
    for (int64_t& i : keep) i = listed[i];
    listed.swap(keep);
  } else {
    listed = nms_keep_cpu(boxes.data(), scores.data(), nullptr, n, nms_threshold);
  }
  if (static_cast<int64_t>(listed.size()) > keep_top_k) listed.resize(keep_top_k);
  out.count = static_cast<int64_t>(listed.size());
  out.boxes.resize(4 * out.count);
  out.landmarks.resize(10 * out.count);
  out.scores.resize(out.count);
  for (int64_t i = 0; i < out.count; ++i) {
    std::copy_n(boxes.data() + 4 * listed[i], 4, out.boxes.data() + 4 * i);
    std::copy_n(landmarks.data() + 10 * listed[i], 10, out.landmarks.data() + 10 * i);
    out.scores[i] = scores[listed[i]];
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> detect_faces_cpu(
    const at::Tensor& loc_in, const at::Tensor& logits, const at::Tensor& landm_in, const at::Tensor& priors_in,
    const c10::optional<at::Tensor>& inside, const c10::optional<at::Tensor>& factor_in, int64_t canvas_height,
    int64_t canvas_width, at::ArrayRef<double> variances, double score_threshold, int64_t top_k, double nms_threshold,
    int64_t keep_top_k) {
  check_detect_faces_args(loc_in, logits, landm_in, priors_in, inside, factor_in, canvas_height, canvas_width,
                          variances, score_threshold, top_k, nms_threshold, keep_top_k);
  const at::Tensor loc = loc_in.contiguous(), landm = landm_in.contiguous(), priors = priors_in.contiguous();
  const at::Tensor scores_in = logits.contiguous();
  const at::Tensor mask = inside.has_value() ? inside->contiguous() : at::Tensor();
  const at::Tensor factor = factor_in.has_value() ? factor_in->contiguous() : at::Tensor();
  const int64_t B = loc.size(0), P = priors.size(0);
  at::Tensor counts = at::empty({B}, loc.options().dtype(at::kLong));
  at::Tensor boxes, scores, landmarks;
  AT_DISPATCH_FLOATING_TYPES(loc.scalar_type(), "detect_faces_cpu", [&] {
    using T = scalar_t;
    std::vector<ImageDetections<T>> images(B);
    // Images in parallel; one image runs on this thread (grain 2), which keeps torch's
    // workers asleep for the onnxruntime engine (see image_planes_cpu.cpp).
    at::parallel_for(0, B, 2, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const ImageInputs<T> in{loc.data_ptr<T>() + b * P * 4,
                                scores_in.data_ptr<T>() + b * P * 2,
                                landm.data_ptr<T>() + b * P * 10,
                                priors.data_ptr<T>(),
                                mask.defined() ? mask.data_ptr<T>() + b * P : nullptr,
                                P,
                                static_cast<T>(canvas_width),
                                static_cast<T>(canvas_height),
                                factor.defined() ? factor.data_ptr<T>()[b] : T(1),
                                factor.defined()};
        images[b] = detect_image(in, static_cast<T>(variances[0]), static_cast<T>(variances[1]),
                                 static_cast<T>(score_threshold), top_k, nms_threshold, keep_top_k);
      }
    });
    int64_t total = 0;
    for (const auto& image : images) total += std::max<int64_t>(image.count, 0);
    boxes = at::empty({total, 4}, loc.options());
    scores = at::empty({total}, loc.options());
    landmarks = at::empty({total, 10}, loc.options());
    T *box_out = boxes.data_ptr<T>(), *score_out = scores.data_ptr<T>(), *landmark_out = landmarks.data_ptr<T>();
    int64_t* count_out = counts.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const ImageDetections<T>& image = images[b];
      count_out[b] = image.count;
      box_out = std::copy(image.boxes.begin(), image.boxes.end(), box_out);
      score_out = std::copy(image.scores.begin(), image.scores.end(), score_out);
      landmark_out = std::copy(image.landmarks.begin(), image.landmarks.end(), landmark_out);
    }
  });
  return {boxes, scores, landmarks, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("detect_faces", &detect_faces_cpu);
}

}  // namespace rfe
