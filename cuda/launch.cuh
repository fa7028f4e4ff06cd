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

// A kernel launch on `stream` without dynamic shared memory: `NYSACT_LAUNCH(k, grid, block, s)(args...)`.
// Under nvcc it is the <<<>>> launch; in the host emulation (cuda/emu/device.h, tests only) it
// queues the kernel on the emulated stream.
#ifdef NYSACT_CUDA_EMULATION
#define NYSACT_LAUNCH(kernel, grid, block, stream) ::nysact_emu::launch(kernel, dim3(grid), dim3(block), (stream))
#else
#define NYSACT_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#endif

#define NYSACT_GRID_STRIDE(i, n)                                                            \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

}  // namespace cuda
}  // namespace nysact
