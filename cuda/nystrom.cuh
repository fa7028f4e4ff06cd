// Eigenvalue-shifted Nyström factors on the device (SPEC §1 step 2), in double precision, step for
// step as binding/cpu/nystrom.cpp: bias correction, Y = Ĉ + ρS, W = SᵀY, eigendecomposition of W's
// lower triangle (cuSOLVER syevd), shifted Cholesky with up to four attempts (potrf), the
// triangular solve of the chosen variant (cuBLAS trsm), thin SVD (cuSOLVER gesvd), and the same
// fallbacks and report.  Full-covariance layers: eigendecomposition of (Ĉ + Ĉᵀ)/2.  Only the few
// elementwise steps (conversions, shifts, finiteness checks) are hand-written kernels.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "context.h"

namespace nysact {
namespace cuda {

struct NystromDeviceInput {
  const float* ema = nullptr;                    // device, p x k row-major (full: p x p)
  const float* sketch = nullptr;                 // device, p x k gaussian sketch, or null with indices
  const std::vector<int32_t>* indices = nullptr; // host, k subcolumn indices, or null
  int64_t p = 0, k = 0;
  bool full = false;
  double decayProduct = 1.0;
  double damping = 1.0;
  NystromVariant variant = NystromVariant::Reference;
};

struct NystromDeviceResult {
  bool ok = false;  // false: keep the previous factors (report says why); basis untouched
  std::vector<float> coefficients;
  FactorReport report;
};

// On success writes U (p x k row-major float) into basis (resized) and returns the coefficients.
NystromDeviceResult nystromFactors(Context& ctx, const NystromDeviceInput& in, DeviceArray<float>& basis);

// The batched rebuild of many layers (one optimizer step's inverse update), SPEC §1 step 2 in the
// Gram formulation: Y = Ĉ + ρS; W = SᵀY and M = YᵀY (one GEMM per layer); then, batched over all
// layers of the same k: eigendecomposition of W's lower triangle, Wh = V diag(λ + shift) Vᵀ,
// L = chol(Wh), G = L⁻ᵀ M L⁻¹ (reference) or L⁻¹ M L⁻ᵀ (textbook), G = Q diag(σ²) Qᵀ,
// λ̂ = max(σ² − shift, 0), T = L⁻¹ Q Σ⁻¹ (reference) or L⁻ᵀ Q Σ⁻¹ (textbook) with the columns of
// λ̂ = 0 zeroed; U = Y T (one GEMM per layer).  U's kept columns are the left singular vectors of
// B = Y L⁻¹ (or Y L⁻ᵀ), stored by descending σ² (as binding/cpu/nystrom.cpp does), so the result is
// the per-layer path's and the CPU's up to rounding and column signs.
// One host synchronisation per group of equal k reads every layer's cuSOLVER info and finiteness
// flags.
struct NystromBatchOutcome {
  NystromDeviceResult result;  // ok: U and the coefficients were written to the destination
  // The caller must run the per-layer nystromFactors for this item instead: full covariance, no
  // statistics yet, or a Cholesky that failed with the first shift (the rare retry path).
  bool perLayer = false;
};

// Called after the synchronisation, once per item that succeeded: where its U (p*k floats,
// row-major) and its k coefficients go (device memory of the context's device).
using NystromDestination = std::function<void(size_t item, float** basis, float** coefficients)>;

// Items are independent layers.  Throws nysact::BatchLayerError naming the item when cuSOLVER
// rejects an argument of one layer's problem; other failures throw nysact::Error.
std::vector<NystromBatchOutcome> nystromFactorsBatched(Context& ctx, const std::vector<NystromDeviceInput>& items,
                                                       const NystromDestination& destination);

// Grows the context's scratch and staging regions now to what nystromFactors of every item and,
// when `batched`, nystromFactorsBatched over them would take, so that a rebuild in a step plan
// allocates nothing (a step that cannot get its memory then fails before it changes anything).
// Only p, k, full, damping and variant of the items are read; every non-full item is counted in
// its batched group, as if it had statistics (the plan's commits come after the reservation).
void reserveNystrom(Context& ctx, const std::vector<NystromDeviceInput>& items, bool batched);

}  // namespace cuda
}  // namespace nysact
