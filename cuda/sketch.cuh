// Activation covariance sketch on the device (SPEC §1 step 1, SPEC §2 "never materialise the im2col
// patch matrix").
//
// The activation matrix X̃ (n x p, the ones column last when the layer has a bias) is never held
// whole: rows are processed in tiles of at most Context::tileBytes().  Each tile T (rows x p,
// row-major) is either copied from the host (dense) or gathered from the NHWC input already on the
// device (conv: buildPatchTile, the one hand-written step, since no CUDA library forms im2col tiles
// with TensorFlow 'same' padding and dilation).  Then cuBLAS: Z = T S (rows x k), C_tile = Tᵀ Z
// (p x k), and C_tile is added into a double accumulator in tile order (deterministic; the CPU
// backend likewise reduces chunk partials in double).  Full-covariance layers use Z = T.
#pragma once

#include <cstdint>

#include "context.h"

namespace nysact {
namespace cuda {

// Draws the p x k gaussian sketch of SPEC §1 on the device with the same Philox stream and the same
// roundings as the CPU backend (binding/philox_sketch.h; this translation unit is built with
// --fmad=false): bit-identical to nysact::philoxGaussianSketch.
void launchGaussianSketch(const Context& ctx, uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t p,
                          int64_t k, float* out);

// What the products multiply X̃ by.
struct SketchOperand {
  const float* matrix = nullptr;    // p x k gaussian sketch (device), or
  const int32_t* indices = nullptr; // k subcolumn indices (device), or neither: full covariance (k == p)
};

// covariance (device, p x k row-major) = X̃ᵀ (X̃ S) / rows for dense activations x (rows x p0) in
// memory of kind xMemory.  Host and pinned rows are copied into the tile (pinned: asynchronously).
// Device rows are read in place as the tile when the layer has no bias and the tile's rows start
// on the scratch arena's 256-byte alignment (so cuBLAS sees operands of the same alignment as a
// staged tile, and the products are those of the host path); otherwise they are copied into the
// tile on the device (device to device, never through the host).  Returns false, leaving
// covariance untouched, if x holds a non-finite value.
bool sketchCovarianceDense(Context& ctx, const float* x, MemoryKind xMemory, int64_t rows, int64_t p0, bool bias,
                           const SketchOperand& sketch, int64_t k, float* covariance);

// The same for a conv layer whose NHWC input is already on the device (deviceX: the caller's
// device tensor, read in place by the tile gather, or the host input staged by CudaLayer).
bool sketchCovarianceConv(Context& ctx, const float* deviceX, const LayerSpec& spec, const ConvInput& input,
                          const SketchOperand& sketch, int64_t k, float* covariance);

// ema = β·ema + (1−β)·pending, in float as the CPU backend does.
void launchEmaUpdate(const Context& ctx, float* ema, const float* pending, int64_t n, float beta, float oneMinusBeta);

// Sets ctx.flag() if any of x[0..n) is not finite.
void launchFiniteCheck(const Context& ctx, const float* x, int64_t n);

}  // namespace cuda
}  // namespace nysact
