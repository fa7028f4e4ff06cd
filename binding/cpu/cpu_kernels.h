// CPU kernels behind binding/cpu/cpu_backend.cpp.  Eigen does every product and factorisation;
// the hand-written parts are the patch-free conv sketch (no library computes Xᵀ(X S) from an NHWC
// tensor without the patch matrix) and the fused preconditioned momentum pass (no library fuses a
// low-rank apply with the optimizer update).
//
// Determinism: work is split into chunks fixed by the problem shape, never by the thread count,
// and chunk partial sums are reduced in chunk order; Eigen's own threading is disabled.  Results
// are therefore bit-identical for any number of threads.
#pragma once

#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "../backend.h"

namespace nysact {
namespace cpu {

// Heap buffers that Eigen writes or keeps (partial sums, layer state). Eigen takes different code
// paths (and rounds differently) by the alignment of a product's destination, so every such
// buffer gets the same alignment in every run: results then depend on the values only, not on
// where the caller's arrays or earlier allocations lie (tested in test/properties.test.ts).
using AlignedFloats = std::vector<float, Eigen::aligned_allocator<float>>;

// Row-major float matrices and views of callers' arrays (every CPU kernel's layout).
using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRows = Eigen::Map<const RowMatrixF>;
using MutableRows = Eigen::Map<RowMatrixF>;

// C (p x k, row-major) = X̃ᵀ (X̃ S) / rows, where X̃ = [x, 1] (ones column iff bias),
// x is rows x p0 row-major and S is p x k row-major (bias row last).
void sketchCovarianceDense(const float* x, int64_t rows, int64_t p0, bool bias, const float* sketch,
                           int64_t k, float* covariance);

// The same for a conv layer: X̃ is the (never built) patch matrix of the NHWC input, one row per
// output position, patch columns in (kh, kw, c) order, rows = batch · outH · outW.
void sketchCovarianceConv(const float* x, const LayerSpec& spec, const ConvInput& input,
                          const float* sketch, int64_t k, float* covariance);

// Low-rank preconditioned momentum step (SPEC §2): V = G/ρ + (G U) diag(c) Uᵀ with U p x k
// row-major; then weight decay, momentum and the parameter update, in place.
void preconditionedMomentumStep(const LayerSpec& spec, const float* basis, const float* coefficients,
                                int64_t k, double inverseDamping, float* weight, float* bias,
                                const float* gradWeight, const float* gradBias, float* momentum,
                                float* biasMomentum, const StepScalars& s);

// Momentum SGD with weight decay on raw gradients (SPEC §1 step 4).
void momentumStep(int64_t n, float* weight, const float* grad, float* momentum, const StepScalars& s);

bool allFinite(const float* x, int64_t n);

}  // namespace cpu
}  // namespace nysact
