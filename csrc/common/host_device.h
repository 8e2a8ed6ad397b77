#pragma once
// Per-element math is written once, in headers, as RFE_HOST_DEVICE inline functions,
// and called by both the CPU loops and the CUDA kernels.

#if defined(__CUDACC__)
#define RFE_HOST_DEVICE __host__ __device__
#else
#define RFE_HOST_DEVICE
#endif

#include <cmath>

namespace rfe {

// Products that must round on their own (never fused into a following add), so that
// the CPU, the GPU and the PyTorch references produce the same bits. setup.py also
// turns contraction off (-ffp-contract=off, --fmad=false); these make it explicit.
RFE_HOST_DEVICE inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

RFE_HOST_DEVICE inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
RFE_HOST_DEVICE inline bool is_finite(T v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

template <typename T>
RFE_HOST_DEVICE inline T max_of(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
RFE_HOST_DEVICE inline T min_of(T a, T b) {
  return a < b ? a : b;
}

}  // namespace rfe
