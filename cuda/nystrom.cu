#include <algorithm>
#include <cmath>
#include <sstream>

#include "launch.cuh"
#include "nystrom.cuh"

namespace nysact {
namespace cuda {
namespace {

// Device matrices here are column-major (cuBLAS / cuSOLVER), element (i, j) of a rows x cols matrix
// at i + j·rows.  The layer's arrays are row-major float (binding/backend.h).

__global__ void biasCorrectedKernel(const float* __restrict__ ema, int64_t p, int64_t k, double denominator,
                                    double* __restrict__ chat, int* flag) {
  NYSACT_GRID_STRIDE(e, p * k) {
    const int64_t i = e / k, j = e - (e / k) * k;
    const double v = static_cast<double>(ema[e]) / denominator;
    if (!isfinite(v)) atomicOr(flag, 1);
    chat[i + j * p] = v;
  }
}

__global__ void symmetrizeKernel(const double* __restrict__ a, int64_t n, double* __restrict__ out) {
  NYSACT_GRID_STRIDE(e, n * n) {
    const int64_t j = e / n, i = e - (e / n) * n;
    out[e] = 0.5 * (a[i + j * n] + a[j + i * n]);
  }
}

__global__ void sketchToDoubleKernel(const float* __restrict__ s, int64_t p, int64_t k, double* __restrict__ out) {
  NYSACT_GRID_STRIDE(e, p * k) {
    const int64_t i = e / k, j = e - (e / k) * k;
    out[i + j * p] = static_cast<double>(s[e]);
  }
}

__global__ void selectorKernel(const int32_t* __restrict__ indices, int64_t p, int64_t k, double* __restrict__ out) {
  NYSACT_GRID_STRIDE(j, k) { out[static_cast<int64_t>(indices[j]) + j * p] = 1.0; }
}

// y = chat + ρ·s
__global__ void addScaledKernel(const double* __restrict__ chat, const double* __restrict__ s, int64_t n, double rho,
                                double* __restrict__ y) {
  NYSACT_GRID_STRIDE(e, n) { y[e] = chat[e] + rho * s[e]; }
}

__global__ void scaleColumnsKernel(const double* __restrict__ v, int64_t n, const double* __restrict__ scale,
                                   double* __restrict__ out) {
  NYSACT_GRID_STRIDE(e, n * n) { out[e] = v[e] * scale[e / n]; }
}

__global__ void finiteDoubleKernel(const double* __restrict__ x, int64_t n, int* flag) {
  int bad = 0;
  NYSACT_GRID_STRIDE(i, n) { bad |= !isfinite(x[i]); }
  if (bad) atomicOr(flag, 1);
}

__global__ void finiteLowerKernel(const double* __restrict__ a, int64_t n, int* flag) {
  int bad = 0;
  NYSACT_GRID_STRIDE(e, n * n) {
    const int64_t j = e / n, i = e - (e / n) * n;
    if (i >= j) bad |= !isfinite(a[e]);
  }
  if (bad) atomicOr(flag, 1);
}

// out (rows x cols row-major float) = a (rows x cols column-major double)
__global__ void toRowMajorFloatKernel(const double* __restrict__ a, int64_t rows, int64_t cols, float* __restrict__ out) {
  NYSACT_GRID_STRIDE(e, rows * cols) {
    const int64_t i = e / cols, j = e - (e / cols) * cols;
    out[e] = static_cast<float>(a[i + j * rows]);
  }
}

template <typename T>
T* piece(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

bool anyNonFinite(Context& ctx, const double* x, int64_t n) {
  ctx.resetFlag();
  finiteDoubleKernel<<<blocksFor(n), kThreads, 0, ctx.stream()>>>(x, n, ctx.flag());
  NYSACT_CUDA_CHECK_LAUNCH();
  return ctx.readFlag();
}

bool allFiniteHost(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// cuSOLVER's device-side info: < 0 is a wrong argument (our bug: an error), > 0 a numerical failure.
bool solverSucceeded(Context& ctx, const int* info, const char* routine) {
  const int value = ctx.readInfo(info);
  if (value < 0) {
    std::ostringstream s;
    s << routine << " rejected argument " << -value << " (cuSOLVER info " << value << ")";
    throw Error(kNativeCode, s.str());
  }
  return value == 0;
}

// Symmetric eigendecomposition of the lower triangle of a (n x n, column-major, overwritten by the
// eigenvectors); eigenvalues ascending into lambda (device).  Returns false on a numerical failure.
bool symmetricEigen(Context& ctx, double* a, int n, double* lambda, int* info) {
  int lwork = 0;
  NYSACT_CUSOLVER_CHECK(cusolverDnDsyevd_bufferSize(ctx.cusolver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                                    n, a, n, lambda, &lwork));
  DeviceBuffer work(static_cast<size_t>(std::max(lwork, 1)) * sizeof(double));
  NYSACT_CUSOLVER_CHECK(cusolverDnDsyevd(ctx.cusolver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, n,
                                         lambda, work.as<double>(), lwork, info));
  return solverSucceeded(ctx, info, "cusolverDnDsyevd");
}

std::vector<double> toHost(Context& ctx, const double* device, int64_t n) {
  std::vector<double> out(static_cast<size_t>(n));
  copyToHost(ctx, out.data(), device, out.size() * sizeof(double));
  ctx.synchronize();
  return out;
}

}  // namespace

NystromDeviceResult nystromFactors(Context& ctx, const NystromDeviceInput& in, DeviceArray<float>& basis) {
  NystromDeviceResult out;
  const double rho = in.damping;
  if (!(1.0 - in.decayProduct > 0.0)) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "no statistics committed yet";
    return out;
  }
  const int64_t p = in.p, k = in.k;
  const int pi = toInt(p, "p"), ki = toInt(k, "rank");
  const double denominator = 1.0 - in.decayProduct;

  ScratchPlan plan;
  const size_t oChat = plan.add<double>(static_cast<size_t>(p * k));
  const size_t oS = plan.add<double>(in.full ? 0 : static_cast<size_t>(p * k));
  const size_t oY = plan.add<double>(in.full ? 0 : static_cast<size_t>(p * k));
  const size_t oB = plan.add<double>(in.full ? static_cast<size_t>(p * p) : static_cast<size_t>(p * k));
  const size_t oU = plan.add<double>(in.full ? 0 : static_cast<size_t>(p * k));
  const size_t oW = plan.add<double>(static_cast<size_t>(k * k));
  const size_t oWh = plan.add<double>(static_cast<size_t>(k * k));
  const size_t oVd = plan.add<double>(static_cast<size_t>(k * k));
  const size_t oVt = plan.add<double>(static_cast<size_t>(k * k));
  const size_t oLambda = plan.add<double>(static_cast<size_t>(k));
  const size_t oScale = plan.add<double>(static_cast<size_t>(k));
  const size_t oSigma = plan.add<double>(static_cast<size_t>(k));
  const size_t oRwork = plan.add<double>(static_cast<size_t>(k));
  const size_t oIndices = plan.add<int32_t>(static_cast<size_t>(k));
  const size_t oInfo = plan.add<int>(1);
  char* base = ctx.scratch(plan.total());
  double* chat = piece<double>(base, oChat);
  double* lambda = piece<double>(base, oLambda);
  int* info = piece<int>(base, oInfo);

  ctx.resetFlag();
  biasCorrectedKernel<<<blocksFor(p * k), kThreads, 0, ctx.stream()>>>(in.ema, p, k, denominator, chat, ctx.flag());
  NYSACT_CUDA_CHECK_LAUNCH();
  if (ctx.readFlag()) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "covariance estimate is not finite";
    return out;
  }

