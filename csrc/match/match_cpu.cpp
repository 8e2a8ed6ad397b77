// Batched prior matching on the CPU, exactly the seed's per-image match() for each image.
// Images run in parallel; each is matched and encoded in one pass by one thread, with its
// per-prior state in a small scratch that stays in cache. A prior that does not intersect
// a truth has IoU 0 with it, which changes no first maximum: such pairs are skipped, most
// of them a whole row of priors at a time.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "match/match.h"

namespace rfe {
namespace {

// Priors cut into runs of consecutive priors with one centre row (cy), as RetinaFace's
// priors come (row-major per level); a run whose y-extent misses a truth is skipped
// whole. Any prior order is correct; this one is fast.
// Within a run whose centres are sorted by cx (a grid row), the priors that can meet
// [x1, x2) have cx in (x1 - max_w / 2, x2 + max_w / 2), found by binary search.
template <typename T>
struct PriorRuns {
  std::vector<int64_t> begin;  // run r is [begin[r], begin[r + 1])
  std::vector<T> y1, y2;       // y-extent of the run's boxes
  std::vector<T> half_width;   // widest box of the run, halved
  std::vector<uint8_t> sorted_by_cx;
};

template <typename T>
PriorRuns<T> make_runs(const T* priors, const T* corners, int64_t P) {
  PriorRuns<T> runs;
  for (int64_t p = 0; p < P; ++p) {
    const T* c = corners + 4 * p;
    if (p == 0 || priors[4 * p + 1] != priors[4 * (p - 1) + 1]) {
      runs.begin.push_back(p);
      runs.y1.push_back(c[1]);
      runs.y2.push_back(c[3]);
      runs.half_width.push_back(T(0));
      runs.sorted_by_cx.push_back(1);
    } else if (priors[4 * p] < priors[4 * (p - 1)]) {
      runs.sorted_by_cx.back() = 0;
    }
    runs.y1.back() = min_of(runs.y1.back(), c[1]);
    runs.y2.back() = max_of(runs.y2.back(), c[3]);
    runs.half_width.back() = max_of(runs.half_width.back(), (c[2] - c[0]) / T(2));
  }
  runs.begin.push_back(P);
  return runs;
}

// The x-window of a run is only a prefilter (the IoU decides), so it errs on the wide
// side of rounding: half widths are stretched by this factor, and the edges moved out by
// this fraction of the truth's coordinates.
constexpr double kWindowWidthSlack = 1.001;
constexpr double kWindowRelativeSlack = 1e-6;

// What every image shares: the priors in point form, their areas and rows, and the
// frames that encoding divides by (encoding is (value - origin) / scale).
template <typename T>
struct PriorTable {
  std::vector<T> corners, areas, centre_x, landm_origin, landm_scale;
  std::vector<T> x1, y1, x2, y2;  // the corners again, as columns (for vectorised IoU)
  PriorRuns<T> runs;

