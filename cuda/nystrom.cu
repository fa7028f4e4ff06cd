#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <sstream>
#include <tuple>

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
  NYSACT_LAUNCH(finiteDoubleKernel, blocksFor(n), kThreads, ctx.stream())(x, n, ctx.flag());
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
  NYSACT_LAUNCH(biasCorrectedKernel, blocksFor(p * k), kThreads, ctx.stream())(in.ema, p, k, denominator, chat, ctx.flag());
  NYSACT_CUDA_CHECK_LAUNCH();
  if (ctx.readFlag()) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "covariance estimate is not finite";
    return out;
  }

  if (in.full) {
    // P = (Ĉ + ρI)⁻¹ = Q diag(1/(μ+ρ)) Qᵀ, stored as the full eigenbasis with c = 1/(μ+ρ) − 1/ρ.
    double* q = piece<double>(base, oB);
    NYSACT_LAUNCH(symmetrizeKernel, blocksFor(p * p), kThreads, ctx.stream())(chat, p, q);
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
    NYSACT_LAUNCH(toRowMajorFloatKernel, blocksFor(p * p), kThreads, ctx.stream())(q, p, p, basis.data());
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
    NYSACT_LAUNCH(selectorKernel, blocksFor(k), kThreads, ctx.stream())(indices, p, k, s);
  } else {
    NYSACT_LAUNCH(sketchToDoubleKernel, blocksFor(p * k), kThreads, ctx.stream())(in.sketch, p, k, s);
  }
  NYSACT_CUDA_CHECK_LAUNCH();
  NYSACT_LAUNCH(addScaledKernel, blocksFor(p * k), kThreads, ctx.stream())(chat, s, p * k, rho, y);
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
    NYSACT_LAUNCH(scaleColumnsKernel, blocksFor(k * k), kThreads, ctx.stream())(w, k, scale, vd);
    NYSACT_CUDA_CHECK_LAUNCH();
    NYSACT_CUBLAS_CHECK(cublasDgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, ki, ki, ki, &one, vd, ki, w, ki, &zero, wh, ki));
    NYSACT_CUSOLVER_CHECK(cusolverDnDpotrf(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, wh, ki, potrfWork.as<double>(),
                                           lworkPotrf, info));
    if (solverSucceeded(ctx, info, "cusolverDnDpotrf")) {
      ctx.resetFlag();
      NYSACT_LAUNCH(finiteLowerKernel, blocksFor(k * k), kThreads, ctx.stream())(wh, k, ctx.flag());
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
  NYSACT_LAUNCH(toRowMajorFloatKernel, blocksFor(p * k), kThreads, ctx.stream())(u, p, k, basis.data());
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

// ---- the batched rebuild (nystromFactorsBatched) ---------------------------------------------------

namespace {

// One layer of a batched group; the same bytes on the host (filled) and the device (read).
struct BatchLayer {
  const float* ema;        // p x k row-major
  const float* sketch;     // p x k row-major gaussian sketch, or null with indices
  const int32_t* indices;  // k subcolumn indices (device), or null
  int64_t p;
  int64_t syOffset;  // doubles: [S | Y], p x 2k column-major
  int64_t uOffset;   // doubles: U, p x k column-major
  double denominator;  // 1 − Πβ
};

// Where a successful layer's U and coefficients go.
struct BatchStore {
  float* basis;         // p x k row-major float
  float* coefficients;  // k
  int64_t uOffset;
  int64_t p;
  int64_t member;  // position in the group
};

// Per-layer finiteness flags (bits), read back with the cuSOLVER infos.
enum : int { kChatNonFinite = 1, kEigenNonFinite = 2, kCholeskyNonFinite = 4, kGramNonFinite = 8, kBasisNonFinite = 16 };

// Layers per group launch: bounds gridDim.y (65535) and the descriptor uploads.
constexpr size_t kMaxGroup = 4096;

// S and Y = Ĉ + ρS of every layer, column-major side by side ([S | Y], p x 2k), so that one GEMM
// per layer gives [S | Y]ᵀ Y = [SᵀY ; YᵀY].  blockIdx.y is the layer.
__global__ void batchBuildKernel(const BatchLayer* __restrict__ layers, int64_t k, double rho, double* __restrict__ sy,
                                 int* __restrict__ flags) {
  const BatchLayer layer = layers[blockIdx.y];
  double* s = sy + layer.syOffset;
  double* y = s + layer.p * k;
  int bad = 0;
  NYSACT_GRID_STRIDE(e, layer.p * k) {
    const int64_t i = e / k, j = e - (e / k) * k;
    const double chat = static_cast<double>(layer.ema[e]) / layer.denominator;
    bad |= !isfinite(chat);
    const double sv = layer.sketch != nullptr ? static_cast<double>(layer.sketch[e])
                                              : (static_cast<int64_t>(layer.indices[j]) == i ? 1.0 : 0.0);
    s[i + j * layer.p] = sv;
    y[i + j * layer.p] = chat + rho * sv;
  }
  if (bad) atomicOr(&flags[blockIdx.y], kChatNonFinite);
}

// wm (per layer 2k x k: SᵀY over YᵀY) → w (k x k, SᵀY) and m (k x k, YᵀY).
__global__ void batchUnpackKernel(const double* __restrict__ wm, int64_t k, double* __restrict__ w,
                                  double* __restrict__ m) {
  const int64_t b = blockIdx.y, kk = k * k;
  const double* src = wm + b * 2 * kk;
  NYSACT_GRID_STRIDE(e, kk) {
    const int64_t j = e / k, i = e - (e / k) * k;
    w[b * kk + e] = src[i + j * 2 * k];
    m[b * kk + e] = src[k + i + j * 2 * k];
  }
}

// One block (kThreads, a power of two) per layer: shift = |min λ| + ρ, finiteness of λ and V, and
// vd = V diag(λ + shift) (the per-layer path's scaleColumnsKernel, same arithmetic).
__global__ void batchShiftKernel(const double* __restrict__ lambda, const double* __restrict__ v, int64_t k, double rho,
                                 double* __restrict__ shift, double* __restrict__ vd, int* __restrict__ flags) {
  __shared__ double smallest[kThreads];
  const int64_t b = blockIdx.x, kk = k * k;
  const double* lam = lambda + b * k;
  const double* vb = v + b * kk;
  double m = INFINITY;
  int bad = 0;
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    bad |= !isfinite(lam[j]);
    m = fmin(m, lam[j]);
  }
  for (int64_t e = threadIdx.x; e < kk; e += blockDim.x) bad |= !isfinite(vb[e]);
  smallest[threadIdx.x] = m;
  __syncthreads();
  for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) smallest[threadIdx.x] = fmin(smallest[threadIdx.x], smallest[threadIdx.x + stride]);
    __syncthreads();
  }
  const double sh = fabs(smallest[0]) + rho;
  if (threadIdx.x == 0) shift[b] = sh;
  if (bad) atomicOr(&flags[b], kEigenNonFinite);
  for (int64_t e = threadIdx.x; e < kk; e += blockDim.x) vd[b * kk + e] = vb[e] * (lam[e / k] + sh);
}

