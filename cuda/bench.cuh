// Device-side timings for bench/driver.cpp (CUDA events, median of `repeats` after one warm-up),
// on random data resident on the device (METHOD.md: never time zeros).
#pragma once

#include <cstdint>

#include "context.h"
#include "layer.h"

namespace nysact {
namespace cuda {

// Median milliseconds of a device-to-device cudaMemcpy of `bytes`.
double benchCopy(Context& ctx, uint64_t bytes, int repeats);
// Median milliseconds of an m x n x k SGEMM (fp32, default math mode: no TF32).
double benchSgemm(Context& ctx, int64_t m, int64_t n, int64_t k, int repeats);
// Median milliseconds of the preconditioned step of a p x q layer at rank r (M = G U plus the fused
// kernel), everything resident.
double benchFusedUpdate(Context& ctx, int64_t p, int64_t q, int64_t r, WeightLayout layout, int repeats);
// Median milliseconds of a statistics step (Philox sketch, tiles, products) of `layer` on resident
// random activations: dense rows = batch; conv NHWC batch x height x width x inChannels.
double benchSketch(Context& ctx, CudaLayer& layer, int64_t batch, int64_t height, int64_t width, int repeats);

}  // namespace cuda
}  // namespace nysact
