// NMS on the CPU: a greedy pass in score order in which each kept box compares itself
// with the fewer of two candidate sets:
// - the x-window: boxes are also laid out sorted by (class, x1); a box of width at most
//   max_w that overlaps [x1, x2) has its x1 in (x1 - max_w, x2), found by binary
//   search. On sparse boxes it is a small fraction of N;
// - the tail: the boxes after it in score order, the set torchvision's loop compares.
//   Where boxes pile up in x (a column of boxes, one very wide box) the window is most
//   of N and the tail is the smaller.
// Either scan is branch-free so that it vectorises; each writes its own "removed" flags
// (by sweep position or by rank) and a box is removed when either says so.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <vector>

#include "common/radix_sort.h"
#include "nms/nms.h"

namespace rfe {
namespace {

template <typename scalar_t>
void check_finite(const at::Tensor& t, const char* op_name, const char* arg) {
  const at::Tensor values = t.contiguous();
  const scalar_t* data = values.data_ptr<scalar_t>();
  bool finite = true;
  for (int64_t i = 0, n = values.numel(); i < n; ++i) finite &= std::isfinite(data[i]);
  TORCH_CHECK(finite, op_name, ": ", arg, " contains NaN or inf; NMS needs finite values");
}

// Parallel scans only pay off over this many boxes.
constexpr int64_t kScanGrain = 16384;
// Relative and absolute slack of the x-window's lower edge: the window is only a
// prefilter (the IoU decides), so it errs on the wide side of rounding.
constexpr double kWindowRelativeSlack = 1e-6;
constexpr double kWindowAbsoluteSlack = 1e-30;

// Coordinates and areas as columns, so that the scans vectorise.
template <typename scalar_t>
struct BoxColumns {
  std::vector<scalar_t> x1, y1, x2, y2, area;
};

// Boxes in sweep order (by class, then x1).
template <typename scalar_t>
struct SweepBoxes : BoxColumns<scalar_t> {
  std::vector<int32_t> rank;       // position in score order (0 = highest score)
  std::vector<int64_t> position;   // sweep position of box i (original index)
  std::vector<int64_t> run_begin;  // per sweep position: the range of its class
  std::vector<int64_t> run_end;
  std::vector<double> run_max_width;  // per sweep position: widest box of its class
  std::vector<int32_t> run_id;        // per sweep position: its class, numbered 0, 1, ...
};

// Boxes in score order (rank r is the r-th highest score), for the tail scan.
template <typename scalar_t>
struct RankedBoxes : BoxColumns<scalar_t> {
  std::vector<int32_t> cls;  // SweepBoxes::run_id: 32 bits like the coordinates, so that it vectorises
};

// Marks removed every box q in [begin, end) with compare(key[q], key_value) whose IoU
// with box p exceeds the threshold; branch-free so that it vectorises. The window scan
// keys by rank (only boxes ranked after p), the tail scan by class (only p's class).
template <typename scalar_t, typename Compare>
void suppress(const BoxColumns<scalar_t>& s, int64_t p, const int32_t* __restrict key, int32_t key_value,
              Compare compare, scalar_t threshold, int64_t begin, int64_t end, uint8_t* __restrict removed) {
  const scalar_t x1 = s.x1[p], y1 = s.y1[p], x2 = s.x2[p], y2 = s.y2[p], area = s.area[p];
  const scalar_t* __restrict qx1 = s.x1.data();
  const scalar_t* __restrict qy1 = s.y1.data();
  const scalar_t* __restrict qx2 = s.x2.data();
  const scalar_t* __restrict qy2 = s.y2.data();
  const scalar_t* __restrict qarea = s.area.data();
  for (int64_t q = begin; q < end; ++q) {
    const scalar_t iou = box_iou(x1, y1, x2, y2, area, qx1[q], qy1[q], qx2[q], qy2[q], qarea[q]);
    removed[q] |= static_cast<uint8_t>(compare(key[q], key_value) & (iou > threshold));
  }
}

template <typename scalar_t>
RankedBoxes<scalar_t> make_ranked(const SweepBoxes<scalar_t>& sweep, const int64_t* order, int64_t n) {
  RankedBoxes<scalar_t> s;
  for (auto* v : {&s.x1, &s.y1, &s.x2, &s.y2, &s.area}) v->resize(n);
  s.cls.resize(n);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t p = sweep.position[order[r]];
    s.x1[r] = sweep.x1[p];
    s.y1[r] = sweep.y1[p];
    s.x2[r] = sweep.x2[p];
    s.y2[r] = sweep.y2[p];
    s.area[r] = sweep.area[p];
    s.cls[r] = sweep.run_id[p];
  }
  return s;
}

template <typename scalar_t>
SweepBoxes<scalar_t> make_sweep(const scalar_t* boxes, const int64_t* classes, const int64_t* order, int64_t n) {
  std::vector<scalar_t> x1(n);
  for (int64_t i = 0; i < n; ++i) x1[i] = boxes[4 * i];
  std::vector<int64_t> by_x = stable_order(x1.data(), n, /*descending=*/false);
  auto class_of = [&](int64_t i) { return classes ? classes[i] : int64_t(0); };
  if (classes && std::any_of(classes, classes + n, [&](int64_t c) { return c != classes[0]; })) {
    std::stable_sort(by_x.begin(), by_x.end(), [&](int64_t a, int64_t b) { return classes[a] < classes[b]; });
  }

  SweepBoxes<scalar_t> s;
  for (auto* v : {&s.x1, &s.y1, &s.x2, &s.y2, &s.area}) v->resize(n);
  s.rank.resize(n);
  s.position.resize(n);
  s.run_begin.resize(n);
  s.run_end.resize(n);
  s.run_max_width.resize(n);
  s.run_id.resize(n);
  for (int64_t p = 0; p < n; ++p) {
    const scalar_t* b = boxes + 4 * by_x[p];
    s.x1[p] = b[0];
    s.y1[p] = b[1];
    s.x2[p] = b[2];
    s.y2[p] = b[3];
    s.area[p] = box_area(b[0], b[1], b[2], b[3]);
    s.position[by_x[p]] = p;
  }
  for (int64_t r = 0; r < n; ++r) s.rank[s.position[order[r]]] = static_cast<int32_t>(r);
  for (int64_t begin = 0, run = 0; begin < n; ++run) {
    int64_t end = begin;
    double max_width = 0.0;
    while (end < n && class_of(by_x[end]) == class_of(by_x[begin])) {
      max_width = std::max(max_width, double(s.x2[end]) - double(s.x1[end]));
      ++end;
    }
    for (int64_t p = begin; p < end; ++p) {
      s.run_begin[p] = begin;
      s.run_end[p] = end;
      s.run_max_width[p] = max_width;
      s.run_id[p] = static_cast<int32_t>(run);
    }
    begin = end;
  }
  return s;
}

}  // namespace