// One block per layer: the Cholesky factor's lower triangle must be finite.
__global__ void batchFiniteLowerKernel(const double* __restrict__ l, int64_t k, int* __restrict__ flags) {
  const int64_t b = blockIdx.x, kk = k * k;
  int bad = 0;
  for (int64_t e = threadIdx.x; e < kk; e += blockDim.x) {
    const int64_t j = e / k, i = e - (e / k) * k;
    if (i >= j) bad |= !isfinite(l[b * kk + e]);
  }
  if (bad) atomicOr(&flags[b], kCholeskyNonFinite);
}

// One block per layer: σ² (ascending eigenvalues of G, tiny negatives clamped to 0), λ̂ = max(σ² −
// shift, 0), c = 1/(λ̂ + ρ) − 1/ρ (float), and Q's columns scaled by 1/σ, or zeroed where λ̂ = 0 (c = 0
// there, so U's column does not matter, and σ may be 0).
__global__ void batchCoefficientKernel(const double* __restrict__ sigma2, const double* __restrict__ shift, int64_t k,
                                       double rho, double* __restrict__ q, float* __restrict__ coefficients,
                                       int* __restrict__ flags) {
  const int64_t b = blockIdx.x, kk = k * k;
  const double sh = shift[b];
  const double* s2 = sigma2 + b * k;
  double* qb = q + b * kk;
  int bad = 0;
  for (int64_t e = threadIdx.x; e < kk; e += blockDim.x) {
    const int64_t j = e / k;
    const double value = qb[e];
    bad |= !isfinite(value) | !isfinite(s2[j]);
    const double sigmaSquared = fmax(s2[j], 0.0);
    qb[e] = sigmaSquared - sh > 0.0 ? value / sqrt(sigmaSquared) : 0.0;
  }
  for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
    const double lambdaHat = fmax(fmax(s2[j], 0.0) - sh, 0.0);
    coefficients[b * k + j] = static_cast<float>(1.0 / (lambdaHat + rho) - 1.0 / rho);
  }
  if (bad) atomicOr(&flags[b], kGramNonFinite);
}

