// Box voting on the CPU: boxes sorted by (category, score descending, index); each
// category is one run, voted by one thread (the runs in parallel). A head compares
// itself with the boxes after it in its run that are not yet taken.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "box_vote/box_vote.h"

namespace rfe {
namespace {

// One voted detection: its head, the box and landmarks voted.
template <typename T>
struct Voted {
  int64_t head;
  std::vector<T> values;  // 4 box coordinates, then D landmark coordinates
};

template <typename T>
void check_values(const T* boxes, const T* scores, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T* b = boxes + 4 * i;
    TORCH_CHECK(std::isfinite(b[0]) && std::isfinite(b[1]) && std::isfinite(b[2]) && std::isfinite(b[3]),
                "box_vote: boxes[", i, "] = [", b[0], ", ", b[1], ", ", b[2], ", ", b[3], "] must be finite");
    TORCH_CHECK(std::isfinite(scores[i]) && scores[i] >= T(0), "box_vote: scores[", i, "] = ", scores[i],
                " must be finite and >= 0 (the votes' weights)");
  }
}

// The voted detections of one run (positions [begin, end) of `order`).
template <typename T>
std::vector<Voted<T>> vote_run(const T* boxes, const T* scores, const T* landmarks, int64_t d,
                               const std::vector<int64_t>& order, int64_t begin, int64_t end, T threshold,
                               std::vector<char>& taken) {
  std::vector<Voted<T>> voted;
  std::vector<int64_t> group;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t i = order[p];
    if (taken[i]) continue;
    taken[i] = 1;
    group.assign(1, i);
    const T* head = boxes + 4 * i;
    const T head_area = plain_area(head[0], head[1], head[2], head[3]);
    for (int64_t q = p + 1; q < end; ++q) {
      const int64_t j = order[q];
      const T* box = boxes + 4 * j;
      if (!taken[j] && joins_group(head, head_area, box, plain_area(box[0], box[1], box[2], box[3]), threshold)) {
        taken[j] = 1;
        group.push_back(j);
      }
    }
    std::sort(group.begin(), group.end());  // summed in index order, as the reference
    T total = T(0);
    for (const int64_t j : group) total += scores[j];
    Voted<T> one{i, std::vector<T>(4 + d, T(0))};
    for (int64_t k = 0; k < 4 + d; ++k) {
      const auto value = [&](int64_t j) { return k < 4 ? boxes[4 * j + k] : landmarks[d * j + k - 4]; };
      if (!(total > T(0))) {
        one.values[k] = value(i);
        continue;
      }
      T sum = T(0);
      for (const int64_t j : group) sum += value(j) * scores[j];
      one.values[k] = sum / total;
    }
    voted.push_back(std::move(one));
  }
  return voted;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> box_vote_cpu(const at::Tensor& boxes_in,
                                                                        const at::Tensor& scores_in,
                                                                        const at::Tensor& landmarks_in,
                                                                        const at::Tensor& idxs_in,
                                                                        double iou_threshold) {
  check_box_vote_args(boxes_in, scores_in, landmarks_in, idxs_in, iou_threshold);
  const at::Tensor boxes = boxes_in.contiguous(), scores = scores_in.contiguous();
  const at::Tensor landmarks = landmarks_in.contiguous(), idxs = idxs_in.contiguous();
  const int64_t n = boxes.size(0), d = landmarks.size(1);
  return AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "box_vote_cpu", [&] {
    using T = scalar_t;
    const T *b = boxes.data_ptr<T>(), *s = scores.data_ptr<T>(), *l = landmarks.data_ptr<T>();
    const int64_t* c = idxs.data_ptr<int64_t>();
    check_values(b, s, n);
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return c[x] != c[y] ? c[x] < c[y] : s[x] > s[y]; });
    std::vector<int64_t> runs{0};  // where each category's run begins, then n
    for (int64_t p = 1; p < n; ++p)
      if (c[order[p]] != c[order[p - 1]]) runs.push_back(p);
    runs.push_back(n);
    const int64_t run_count = n == 0 ? 0 : static_cast<int64_t>(runs.size()) - 1;
    std::vector<std::vector<Voted<T>>> per_run(run_count);
    std::vector<char> taken(n, 0);  // each run touches its own boxes only
    at::parallel_for(0, run_count, 1, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r)
        per_run[r] = vote_run(b, s, l, d, order, runs[r], runs[r + 1], static_cast<T>(iou_threshold), taken);
    });
    int64_t k = 0;
    for (const auto& run : per_run) k += static_cast<int64_t>(run.size());
    at::Tensor out_boxes = at::empty({k, 4}, boxes.options()), out_scores = at::empty({k}, scores.options());
    at::Tensor out_landmarks = at::empty({k, d}, landmarks.options()), out_idxs = at::empty({k}, idxs.options());
    T *ob = out_boxes.data_ptr<T>(), *os = out_scores.data_ptr<T>(), *ol = out_landmarks.data_ptr<T>();
    int64_t* oc = out_idxs.data_ptr<int64_t>();
    int64_t row = 0;
    for (const auto& run : per_run) {
      for (const Voted<T>& one : run) {
        std::copy(one.values.begin(), one.values.begin() + 4, ob + 4 * row);
        std::copy(one.values.begin() + 4, one.values.end(), ol + d * row);
        os[row] = s[one.head];
        oc[row] = c[one.head];
        ++row;
      }
    }
    return std::make_tuple(out_boxes, out_scores, out_landmarks, out_idxs);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("box_vote", &box_vote_cpu);
}

}  // namespace rfe
