#pragma once
// A stable least-significant-digit radix sort of floating point keys (CPU), for the
// orders NMS needs: about 4x faster than a comparison sort on a few thousand boxes.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

namespace rfe {

// The bits of a finite float as an unsigned integer with the same order (-0 equals +0).
template <typename T>
inline std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t> ordered_bits(T value) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr U sign = U(1) << (8 * sizeof(U) - 1);
  if (value == T(0)) value = T(0);
  U bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return (bits & sign) ? ~bits : (bits | sign);
}

// The indices 0..n-1 ordered by values[i] (ascending, or descending), equal values in
// index order: what a stable sort gives. The values must not be NaN.
template <typename T>
std::vector<int64_t> stable_order(const T* values, int64_t n, bool descending) {
  using U = decltype(ordered_bits(T(0)));
  std::vector<U> keys(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = descending ? ~ordered_bits(values[i]) : ordered_bits(values[i]);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t(0));
  constexpr int64_t kSmall = 256;  // below this, a comparison sort is faster
  if (n < kSmall) {
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
    return order;
  }
  constexpr int kBits = 11, kBuckets = 1 << kBits;
  std::vector<U> keys_out(n);
  std::vector<int64_t> order_out(n);
  std::vector<int64_t> count(kBuckets);
  for (int shift = 0; shift < int(8 * sizeof(U)); shift += kBits) {
    std::fill(count.begin(), count.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++count[(keys[i] >> shift) & (kBuckets - 1)];
    if (*std::max_element(count.begin(), count.end()) == n) continue;  // one digit for all: nothing moves
    int64_t start = 0;
    for (int64_t& c : count) {  // bucket sizes -> first positions
      const int64_t size = c;
      c = start;
      start += size;
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t to = count[(keys[i] >> shift) & (kBuckets - 1)]++;
      keys_out[to] = keys[i];
      order_out[to] = order[i];
    }
    keys.swap(keys_out);
    order.swap(order_out);
  }
  return order;
}

}  // namespace rfe