__global__ void batchFiniteBasisKernel(const BatchLayer* __restrict__ layers, int64_t k, const double* __restrict__ u,
                                       int* __restrict__ flags) {
  const BatchLayer layer = layers[blockIdx.y];
  int bad = 0;
  NYSACT_GRID_STRIDE(e, layer.p * k) { bad |= !isfinite(u[layer.uOffset + e]); }
  if (bad) atomicOr(&flags[blockIdx.y], kBasisNonFinite);
}

// U (column-major double) → the layer's basis (row-major float), and its coefficients, with the
// columns reversed: descending σ², as a thin SVD and the CPU backend order them.
__global__ void batchStoreKernel(const BatchStore* __restrict__ stores, int64_t k, const double* __restrict__ u,
                                 const float* __restrict__ coefficients) {
  const BatchStore store = stores[blockIdx.y];
  NYSACT_GRID_STRIDE(e, store.p * k) {
    const int64_t i = e / k, j = e - (e / k) * k;
    store.basis[e] = static_cast<float>(u[store.uOffset + i + (k - 1 - j) * store.p]);
  }
  NYSACT_GRID_STRIDE(j, k) { store.coefficients[j] = coefficients[store.member * k + (k - 1 - j)]; }
}

class SolverParams {
 public:
  SolverParams() { NYSACT_CUSOLVER_CHECK(cusolverDnCreateParams(&params_)); }
  ~SolverParams() {
    if (params_ != nullptr) (void)cusolverDnDestroyParams(params_);
  }
  SolverParams(const SolverParams&) = delete;
  SolverParams& operator=(const SolverParams&) = delete;
  cusolverDnParams_t get() const { return params_; }

 private:
  cusolverDnParams_t params_ = nullptr;
};

