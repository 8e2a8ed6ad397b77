// Batched prior matching on the CPU, exactly the seed's per-image match() for each image.
// Work items are (image, chunk of priors), run in parallel. A prior that does not
// intersect a truth has IoU 0 with it, which changes no first-maximum: such pairs are
// skipped after the cheap intersection test, which is most pairs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "match/match.h"

namespace rfe {
namespace {

constexpr int64_t kPriorChunk = 2048;

// The per-prior match state lives in the output buffers until the encoding overwrites
// it, prior by prior: fresh megabytes cost page faults, and this op returns ~35 MB for a
// batch of 32 at 640x640. truth_of_prior[i] is conf_t[i]; overlap_of_prior[i] is
// size_ratio[2 * i] (hence the stride 2 below).
template <typename T>
struct ImageMatch {
  int64_t* truth_of_prior;              // [B * P] best truth per prior, then forced
  T* overlap_of_prior;                  // [B * P] (stride 2) its overlap, 2 where forced
  std::vector<int64_t> prior_of_truth;  // [B * chunks * G] per-chunk best prior per truth
  std::vector<T> overlap_of_truth;      // [B * chunks * G]
  std::vector<uint8_t> has_targets;     // [B] some truth reaches kMinForcedOverlap
};

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

// For runs [r0, r1) of one image: each prior's best truth, and each truth's best prior
// in this range (first maximum both ways, as torch.max).
template <typename T>
void best_overlaps(const T* truths, int64_t n, const T* centre_x, const T* corners, const T* areas,
                   const PriorRuns<T>& runs, int64_t r0, int64_t r1, int64_t* truth_of_prior,
                   T* overlap_of_prior, int64_t* prior_of_truth, T* overlap_of_truth) {
  const int64_t p0 = runs.begin[r0], p1 = runs.begin[r1];
  for (int64_t p = p0; p < p1; ++p) {
    truth_of_prior[p] = 0;
    overlap_of_prior[2 * p] = T(0);
  }
  for (int64_t g = 0; g < n; ++g) {
    const T* t = truths + 4 * g;
    const T area = plain_area(t[0], t[1], t[2], t[3]);
    T best = T(0);
    int64_t best_prior = p0;
    for (int64_t r = r0; r < r1; ++r) {
      if (min_of(t[3], runs.y2[r]) - max_of(t[1], runs.y1[r]) <= T(0)) continue;
      int64_t first = runs.begin[r], last = runs.begin[r + 1];
      if (runs.sorted_by_cx[r]) {  // a generous window: the tests below decide exactly
        const T margin = runs.half_width[r] * T(1.001) + (std::abs(t[0]) + std::abs(t[2])) * T(1e-6);
        const T lo = t[0] - margin, hi = t[2] + margin;
        first = std::lower_bound(centre_x + first, centre_x + last, lo) - centre_x;
        last = std::lower_bound(centre_x + first, centre_x + last, hi) - centre_x;
      }
      for (int64_t p = first; p < last; ++p) {
        const T* c = corners + 4 * p;
        if (min_of(t[2], c[2]) - max_of(t[0], c[0]) <= T(0)) continue;  // IoU 0
        if (min_of(t[3], c[3]) - max_of(t[1], c[1]) <= T(0)) continue;
        const T iou = box_iou(t[0], t[1], t[2], t[3], area, c[0], c[1], c[2], c[3], areas[p]);
        if (iou > best) {
          best = iou;
          best_prior = p;
        }
        if (iou > overlap_of_prior[2 * p]) {
          overlap_of_prior[2 * p] = iou;
          truth_of_prior[p] = g;
        }
      }
    }
    prior_of_truth[g] = best_prior;
    overlap_of_truth[g] = best;
  }
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> match_kernel(
    const at::Tensor& truths_t, const at::Tensor& labels_t, const at::Tensor& landms_t,
    const at::Tensor& num_truths_t, const at::Tensor& priors_t, double threshold_d,
    at::ArrayRef<double> variances, int64_t B, int64_t G, int64_t P) {
  auto [loc_t, conf_t, landm_t] = empty_targets(truths_t, P);
  at::Tensor size_ratio = at::empty({B, P, 2}, truths_t.options());
  if (B == 0 || P == 0) return {loc_t, conf_t, landm_t};

  const T* truths = truths_t.data_ptr<T>();
  const T* landms = landms_t.data_ptr<T>();
  const T* priors = priors_t.data_ptr<T>();
  const int64_t* labels = labels_t.data_ptr<int64_t>();
  const int64_t* num_truths = num_truths_t.data_ptr<int64_t>();
  // Comparisons in T, as torch compares a float32 tensor with a Python float.
  const T threshold = static_cast<T>(threshold_d), min_forced = static_cast<T>(kMinForcedOverlap);
  const T v0 = static_cast<T>(variances[0]);

  std::vector<T> corners(4 * P), areas(P), centre_x(P);
  for (int64_t p = 0; p < P; ++p) {
    centre_x[p] = priors[4 * p];
    prior_corners(priors + 4 * p, corners.data() + 4 * p);
    const T* c = corners.data() + 4 * p;
    areas[p] = plain_area(c[0], c[1], c[2], c[3]);
  }

  // Work items: (image, chunk of whole runs of about kPriorChunk priors).
  const PriorRuns<T> runs = make_runs(priors, corners.data(), P);
  std::vector<int64_t> chunk_runs{0};  // chunk c is runs [chunk_runs[c], chunk_runs[c + 1])
  for (int64_t r = 1; r < static_cast<int64_t>(runs.begin.size()) - 1; ++r)
    if (runs.begin[r] - runs.begin[chunk_runs.back()] >= kPriorChunk) chunk_runs.push_back(r);
  chunk_runs.push_back(static_cast<int64_t>(runs.begin.size()) - 1);
  const int64_t chunks = static_cast<int64_t>(chunk_runs.size()) - 1;
  ImageMatch<T> m;
  m.truth_of_prior = conf_t.data_ptr<int64_t>();
  m.overlap_of_prior = size_ratio.data_ptr<T>();
  m.prior_of_truth.resize(B * chunks * std::max<int64_t>(G, 1));
  m.overlap_of_truth.resize(B * chunks * std::max<int64_t>(G, 1));
  m.has_targets.assign(B, 0);

  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / chunks, chunk = item % chunks;
      best_overlaps(truths + b * G * 4, num_truths[b], centre_x.data(), corners.data(), areas.data(), runs,
                    chunk_runs[chunk], chunk_runs[chunk + 1],
                    m.truth_of_prior + b * P, m.overlap_of_prior + 2 * b * P,
                    m.prior_of_truth.data() + item * G, m.overlap_of_truth.data() + item * G);
    }
  });

