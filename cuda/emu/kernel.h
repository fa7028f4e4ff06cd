// The host emulation's kernel launches (see device.h): thread coordinates, the grid runner, the
// launcher behind NYSACT_LAUNCH.  No macros here, so runtime.cpp can use it too.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "emu.h"

namespace nysact_emu {

struct ThreadCoordinates {
  uint3 threadIdx;
  uint3 blockIdx;
  dim3 blockDim;
  dim3 gridDim;
};

// The coordinates of the emulated GPU thread running on this host thread.
extern thread_local ThreadCoordinates* current;

// Whether a launch configuration is one CUDA accepts (sm_80/sm_90 limits).
bool validLaunch(dim3 grid, dim3 block);
// Runs `body` for every thread of the grid (when the queue reaches the launch).
void runGrid(dim3 grid, dim3 block, void (*body)(void*), void* context);
// The barrier of the running block.
void syncthreads();

template <typename... P>
class Launcher {
 public:
  Launcher(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t stream)
      : kernel_(kernel), grid_(grid), block_(block), stream_(stream) {}

  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    if (!validLaunch(grid_, block_)) {
      setLastError(cudaErrorInvalidConfiguration);
      return;
    }
    if (sticky() != cudaSuccess) return;
    struct Bound {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
      static void run(void* self) {
        auto* b = static_cast<Bound*>(self);
        std::apply(b->kernel, b->args);
      }
    };
    auto bound = std::make_shared<Bound>(Bound{kernel_, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)});
    const dim3 grid = grid_, block = block_;
    enqueue(stream_, [bound, grid, block] { runGrid(grid, block, &Bound::run, bound.get()); });
  }

 private:
  void (*kernel_)(P...);
  dim3 grid_, block_;
  cudaStream_t stream_;
};

template <typename... P>
Launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, cudaStream_t stream) {
  return Launcher<P...>(kernel, grid, block, stream);
}

}  // namespace nysact_emu