// Eigendecomposition of the lower triangles of `count` k x k matrices stored one after the other
// (overwritten by the eigenvectors), eigenvalues ascending into values (count x k).  The device
// workspace lives in the context's staging region, the host workspace (if any) in hostWork, which
// the caller keeps until the stream has been synchronised.
void symmetricEigenBatched(Context& ctx, cusolverDnParams_t params, double* a, int64_t k, double* values, int* info,
                           int64_t count, std::vector<char>& hostWork) {
  size_t deviceBytes = 0, hostBytes = 0;
  NYSACT_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(ctx.cusolver(), params, CUSOLVER_EIG_MODE_VECTOR,
                                                          CUBLAS_FILL_MODE_LOWER, k, CUDA_R_64F, a, k, CUDA_R_64F,
                                                          values, CUDA_R_64F, &deviceBytes, &hostBytes, count));
  char* work = ctx.staging(std::max<size_t>(deviceBytes, 256));
  if (hostWork.size() < hostBytes) hostWork.resize(hostBytes);
  NYSACT_CUSOLVER_CHECK(cusolverDnXsyevBatched(ctx.cusolver(), params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                               k, CUDA_R_64F, a, k, CUDA_R_64F, values, CUDA_R_64F, work, deviceBytes,
                                               hostBytes > 0 ? hostWork.data() : nullptr, hostBytes, info, count));
}

