// Force-included (g++ -include) into every cuda/*.cu file when the CUDA backend is built as the
// host emulation (CMake option NYSACT_CUDA_EMULATION; see emu.h for what it is and is not).  It
// gives device code what nvcc would: the thread coordinates, __syncthreads, __shared__ memory, the
// few device intrinsics the kernels use, and the launch behind NYSACT_LAUNCH (cuda/launch.cuh).
//
// A launch is validated at once (as cudaLaunchKernel does: cudaGetLastError reports a bad
// configuration) and queued on its stream with its arguments copied, as CUDA copies them.  When it
// runs, the blocks run one after another, in an order shuffled per launch; within a block, thread 0
// runs first on its own fiber (ucontext); a kernel whose thread 0 never reaches __syncthreads has
// its other threads run one by one (in a shuffled order), and a block that does reach it runs
// every thread on a fiber, switching at each barrier (in a shuffled order each round).
// __shared__ variables are thread_local statics: shared by the fibers of the block being run.
#pragma once

#include "kernel.h"

// Device code, compiled as host code.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __grid_constant__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static thread_local

#define threadIdx (::nysact_emu::current->threadIdx)
#define blockIdx (::nysact_emu::current->blockIdx)
#define blockDim (::nysact_emu::current->blockDim)
#define gridDim (::nysact_emu::current->gridDim)

inline void __syncthreads() { ::nysact_emu::syncthreads(); }
// Threads of one block never run at the same time here, so a plain read-modify-write is atomic.
inline int atomicOr(int* address, int value) {
  const int old = *address;
  *address = old | value;
  return old;
}
inline double __dsqrt_rn(double x) { return std::sqrt(x); }
using std::fabs;
using std::fmin;
using std::fmax;
using std::isfinite;
using std::sqrt;