  if (in.full) {
    // P = (Ĉ + ρI)⁻¹ = Q diag(1/(μ+ρ)) Qᵀ, stored as the full eigenbasis with c = 1/(μ+ρ) − 1/ρ.
    double* q = piece<double>(base, oB);
    symmetrizeKernel<<<blocksFor(p * p), kThreads, 0, ctx.stream()>>>(chat, p, q);
    NYSACT_CUDA_CHECK_LAUNCH();
    const bool converged = symmetricEigen(ctx, q, pi, lambda, info);
    const std::vector<double> mu = converged ? toHost(ctx, lambda, p) : std::vector<double>();
    double smallest = INFINITY;
    for (double m : mu) smallest = std::min(smallest, m + rho);
    if (!converged || !allFiniteHost(mu) || smallest <= 0.0) {
      out.report.status = FactorStatus::KeptPrevious;
      out.report.detail = "eigendecomposition of the full covariance failed";
      return out;
    }
    basis.resize(static_cast<size_t>(p * p));
    toRowMajorFloatKernel<<<blocksFor(p * p), kThreads, 0, ctx.stream()>>>(q, p, p, basis.data());
    NYSACT_CUDA_CHECK_LAUNCH();
    ctx.synchronize();
    out.coefficients.resize(static_cast<size_t>(p));
    for (int64_t i = 0; i < p; ++i) out.coefficients[i] = static_cast<float>(1.0 / (mu[i] + rho) - 1.0 / rho);
    out.ok = true;
    return out;
  }