template <typename T>
T readAt(const std::vector<char>& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// One group: items of equal k, damping and variant.
void runGroup(Context& ctx, cusolverDnParams_t params, const std::vector<NystromDeviceInput>& items,
              const std::vector<size_t>& members, const NystromDestination& destination,
              std::vector<NystromBatchOutcome>& out) {
  const NystromDeviceInput& first = items[members.front()];
  const int64_t k = first.k, kk = k * k, n = static_cast<int64_t>(members.size());
  const int ki = toInt(k, "rank"), ni = toInt(n, "layers");
  const double rho = first.damping;
  const bool reference = first.variant == NystromVariant::Reference;

  std::vector<BatchLayer> layers(members.size());
  int64_t syTotal = 0, uTotal = 0, widest = 0;
  for (size_t j = 0; j < members.size(); ++j) {
    const NystromDeviceInput& in = items[members[j]];
    (void)toInt(in.p, "p");
    layers[j] = BatchLayer{in.ema, in.sketch, nullptr, in.p, syTotal, uTotal, 1.0 - in.decayProduct};
    syTotal += 2 * in.p * k;
    uTotal += in.p * k;
    widest = std::max(widest, in.p * k);
  }

  ScratchPlan plan;
  // Uploaded in one copy: descriptors, subcolumn indices, the pointer arrays of the batched calls.
  const size_t oLayers = plan.add<BatchLayer>(members.size());
  const size_t oIndices = plan.add<int32_t>(static_cast<size_t>(n * k));
  const size_t oPtrL = plan.add<double*>(members.size());
  const size_t oPtrG = plan.add<double*>(members.size());
  const size_t uploadBytes = plan.total();
  // Read back in one copy after the one synchronisation: the three solver infos, flags, shifts.
  const size_t oInfoW = plan.add<int>(members.size());
  const size_t oInfoL = plan.add<int>(members.size());
  const size_t oInfoG = plan.add<int>(members.size());
  const size_t oFlags = plan.add<int>(members.size());
  const size_t oShift = plan.add<double>(members.size());
  const size_t summaryBytes = plan.total() - oInfoW;
  const size_t oStores = plan.add<BatchStore>(members.size());
  const size_t oSY = plan.add<double>(static_cast<size_t>(syTotal));
  const size_t oWM = plan.add<double>(static_cast<size_t>(2 * n * kk));
  const size_t oW = plan.add<double>(static_cast<size_t>(n * kk));
  const size_t oM = plan.add<double>(static_cast<size_t>(n * kk));
  const size_t oVD = plan.add<double>(static_cast<size_t>(n * kk));
  const size_t oWh = plan.add<double>(static_cast<size_t>(n * kk));
  const size_t oLambda = plan.add<double>(static_cast<size_t>(n * k));
  const size_t oSigma2 = plan.add<double>(static_cast<size_t>(n * k));
  const size_t oU = plan.add<double>(static_cast<size_t>(uTotal));
  const size_t oCoefficients = plan.add<float>(static_cast<size_t>(n * k));
  char* base = ctx.scratch(plan.total());
  const BatchLayer* dLayers = piece<BatchLayer>(base, oLayers);
  int* infoW = piece<int>(base, oInfoW);
  int* infoL = piece<int>(base, oInfoL);
  int* infoG = piece<int>(base, oInfoG);
  int* flags = piece<int>(base, oFlags);
  double* shift = piece<double>(base, oShift);
  double* sy = piece<double>(base, oSY);
  double* wm = piece<double>(base, oWM);
  double* w = piece<double>(base, oW);
  double* m = piece<double>(base, oM);
  double* vd = piece<double>(base, oVD);
  double* wh = piece<double>(base, oWh);
  double* lambda = piece<double>(base, oLambda);
  double* sigma2 = piece<double>(base, oSigma2);
  double* u = piece<double>(base, oU);
  float* coefficients = piece<float>(base, oCoefficients);

  std::vector<char> upload(uploadBytes, 0);
  for (size_t j = 0; j < members.size(); ++j) {
    const NystromDeviceInput& in = items[members[j]];
    if (in.sketch == nullptr) {
      const size_t offset = oIndices + j * static_cast<size_t>(k) * sizeof(int32_t);
      std::memcpy(upload.data() + offset, in.indices->data(), static_cast<size_t>(k) * sizeof(int32_t));
      layers[j].indices = piece<int32_t>(base, offset);
    }
    double* l = wh + static_cast<int64_t>(j) * kk;
    double* g = m + static_cast<int64_t>(j) * kk;
    std::memcpy(upload.data() + oPtrL + j * sizeof(double*), &l, sizeof(double*));
    std::memcpy(upload.data() + oPtrG + j * sizeof(double*), &g, sizeof(double*));
  }
  std::memcpy(upload.data() + oLayers, layers.data(), layers.size() * sizeof(BatchLayer));
  copyToDevice(ctx, base, upload.data(), uploadBytes);
  NYSACT_CUDA_CHECK(cudaMemsetAsync(base + oInfoW, 0, summaryBytes, ctx.stream()));
  double** ptrL = piece<double*>(base, oPtrL);
  double** ptrG = piece<double*>(base, oPtrG);

  const dim3 perElement(blocksFor(widest), static_cast<unsigned int>(n));
  const dim3 perMatrix(blocksFor(kk), static_cast<unsigned int>(n));
  const unsigned int perLayer = static_cast<unsigned int>(n);
  cudaStream_t stream = ctx.stream();
  cublasHandle_t blas = ctx.cublas();
  const double one = 1.0, zero = 0.0;

  // Y, W = SᵀY, M = YᵀY.
  NYSACT_LAUNCH(batchBuildKernel, perElement, kThreads, stream)(dLayers, k, rho, sy, flags);
  NYSACT_CUDA_CHECK_LAUNCH();
  for (size_t j = 0; j < members.size(); ++j) {
    const int pi = static_cast<int>(layers[j].p);
    const double* sj = sy + layers[j].syOffset;
    NYSACT_CUBLAS_CHECK(cublasDgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, 2 * ki, ki, pi, &one, sj, pi, sj + layers[j].p * k, pi,
                                    &zero, wm + static_cast<int64_t>(j) * 2 * kk, 2 * ki));
  }
  NYSACT_LAUNCH(batchUnpackKernel, perMatrix, kThreads, stream)(wm, k, w, m);
  NYSACT_CUDA_CHECK_LAUNCH();

  // W = V diag(λ) Vᵀ (lower triangle), shift, Wh = V diag(λ + shift) Vᵀ, L = chol(Wh).
  std::vector<char> hostWork;
  symmetricEigenBatched(ctx, params, w, k, lambda, infoW, n, hostWork);
  NYSACT_LAUNCH(batchShiftKernel, perLayer, kThreads, stream)(lambda, w, k, rho, shift, vd, flags);
  NYSACT_CUDA_CHECK_LAUNCH();
  NYSACT_CUBLAS_CHECK(cublasDgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_T, ki, ki, ki, &one, vd, ki, kk, w, ki, kk,
                                                &zero, wh, ki, kk, ni));
  NYSACT_CUSOLVER_CHECK(cusolverDnDpotrfBatched(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, ptrL, ki, infoL, ni));
  NYSACT_LAUNCH(batchFiniteLowerKernel, perLayer, kThreads, stream)(wh, k, flags);
  NYSACT_CUDA_CHECK_LAUNCH();

  // G = L⁻ᵀ M L⁻¹ (reference: B = Y L⁻¹, G = BᵀB) or L⁻¹ M L⁻ᵀ (textbook: B = Y L⁻ᵀ), in place of M.
  // Only L's lower triangle is read (potrf leaves Wh's upper triangle as it was).
  const cublasOperation_t leftOp = reference ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t rightOp = reference ? CUBLAS_OP_N : CUBLAS_OP_T;
  NYSACT_CUBLAS_CHECK(cublasDtrsmBatched(blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, leftOp, CUBLAS_DIAG_NON_UNIT, ki,
                                         ki, &one, ptrL, ki, ptrG, ki, ni));
  NYSACT_CUBLAS_CHECK(cublasDtrsmBatched(blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, rightOp, CUBLAS_DIAG_NON_UNIT,
                                         ki, ki, &one, ptrL, ki, ptrG, ki, ni));

  // G = Q diag(σ²) Qᵀ; coefficients; T = L⁻¹ Q Σ⁻¹ (reference) or L⁻ᵀ Q Σ⁻¹ (textbook); U = Y T.
  symmetricEigenBatched(ctx, params, m, k, sigma2, infoG, n, hostWork);
  NYSACT_LAUNCH(batchCoefficientKernel, perLayer, kThreads, stream)(sigma2, shift, k, rho, m, coefficients, flags);
  NYSACT_CUDA_CHECK_LAUNCH();
  NYSACT_CUBLAS_CHECK(cublasDtrsmBatched(blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, rightOp, CUBLAS_DIAG_NON_UNIT,
                                         ki, ki, &one, ptrL, ki, ptrG, ki, ni));
  for (size_t j = 0; j < members.size(); ++j) {
    const int pi = static_cast<int>(layers[j].p);
    const double* yj = sy + layers[j].syOffset + layers[j].p * k;
    NYSACT_CUBLAS_CHECK(cublasDgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, pi, ki, ki, &one, yj, pi,
                                    m + static_cast<int64_t>(j) * kk, ki, &zero, u + layers[j].uOffset, pi));
  }
  NYSACT_LAUNCH(batchFiniteBasisKernel, perElement, kThreads, stream)(dLayers, k, u, flags);
  NYSACT_CUDA_CHECK_LAUNCH();

  // The group's one synchronisation.
  std::vector<char> summary(summaryBytes);
  copyToHost(ctx, summary.data(), base + oInfoW, summaryBytes);
  ctx.synchronize();
  auto at = [&](size_t offset, size_t j, size_t size) { return offset - oInfoW + j * size; };

  // cuSOLVER info < 0 is a wrong argument (our bug): an error naming the layer, before any layer
  // is touched.
  for (size_t j = 0; j < members.size(); ++j) {
    const std::pair<size_t, const char*> calls[] = {
        {oInfoW, "cusolverDnXsyevBatched (SᵀY)"}, {oInfoL, "cusolverDnDpotrfBatched"}, {oInfoG, "cusolverDnXsyevBatched (Gram)"}};
    for (const auto& [offset, routine] : calls) {
      const int value = readAt<int>(summary, at(offset, j, sizeof(int)));
      if (value < 0) {
        std::ostringstream s;
        s << routine << " rejected argument " << -value << " (cuSOLVER info " << value << ")";
        throw BatchLayerError(members[j], Error(kNativeCode, s.str()));
      }
    }
  }

  std::vector<BatchStore> stores;
  for (size_t j = 0; j < members.size(); ++j) {
    NystromBatchOutcome& o = out[members[j]];
    const int eigenInfo = readAt<int>(summary, at(oInfoW, j, sizeof(int)));
    const int choleskyInfo = readAt<int>(summary, at(oInfoL, j, sizeof(int)));
    const int gramInfo = readAt<int>(summary, at(oInfoG, j, sizeof(int)));
    const int flag = readAt<int>(summary, at(oFlags, j, sizeof(int)));
    const double layerShift = readAt<double>(summary, at(oShift, j, sizeof(double)));
    if (flag & kChatNonFinite) {
      o.result.report.status = FactorStatus::KeptPrevious;
      o.result.report.detail = "covariance estimate is not finite";
    } else if (eigenInfo != 0 || (flag & kEigenNonFinite)) {
      o.result.report.status = FactorStatus::KeptPrevious;
      o.result.report.detail = "eigendecomposition of SᵀY failed";
    } else if (choleskyInfo != 0 || (flag & kCholeskyNonFinite)) {
      o.perLayer = true;  // the shift must grow: the per-layer path's attempts from the start
    } else if (gramInfo != 0 || (flag & (kGramNonFinite | kBasisNonFinite))) {
      // binding/cpu/nystrom.cpp's reports: attempts and shift as far as they got.
      o.result.report.status = FactorStatus::KeptPrevious;
      o.result.report.attempts = 1;
      o.result.report.shift = layerShift;
      o.result.report.detail = gramInfo != 0 || (flag & kGramNonFinite)
                                   ? "eigendecomposition of the Nyström factor's Gram matrix BᵀB failed"
                                   : "the Nyström basis is not finite";
    } else {
      o.result.ok = true;
      o.result.report.attempts = 1;
      o.result.report.shift = layerShift;
      BatchStore store{};
      destination(members[j], &store.basis, &store.coefficients);
      store.uOffset = layers[j].uOffset;
      store.p = layers[j].p;
      store.member = static_cast<int64_t>(j);
      stores.push_back(store);
    }
  }
  if (stores.empty()) return;
  copyToDevice(ctx, base + oStores, stores.data(), stores.size() * sizeof(BatchStore));
  NYSACT_LAUNCH(batchStoreKernel, dim3(blocksFor(widest), static_cast<unsigned int>(stores.size())), kThreads, stream)(
      piece<BatchStore>(base, oStores), k, u, coefficients);
  NYSACT_CUDA_CHECK_LAUNCH();
}

}  // namespace

