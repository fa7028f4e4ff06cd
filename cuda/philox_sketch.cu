// The device draw of the gaussian sketch.  Built with --fmad=false (CMakeLists.txt): together with
// the portable log/sincos of binding/philox_sketch.h this makes every element bit-identical to the
// CPU backend's draw (test: bench/driver.cpp "philox" check).
#include <cmath>

#include "../binding/philox_sketch.h"
#include "launch.cuh"
#include "sketch.cuh"

namespace nysact {
namespace cuda {
namespace {

__global__ void gaussianSketchKernel(uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t n, double invSqrtP,
                                     float* out) {
  NYSACT_GRID_STRIDE(e, n) { out[e] = philox::gaussianSketchElement(seed, layerKey, statStep, e, invSqrtP); }
}

}  // namespace

void launchGaussianSketch(const Context& ctx, uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t p,
                          int64_t k, float* out) {
  // The same host expression as nysact::philoxGaussianSketch (binding/common.cpp).
  const double invSqrtP = 1.0 / std::sqrt(static_cast<double>(p));
  const int64_t n = p * k;
  NYSACT_LAUNCH(gaussianSketchKernel, blocksFor(n), kThreads, ctx.stream())(seed, layerKey, statStep, n, invSqrtP, out);
  NYSACT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace nysact