  PriorTable(const T* priors, int64_t P, T v0)
      : corners(4 * P), areas(P), centre_x(P), landm_origin(10 * P), landm_scale(10 * P), x1(P), y1(P), x2(P), y2(P) {
    for (int64_t p = 0; p < P; ++p) {
      const T* c = corners.data() + 4 * p;
      prior_corners(priors + 4 * p, corners.data() + 4 * p);
      x1[p] = c[0], y1[p] = c[1], x2[p] = c[2], y2[p] = c[3];
      areas[p] = plain_area(c[0], c[1], c[2], c[3]);
      centre_x[p] = priors[4 * p];
      landmark_frame(priors + 4 * p, v0, landm_origin.data() + 10 * p, landm_scale.data() + 10 * p);
    }
    runs = make_runs(priors, corners.data(), P);
  }
};

// One image's matching state.
template <typename T>
struct Scratch {
  std::vector<int32_t> truth_of_prior;  // best truth per prior, then forced
  std::vector<T> overlap_of_prior;      // its overlap, 2 where forced
  std::vector<int64_t> prior_of_truth;  // best prior per truth
  std::vector<T> ratio;                 // (x2 - x1) / w, (y2 - y1) / h per prior
  std::vector<T> iou;                   // one truth against one window of priors
};

// IoU of truth t (area `area`) with priors [first, last), branch-free so that it
// vectorises. A prior that misses the truth gets IoU 0 exactly, as box_iou gives it.
template <typename T>
void window_iou(const T* t, T area, const PriorTable<T>& table, int64_t first, int64_t last, T* __restrict out) {
  const T* __restrict x1 = table.x1.data(), * __restrict y1 = table.y1.data();
  const T* __restrict x2 = table.x2.data(), * __restrict y2 = table.y2.data();
  const T* __restrict areas = table.areas.data();
  for (int64_t p = first; p < last; ++p)
    out[p - first] = box_iou(t[0], t[1], t[2], t[3], area, x1[p], y1[p], x2[p], y2[p], areas[p]);
}

// Each prior's best truth and each truth's best prior (first maximum both ways, as
// torch.max), then the seed's forcing. Returns whether some truth reaches 0.2.
template <typename T>
bool match_image(const T* truths, int64_t n, const PriorTable<T>& table, int64_t P, Scratch<T>& s) {
  s.truth_of_prior.assign(P, 0);
  s.overlap_of_prior.assign(P, T(0));
  s.prior_of_truth.assign(n, 0);
  const PriorRuns<T>& runs = table.runs;
  const int64_t num_runs = static_cast<int64_t>(runs.begin.size()) - 1;
  bool has_targets = false;
  std::vector<T> best_of_truth(n, T(0));
  for (int64_t g = 0; g < n; ++g) {
    const T* t = truths + 4 * g;
    const T area = plain_area(t[0], t[1], t[2], t[3]);
    T best = T(0);
    int64_t best_prior = 0;
    for (int64_t r = 0; r < num_runs; ++r) {
      if (min_of(t[3], runs.y2[r]) - max_of(t[1], runs.y1[r]) <= T(0)) continue;
      int64_t first = runs.begin[r], last = runs.begin[r + 1];
      if (runs.sorted_by_cx[r]) {  // a generous window: the IoU decides exactly
        const T margin =
            runs.half_width[r] * T(kWindowWidthSlack) + (std::abs(t[0]) + std::abs(t[2])) * T(kWindowRelativeSlack);
        const T* cx = table.centre_x.data();
        first = std::lower_bound(cx + first, cx + last, t[0] - margin) - cx;
        last = std::lower_bound(cx + first, cx + last, t[2] + margin) - cx;
      }
      s.iou.resize(std::max<size_t>(s.iou.size(), last - first));
      window_iou(t, area, table, first, last, s.iou.data());
      for (int64_t p = first; p < last; ++p) {
        const T iou = s.iou[p - first];
        if (iou > best) {
          best = iou;
          best_prior = p;
        }
        if (iou > s.overlap_of_prior[p]) {
          s.overlap_of_prior[p] = iou;
          s.truth_of_prior[p] = static_cast<int32_t>(g);
        }
      }
    }
    s.prior_of_truth[g] = best_prior;
    best_of_truth[g] = best;
  }
  for (int64_t g = 0; g < n; ++g) {
    if (best_of_truth[g] >= static_cast<T>(kMinForcedOverlap)) {
      has_targets = true;
      s.overlap_of_prior[s.prior_of_truth[g]] = static_cast<T>(kForcedOverlap);
    }
  }
  // Every truth, forced or not, claims its best prior; a later truth wins a shared one.
  for (int64_t g = 0; g < n; ++g) s.truth_of_prior[s.prior_of_truth[g]] = static_cast<int32_t>(g);
  return has_targets;
}

// x = (x - origin) / scale elementwise: the landmark encoding of a whole image as one
// loop that the compiler vectorises (its divisions dominate the encoding otherwise).
template <typename T>
void encode_in_place(T* __restrict x, const T* __restrict origin, const T* __restrict scale, int64_t n) {
  for (int64_t k = 0; k < n; ++k) x[k] = encode_coordinate(x[k], origin[k], scale[k]);
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> match_kernel(const at::Tensor& truths_t, const at::Tensor& labels_t,
                                                            const at::Tensor& landmarks_t,
                                                            const at::Tensor& num_truths_t, const at::Tensor& priors_t,
                                                            double threshold_d, at::ArrayRef<double> variances,
                                                            int64_t B, int64_t G, int64_t P) {
  auto [loc_t, conf_t, landm_t] = empty_targets(truths_t, P);
  if (B == 0 || P == 0) return {loc_t, conf_t, landm_t};

  const T* truths = truths_t.data_ptr<T>();
  const T* landmarks = landmarks_t.data_ptr<T>();
  const T* priors = priors_t.data_ptr<T>();
  const int64_t* labels = labels_t.data_ptr<int64_t>();
  const int64_t* num_truths = num_truths_t.data_ptr<int64_t>();
  // Comparisons in T, as torch compares a float32 tensor with a Python float.
  const T threshold = static_cast<T>(threshold_d);
  const T v0 = static_cast<T>(variances[0]);
  const PriorTable<T> table(priors, P, v0);
  T* loc_all = loc_t.data_ptr<T>();
  T* landm_all = landm_t.data_ptr<T>();
  int64_t* conf_all = conf_t.data_ptr<int64_t>();

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s;
    for (int64_t b = begin; b < end; ++b) {
      const T* image_truths = truths + b * G * 4;
      const bool has_targets = match_image(image_truths, num_truths[b], table, P, s);
      T* loc = loc_all + b * P * 4;
      T* landm = landm_all + b * P * 10;
      int64_t* conf = conf_all + b * P;
      s.ratio.resize(2 * P);
      for (int64_t p = 0; p < P; ++p) {
        if (!has_targets) {  // all-zero targets
          std::fill_n(loc + 4 * p, 4, T(0));
          for (int k = 0; k < 10; ++k) landm[10 * p + k] = table.landm_origin[10 * p + k];  // -> 0
          s.ratio[2 * p] = s.ratio[2 * p + 1] = T(1);                                       // log(1) / v1 = 0
          conf[p] = 0;
          continue;
        }
        const int64_t g = s.truth_of_prior[p];
        const T* truth = image_truths + 4 * g;
        conf[p] = s.overlap_of_prior[p] < threshold ? 0 : labels[b * G + g];
        encode_centre(truth, priors + 4 * p, v0, loc + 4 * p);
        encode_size_ratio(truth, priors + 4 * p, s.ratio.data() + 2 * p);
        const T* points = landmarks + (b * G + g) * 10;
        for (int k = 0; k < 10; ++k) landm[10 * p + k] = points[k];  // encoded below
      }
      encode_in_place(landm, table.landm_origin.data(), table.landm_scale.data(), 10 * P);
      // log(ratio) / v1 through ATen's log and division, so that it rounds as torch's do.
      at::from_blob(s.ratio.data(), {2 * P}, truths_t.options()).log_().div_(variances[1]);
      for (int64_t p = 0; p < P; ++p) {
        loc[4 * p + 2] = s.ratio[2 * p];
        loc[4 * p + 3] = s.ratio[2 * p + 1];
      }
    }
  });
  return {loc_t, conf_t, landm_t};
}

template <typename T>
bool all_finite(const T* v, int64_t n) {
  for (int64_t k = 0; k < n; ++k)
    if (!std::isfinite(v[k])) return false;
  return true;
}

// The value checks of the Python wrapper's check=True, in its order and words; on the
// CPU they cost next to nothing, so they always run.
template <typename T>
void check_match_values(const T* truths, const T* landmarks, const T* priors, const int64_t* counts, int64_t B,
                        int64_t G, int64_t P) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < counts[b]; ++g) {
      const T* t = truths + (b * G + g) * 4;
      TORCH_CHECK(all_finite(t, 4), "match: truths[", b, ", ", g, "] = [", t[0], ", ", t[1], ", ", t[2], ", ", t[3],
                  "] is not finite");
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < counts[b]; ++g) {
      const T* t = truths + (b * G + g) * 4;
      TORCH_CHECK(t[2] > t[0] && t[3] > t[1], "match: truths[", b, ", ", g, "] = [", t[0], ", ", t[1], ", ", t[2], ", ",
                  t[3], "] is empty (x2 <= x1 or y2 <= y1)");
    }
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < counts[b]; ++g)
      TORCH_CHECK(all_finite(landmarks + (b * G + g) * 10, 10), "match: landmarks[", b, ", ", g, "] is not finite");
  for (int64_t p = 0; p < P; ++p) {
    const T* q = priors + 4 * p;
    TORCH_CHECK(all_finite(q, 4) && q[2] > 0 && q[3] > 0, "match: priors[", p, "] = [", q[0], ", ", q[1], ", ", q[2],
                ", ", q[3], "] must be finite with w > 0 and h > 0");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_cpu(const at::Tensor& truths, const at::Tensor& labels,
                                                         const at::Tensor& landmarks, const at::Tensor& num_truths,
                                                         const at::Tensor& priors, double threshold,
                                                         at::ArrayRef<double> variances) {
  const auto [B, G, P] = check_match_args(truths, labels, landmarks, num_truths, priors, threshold, variances);
  const at::Tensor counts = num_truths.contiguous();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = counts.data_ptr<int64_t>()[b];
    TORCH_CHECK(n >= 0 && n <= G, "match: num_truths[", b, "] = ", n, " is out of range [0, ", G,
                "] (G = truths.shape[1])");
  }
  return AT_DISPATCH_FLOATING_TYPES(truths.scalar_type(), "match_cpu", [&] {
    const at::Tensor t = truths.contiguous(), l = landmarks.contiguous(), p = priors.contiguous();
    check_match_values(t.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(), p.data_ptr<scalar_t>(),
                       counts.data_ptr<int64_t>(), B, G, P);
    return match_kernel<scalar_t>(t, labels.contiguous(), l, counts, p, threshold, variances, B, G, P);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("match", &match_cpu);
}

}  // namespace rfe
