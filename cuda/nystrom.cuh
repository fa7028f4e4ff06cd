// Eigenvalue-shifted Nyström factors on the device (SPEC §1 step 2), in double precision, step for
// step as binding/cpu/nystrom.cpp: bias correction, Y = Ĉ + ρS, W = SᵀY, eigendecomposition of W's
// lower triangle (cuSOLVER syevd), shifted Cholesky with up to four attempts (potrf), the
// triangular solve of the chosen variant (cuBLAS trsm), thin SVD (cuSOLVER gesvd), and the same
// fallbacks and report.  Full-covariance layers: eigendecomposition of (Ĉ + Ĉᵀ)/2.  Only the few
// elementwise steps (conversions, shifts, finiteness checks) are hand-written kernels.
#pragma once

#include <cstdint>
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

}  // namespace cuda
}  // namespace nysact