  double* s = piece<double>(base, oS);
  double* y = piece<double>(base, oY);
  double* w = piece<double>(base, oW);
  if (in.indices != nullptr) {
    int32_t* indices = piece<int32_t>(base, oIndices);
    copyToDevice(ctx, indices, in.indices->data(), static_cast<size_t>(k) * sizeof(int32_t));
    NYSACT_CUDA_CHECK(cudaMemsetAsync(s, 0, static_cast<size_t>(p * k) * sizeof(double), ctx.stream()));
    selectorKernel<<<blocksFor(k), kThreads, 0, ctx.stream()>>>(indices, p, k, s);
  } else {
    sketchToDoubleKernel<<<blocksFor(p * k), kThreads, 0, ctx.stream()>>>(in.sketch, p, k, s);
  }
  NYSACT_CUDA_CHECK_LAUNCH();
  addScaledKernel<<<blocksFor(p * k), kThreads, 0, ctx.stream()>>>(chat, s, p * k, rho, y);
  NYSACT_CUDA_CHECK_LAUNCH();
  const double one = 1.0, zero = 0.0;
  // W (k x k) = Sᵀ Y; the reference eigendecomposes its lower triangle (it is not symmetric).
  NYSACT_CUBLAS_CHECK(cublasDgemm(ctx.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, ki, ki, pi, &one, s, pi, y, pi, &zero, w, ki));
  const bool converged = symmetricEigen(ctx, w, ki, lambda, info);
  if (!converged || anyNonFinite(ctx, lambda, k) || anyNonFinite(ctx, w, k * k)) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "eigendecomposition of SᵀY failed";
    return out;
  }
  const std::vector<double> lambdaHost = toHost(ctx, lambda, k);
  double shift = std::fabs(*std::min_element(lambdaHost.begin(), lambdaHost.end())) + rho;