template <typename scalar_t>
std::vector<int64_t> nms_keep_cpu(const scalar_t* boxes, const scalar_t* scores, const int64_t* classes, int64_t n,
                                  double iou_threshold) {
  const std::vector<int64_t> order = stable_order(scores, n, /*descending=*/true);
  const SweepBoxes<scalar_t> s = make_sweep(boxes, classes, order.data(), n);
  const RankedBoxes<scalar_t> ranked = make_ranked(s, order.data(), n);
  const scalar_t threshold = threshold_as<scalar_t>(iou_threshold);
  const int64_t* order_ptr = order.data();

  std::vector<uint8_t> removed_by_position(n, 0), removed_by_rank(n, 0);
  std::vector<int64_t> keep;
  for (int64_t r = 0; r < n; ++r) {
    const int64_t i = order_ptr[r];
    const int64_t p = s.position[i];
    if (removed_by_position[p] | removed_by_rank[r]) continue;
    keep.push_back(i);

    const scalar_t x1 = s.x1[p], x2 = s.x2[p];
    const double width = s.run_max_width[p];
    const double reach =
        double(x1) - width - kWindowRelativeSlack * (std::abs(double(x1)) + width) - kWindowAbsoluteSlack;
    const scalar_t* run_x1 = s.x1.data();
    const int64_t lo = std::lower_bound(run_x1 + s.run_begin[p], run_x1 + s.run_end[p], reach,
                                        [](scalar_t v, double t) { return double(v) < t; }) -
                       run_x1;
    // Boxes with x1 >= x2 of this one cannot overlap it (exactly, in floating point too).
    const int64_t hi = std::lower_bound(run_x1 + lo, run_x1 + s.run_end[p], x2) - run_x1;

    if (hi - lo <= n - r - 1) {
      uint8_t* removed = removed_by_position.data();
      at::parallel_for(lo, hi, kScanGrain, [&](int64_t begin, int64_t end) {
        suppress(s, p, s.rank.data(), static_cast<int32_t>(r), std::greater<int32_t>(), threshold, begin, end, removed);
      });
    } else {
      uint8_t* removed = removed_by_rank.data();
      at::parallel_for(r + 1, n, kScanGrain, [&](int64_t begin, int64_t end) {
        suppress(ranked, r, ranked.cls.data(), ranked.cls[r], std::equal_to<int32_t>(), threshold, begin, end, removed);
      });
    }
  }
  return keep;
}

template std::vector<int64_t> nms_keep_cpu<float>(const float*, const float*, const int64_t*, int64_t, double);
template std::vector<int64_t> nms_keep_cpu<double>(const double*, const double*, const int64_t*, int64_t, double);

namespace {

template <typename scalar_t>
at::Tensor nms_kernel(const at::Tensor& boxes_in, const at::Tensor& scores_in, const at::Tensor& idxs_in,
                      double iou_threshold) {
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor idxs = idxs_in.defined() ? idxs_in.contiguous() : idxs_in;
  std::vector<int64_t> keep =
      nms_keep_cpu(boxes.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(),
                   idxs.defined() ? idxs.data_ptr<int64_t>() : nullptr, boxes.size(0), iou_threshold);
  return at::from_blob(keep.data(), {static_cast<int64_t>(keep.size())}, at::kLong).clone();
}

at::Tensor nms_dispatch(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs, double iou_threshold,
                        const char* op_name) {
  check_nms_args(boxes, scores, idxs, iou_threshold, op_name);
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble, op_name,
              ": boxes on the CPU must be float32 or float64, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.size(0) < std::numeric_limits<int32_t>::max(), op_name, ": at most 2^31 - 2 boxes, got ",
              boxes.size(0));
  if (boxes.size(0) == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  return AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    check_finite<scalar_t>(boxes, op_name, "boxes");
    check_finite<scalar_t>(scores, op_name, "scores");
    return nms_kernel<scalar_t>(boxes, scores, idxs, iou_threshold);
  });
}

}  // namespace

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_dispatch(boxes, scores, at::Tensor(), iou_threshold, "nms");
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  TORCH_CHECK(idxs.defined(), "batched_nms: idxs is required");
  return nms_dispatch(boxes, scores, idxs, iou_threshold, "batched_nms");
}

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace rfe
