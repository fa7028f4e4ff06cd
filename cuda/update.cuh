// The fused preconditioned momentum step on the device (SPEC §1 step 3, SPEC §2 "never materialise
// P").  cuBLAS first forms the skinny product M = G U (q x k; the bias gradient's rank-one term is
// added by the kernel as it stages M); then one hand-written kernel computes, per element, v = g/ρ + Σ_k U[i,k]·c_k·M[j,k] from
// shared-memory tiles of U and M (a small GEMM whose epilogue is the optimizer: no library fuses a
// low-rank product with weight decay, momentum and the parameter update), reading G, θ and the
// momentum buffer once and writing θ and the buffer once.
#pragma once

#include <cstdint>
#include <vector>

#include "context.h"

namespace nysact {
namespace cuda {

// Device pointers of one preconditioned step.  bias / gradBias / biasMomentum null iff no bias.
struct DeviceStep {
  const float* basis = nullptr;         // U, p x k row-major
  const float* coefficients = nullptr;  // c, k
  int64_t k = 0;
  float inverseDamping = 1.0f;
  float* weight = nullptr;
  float* bias = nullptr;
  const float* gradWeight = nullptr;
  const float* gradBias = nullptr;
  float* momentum = nullptr;
  float* biasMomentum = nullptr;
  float* scratchM = nullptr;  // q x k
};

void preconditionedMomentumStep(const Context& ctx, const LayerSpec& spec, const DeviceStep& d, const StepScalars& s);

// The same for many layers: each layer's M product (cuBLAS, one call per layer), then one launch of
// the fused kernel for up to 48 layers at a time instead of one per layer (an optimizer step has
// many small layers, and each launch costs microseconds of GPU time), as long as their gradients
// fit in half the L2 cache (NYSACT_CUDA_STEP_BATCH_BYTES overrides), so the kernel's second read
// of G still hits the cache.  Each layer needs its own scratchM.  Bit-identical to
// preconditionedMomentumStep layer by layer.
void preconditionedMomentumStepBatch(const Context& ctx, const std::vector<const LayerSpec*>& specs,
                                     const std::vector<DeviceStep>& steps, const StepScalars& s);

// Momentum SGD with weight decay on raw gradients (SPEC §1 step 4), elementwise.
void momentumStep(const Context& ctx, int64_t n, float* weight, const float* grad, float* momentum,
                  const StepScalars& s);

// The same for many tensors: one launch for up to 96 tensors instead of one each; bit-identical.
struct DeviceMomentum {
  int64_t n = 0;
  float* weight = nullptr;
  const float* grad = nullptr;
  float* momentum = nullptr;
};
void momentumStepBatch(const Context& ctx, const std::vector<DeviceMomentum>& tensors, const StepScalars& s);

}  // namespace cuda
}  // namespace nysact
