#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace rfe {

// The type that kernels compute in: float for float16/bfloat16/float32, double for double.
template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

template <typename T>
using acc_type = typename Accumulate<T>::type;

}  // namespace rfe