  // Per image: each truth's best prior over all chunks, then the seed's forcing.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> best_prior(G);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = num_truths[b];
      std::vector<T> best(n, T(-1));
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const int64_t item = b * chunks + chunk;
        for (int64_t g = 0; g < n; ++g) {
          if (m.overlap_of_truth[item * G + g] > best[g]) {  // earlier chunk wins ties
            best[g] = m.overlap_of_truth[item * G + g];
            best_prior[g] = m.prior_of_truth[item * G + g];
          }
        }
      }
      T* overlap = m.overlap_of_prior + 2 * b * P;
      int64_t* truth_of = m.truth_of_prior + b * P;
      for (int64_t g = 0; g < n; ++g) {
        if (best[g] >= min_forced) {
          m.has_targets[b] = 1;
          overlap[2 * best_prior[g]] = static_cast<T>(kForcedOverlap);
        }
      }
      // Every truth, forced or not, claims its best prior; a later truth wins a shared one.
      for (int64_t g = 0; g < n; ++g) truth_of[best_prior[g]] = g;
    }
  });

  T* loc = loc_t.data_ptr<T>();
  T* landm = landm_t.data_ptr<T>();
  int64_t* conf = conf_t.data_ptr<int64_t>();
  T* ratio = size_ratio.data_ptr<T>();
  auto encode_priors = [&](int64_t b, int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t i = b * P + p;
      if (!m.has_targets[b]) {  // all-zero targets
        std::fill_n(loc + 4 * i, 4, T(0));
        std::fill_n(ratio + 2 * i, 2, T(1));  // log(1) / v1 = 0
        std::fill_n(landm + 10 * i, 10, T(0));
        conf[i] = 0;
        continue;
      }
      const int64_t g = m.truth_of_prior[i];  // read before conf[i] overwrites it
      const T* truth = truths + (b * G + g) * 4;
      conf[i] = m.overlap_of_prior[2 * i] < threshold ? 0 : labels[b * G + g];
      encode_centre(truth, priors + 4 * p, v0, loc + 4 * i);
      encode_size_ratio(truth, priors + 4 * p, ratio + 2 * i);
      encode_landmarks(landms + (b * G + g) * 10, priors + 4 * p, v0, landm + 10 * i);
    }
  };
  const int64_t blocks = (P + kPriorChunk - 1) / kPriorChunk;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / blocks, p0 = (item % blocks) * kPriorChunk;
      encode_priors(b, p0, std::min(P, p0 + kPriorChunk));
    }
  });
  finish_size_encoding(loc_t, size_ratio, variances[1]);
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
void check_match_values(const T* truths, const T* landms, const T* priors, const int64_t* counts,
                        int64_t B, int64_t G, int64_t P) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < counts[b]; ++g) {
      const T* t = truths + (b * G + g) * 4;
      TORCH_CHECK(all_finite(t, 4), "match: truths[", b, ", ", g, "] = [", t[0], ", ", t[1], ", ",
                  t[2], ", ", t[3], "] is not finite");
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < counts[b]; ++g) {
      const T* t = truths + (b * G + g) * 4;
      TORCH_CHECK(t[2] > t[0] && t[3] > t[1], "match: truths[", b, ", ", g, "] = [", t[0], ", ",
                  t[1], ", ", t[2], ", ", t[3], "] is empty (x2 <= x1 or y2 <= y1)");
    }
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < counts[b]; ++g)
      TORCH_CHECK(all_finite(landms + (b * G + g) * 10, 10), "match: landms[", b, ", ", g,
                  "] is not finite");
  for (int64_t p = 0; p < P; ++p) {
    const T* q = priors + 4 * p;
    TORCH_CHECK(all_finite(q, 4) && q[2] > 0 && q[3] > 0, "match: priors[", p, "] = [", q[0], ", ",
                q[1], ", ", q[2], ", ", q[3], "] must be finite with w > 0 and h > 0");
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> match_cpu(
    const at::Tensor& truths, const at::Tensor& labels, const at::Tensor& landms,
    const at::Tensor& num_truths, const at::Tensor& priors, double threshold,
    at::ArrayRef<double> variances) {
  const auto [B, G, P] = check_match_args(truths, labels, landms, num_truths, priors, variances);
  const at::Tensor counts = num_truths.contiguous();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = counts.data_ptr<int64_t>()[b];
    TORCH_CHECK(n >= 0 && n <= G, "match: num_truths[", b, "] = ", n, " is out of range [0, ", G,
                "] (G = truths.shape[1])");
  }
  return AT_DISPATCH_FLOATING_TYPES(truths.scalar_type(), "match_cpu", [&] {
    const at::Tensor t = truths.contiguous(), l = landms.contiguous(), p = priors.contiguous();
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
