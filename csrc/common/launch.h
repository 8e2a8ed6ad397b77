// The launch arithmetic of the CUDA kernels, in one place (as mmcv's GET_BLOCKS).
#pragma once

#include <algorithm>
#include <cstdint>

namespace rfe {

// Threads per block of the kernels that give each thread one item (or loop over a grid).
constexpr int kThreads = 256;
// Blocks of a grid-stride loop with 64-bit counts: its own cap where it has one.
constexpr int64_t kMaxGridStrideBlocks = int64_t(1) << 30;
// CUDA's limit on a grid's y and z dimensions.
constexpr int64_t kMaxGridYZ = 65535;

// Blocks of kThreads threads that cover `items` (at least one).
inline int64_t blocks_for(int64_t items, int64_t max_blocks = kMaxGridStrideBlocks) {
  return std::max<int64_t>(1, std::min<int64_t>((items + kThreads - 1) / kThreads, max_blocks));
}

}  // namespace rfe