std::vector<NystromBatchOutcome> nystromFactorsBatched(Context& ctx, const std::vector<NystromDeviceInput>& items,
                                                       const NystromDestination& destination) {
  std::vector<NystromBatchOutcome> out(items.size());
  std::map<std::tuple<int64_t, int32_t, double>, std::vector<size_t>> groups;
  for (size_t i = 0; i < items.size(); ++i) {
    const NystromDeviceInput& in = items[i];
    if (in.full || !(1.0 - in.decayProduct > 0.0) || (in.sketch == nullptr && in.indices == nullptr)) {
      out[i].perLayer = true;
      continue;
    }
    groups[std::make_tuple(in.k, static_cast<int32_t>(in.variant), in.damping)].push_back(i);
  }
  if (groups.empty()) return out;
  SolverParams params;
  for (const auto& entry : groups) {
    const std::vector<size_t>& all = entry.second;
    for (size_t start = 0; start < all.size(); start += kMaxGroup) {
      const std::vector<size_t> members(all.begin() + static_cast<std::ptrdiff_t>(start),
                                        all.begin() + static_cast<std::ptrdiff_t>(std::min(all.size(), start + kMaxGroup)));
      runGroup(ctx, params.get(), items, members, destination, out);
    }
  }
  return out;
}

}  // namespace cuda
}  // namespace nysact