  double* wh = piece<double>(base, oWh);
  double* vd = piece<double>(base, oVd);
  double* scale = piece<double>(base, oScale);
  int lworkPotrf = 0;
  NYSACT_CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, wh, ki, &lworkPotrf));
  DeviceBuffer potrfWork(static_cast<size_t>(std::max(lworkPotrf, 1)) * sizeof(double));
  std::vector<double> scaleHost(static_cast<size_t>(k));
  int attempts = 0;
  constexpr int kMaxAttempts = 4;
  for (; attempts < kMaxAttempts; ++attempts) {
    // Wh = V diag(λ + shift) Vᵀ, then L = chol(Wh) (lower triangle).
    for (int64_t j = 0; j < k; ++j) scaleHost[j] = lambdaHost[j] + shift;
    copyToDevice(ctx, scale, scaleHost.data(), scaleHost.size() * sizeof(double));
    scaleColumnsKernel<<<blocksFor(k * k), kThreads, 0, ctx.stream()>>>(w, k, scale, vd);
    NYSACT_CUDA_CHECK_LAUNCH();
    NYSACT_CUBLAS_CHECK(cublasDgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, ki, ki, ki, &one, vd, ki, w, ki, &zero, wh, ki));
    NYSACT_CUSOLVER_CHECK(cusolverDnDpotrf(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, wh, ki, potrfWork.as<double>(),
                                           lworkPotrf, info));
    if (solverSucceeded(ctx, info, "cusolverDnDpotrf")) {
      ctx.resetFlag();
      finiteLowerKernel<<<blocksFor(k * k), kThreads, 0, ctx.stream()>>>(wh, k, ctx.flag());
      NYSACT_CUDA_CHECK_LAUNCH();
      if (!ctx.readFlag()) break;
    }
    shift *= 10.0;
  }
  out.report.attempts = attempts + (attempts < kMaxAttempts ? 1 : 0);
  if (attempts == kMaxAttempts) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.shift = shift;
    out.report.detail = "Cholesky factorisation failed even with an enlarged shift";
    return out;
  }
  if (attempts > 0) {
    std::ostringstream msg;
    msg << "Cholesky needed the shift enlarged " << attempts << " time(s) to " << shift;
    out.report.status = FactorStatus::ShiftEnlarged;
    out.report.detail = msg.str();
  }
  out.report.shift = shift;

  // Reference: B L = Y.  Textbook: B = Y L⁻ᵀ, i.e. B Lᵀ = Y.  (binding/cpu/nystrom.cpp solves the
  // transposed systems; these are the same equations.)
  double* b = piece<double>(base, oB);
  NYSACT_CUDA_CHECK(cudaMemcpyAsync(b, y, static_cast<size_t>(p * k) * sizeof(double), cudaMemcpyDeviceToDevice,
                                    ctx.stream()));
  NYSACT_CUBLAS_CHECK(cublasDtrsm(ctx.cublas(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER,
                                  in.variant == NystromVariant::Reference ? CUBLAS_OP_N : CUBLAS_OP_T,
                                  CUBLAS_DIAG_NON_UNIT, pi, ki, &one, wh, ki, b, pi));

  // Thin SVD B = U Σ Vᵀ (p >= k always holds for a sketched layer: k = min(rank, p) < p).
  double* u = piece<double>(base, oU);
  double* sigma = piece<double>(base, oSigma);
  double* vt = piece<double>(base, oVt);
  double* rwork = piece<double>(base, oRwork);
  int lworkSvd = 0;
  NYSACT_CUSOLVER_CHECK(cusolverDnDgesvd_bufferSize(ctx.cusolver(), pi, ki, &lworkSvd));
  DeviceBuffer svdWork(static_cast<size_t>(std::max(lworkSvd, 1)) * sizeof(double));
  signed char jobu = 'S', jobvt = 'N';
  NYSACT_CUSOLVER_CHECK(cusolverDnDgesvd(ctx.cusolver(), jobu, jobvt, pi, ki, b, pi, sigma, u, pi, vt, ki,
                                         svdWork.as<double>(), lworkSvd, rwork, info));
  const bool svdConverged = solverSucceeded(ctx, info, "cusolverDnDgesvd");
  if (!svdConverged || anyNonFinite(ctx, sigma, k) || anyNonFinite(ctx, u, p * k)) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "SVD of the Nyström factor failed";
    return out;
  }
  const std::vector<double> sigmaHost = toHost(ctx, sigma, k);
  basis.resize(static_cast<size_t>(p * k));
  toRowMajorFloatKernel<<<blocksFor(p * k), kThreads, 0, ctx.stream()>>>(u, p, k, basis.data());
  NYSACT_CUDA_CHECK_LAUNCH();
  ctx.synchronize();
  out.coefficients.resize(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    const double lambdaHat = std::max(sigmaHost[j] * sigmaHost[j] - shift, 0.0);
    out.coefficients[j] = static_cast<float>(1.0 / (lambdaHat + rho) - 1.0 / rho);
  }
  out.ok = true;
  return out;
}

}  // namespace cuda
}  // namespace nysact
