// Launch geometry shared by the elementwise kernels: grid-stride loops over int64 element counts.
#pragma once

#include <cstdint>

namespace nysact {
namespace cuda {

inline constexpr int kThreads = 256;

// Blocks for n elements with kThreads threads each, capped (the kernels loop with a grid stride).
inline unsigned int blocksFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int64_t cap = int64_t{1} << 16;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

#define NYSACT_GRID_STRIDE(i, n)                                                            \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

}  // namespace cuda
}  // namespace nysact
