#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
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
// The workspace is the context's staging region.
bool symmetricEigen(Context& ctx, double* a, int n, double* lambda, int* info) {
  int lwork = 0;
  NYSACT_CUSOLVER_CHECK(cusolverDnDsyevd_bufferSize(ctx.cusolver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                                    n, a, n, lambda, &lwork));
  double* work = reinterpret_cast<double*>(ctx.staging(static_cast<size_t>(std::max(lwork, 1)) * sizeof(double)));
  NYSACT_CUSOLVER_CHECK(cusolverDnDsyevd(ctx.cusolver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a, n,
                                         lambda, work, lwork, info));
  return solverSucceeded(ctx, info, "cusolverDnDsyevd");
}

// The per-layer path's pieces of the scratch arena (nystromFactors carves them; reserveNystrom
// sizes the arena with the same layout).
struct PerLayerLayout {
  size_t oChat, oS, oY, oB, oU, oW, oWh, oVd, oVt, oLambda, oScale, oSigma, oRwork, oIndices, oInfo, total;
};

PerLayerLayout perLayerLayout(int64_t p, int64_t k, bool full) {
  PerLayerLayout l;
  ScratchPlan plan;
  l.oChat = plan.add<double>(static_cast<size_t>(p * k));
  l.oS = plan.add<double>(full ? 0 : static_cast<size_t>(p * k));
  l.oY = plan.add<double>(full ? 0 : static_cast<size_t>(p * k));
  l.oB = plan.add<double>(full ? static_cast<size_t>(p * p) : static_cast<size_t>(p * k));
  l.oU = plan.add<double>(full ? 0 : static_cast<size_t>(p * k));
  l.oW = plan.add<double>(static_cast<size_t>(k * k));
  l.oWh = plan.add<double>(static_cast<size_t>(k * k));
  l.oVd = plan.add<double>(static_cast<size_t>(k * k));
  l.oVt = plan.add<double>(static_cast<size_t>(k * k));
  l.oLambda = plan.add<double>(static_cast<size_t>(k));
  l.oScale = plan.add<double>(static_cast<size_t>(k));
  l.oSigma = plan.add<double>(static_cast<size_t>(k));
  l.oRwork = plan.add<double>(static_cast<size_t>(k));
  l.oIndices = plan.add<int32_t>(static_cast<size_t>(k));
  l.oInfo = plan.add<int>(1);
  l.total = plan.total();
  return l;
}

// Bytes of the per-layer path's largest cuSOLVER workspace (syevd of W, or of the full covariance;
// potrf; gesvd), taken from the staging region.
size_t perLayerWorkspaceBytes(Context& ctx, int64_t p, int64_t k, bool full) {
  // Asked for every rebuilding layer on every inverse step (reserveNystrom): remembered per shape.
  static std::mutex cacheMutex;
  static std::map<std::tuple<int64_t, int64_t, bool>, size_t> cache;
  const auto key = std::make_tuple(p, k, full);
  {
    std::lock_guard<std::mutex> lock(cacheMutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const int pi = toInt(p, "p"), ki = toInt(k, "rank");
  int syevd = 0, potrf = 0, gesvd = 0;
  const int n = full ? pi : ki;
  // The size queries read no matrix; they get a valid device address all the same.
  double* any = reinterpret_cast<double*>(ctx.flag());
  NYSACT_CUSOLVER_CHECK(cusolverDnDsyevd_bufferSize(ctx.cusolver(), CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER,
                                                    n, any, n, any, &syevd));
  if (!full) {
    NYSACT_CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, any, ki, &potrf));
    NYSACT_CUSOLVER_CHECK(cusolverDnDgesvd_bufferSize(ctx.cusolver(), pi, ki, &gesvd));
  }
  const size_t bytes = static_cast<size_t>(std::max({syevd, potrf, gesvd, 1})) * sizeof(double);
  std::lock_guard<std::mutex> lock(cacheMutex);
  cache.emplace(key, bytes);
  return bytes;
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

  const PerLayerLayout L = perLayerLayout(p, k, in.full);
  char* base = ctx.scratch(L.total);
  double* chat = piece<double>(base, L.oChat);
  double* lambda = piece<double>(base, L.oLambda);
  int* info = piece<int>(base, L.oInfo);

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
    double* q = piece<double>(base, L.oB);
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

  double* s = piece<double>(base, L.oS);
  double* y = piece<double>(base, L.oY);
  double* w = piece<double>(base, L.oW);
  if (in.indices != nullptr) {
    int32_t* indices = piece<int32_t>(base, L.oIndices);
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

  double* wh = piece<double>(base, L.oWh);
  double* vd = piece<double>(base, L.oVd);
  double* scale = piece<double>(base, L.oScale);
  int lworkPotrf = 0;
  NYSACT_CUSOLVER_CHECK(cusolverDnDpotrf_bufferSize(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, wh, ki, &lworkPotrf));
  // The workspaces come from the context's staging region (reserved with the rest before a step
  // plan changes anything: reserveNystrom).
  double* potrfWork = reinterpret_cast<double*>(ctx.staging(static_cast<size_t>(std::max(lworkPotrf, 1)) * sizeof(double)));
  std::vector<double> scaleHost(static_cast<size_t>(k));
  int attempts = 0;
  for (; attempts < kMaxCholeskyAttempts; ++attempts) {
    // Wh = V diag(λ + shift) Vᵀ, then L = chol(Wh) (lower triangle).
    for (int64_t j = 0; j < k; ++j) scaleHost[j] = lambdaHost[j] + shift;
    copyToDevice(ctx, scale, scaleHost.data(), scaleHost.size() * sizeof(double));
    NYSACT_LAUNCH(scaleColumnsKernel, blocksFor(k * k), kThreads, ctx.stream())(w, k, scale, vd);
    NYSACT_CUDA_CHECK_LAUNCH();
    NYSACT_CUBLAS_CHECK(cublasDgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, ki, ki, ki, &one, vd, ki, w, ki, &zero, wh, ki));
    NYSACT_CUSOLVER_CHECK(cusolverDnDpotrf(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, wh, ki, potrfWork,
                                           lworkPotrf, info));
    if (solverSucceeded(ctx, info, "cusolverDnDpotrf")) {
      ctx.resetFlag();
      NYSACT_LAUNCH(finiteLowerKernel, blocksFor(k * k), kThreads, ctx.stream())(wh, k, ctx.flag());
      NYSACT_CUDA_CHECK_LAUNCH();
      if (!ctx.readFlag()) break;
    }
    shift *= 10.0;
  }
  if (!settleCholeskyReport(out.report, attempts, shift)) return out;

  // Reference: B L = Y.  Textbook: B = Y L⁻ᵀ, i.e. B Lᵀ = Y.  (binding/cpu/nystrom.cpp solves the
  // transposed systems; these are the same equations.)
  double* b = piece<double>(base, L.oB);
  NYSACT_CUDA_CHECK(cudaMemcpyAsync(b, y, static_cast<size_t>(p * k) * sizeof(double), cudaMemcpyDeviceToDevice,
                                    ctx.stream()));
  NYSACT_CUBLAS_CHECK(cublasDtrsm(ctx.cublas(), CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER,
                                  in.variant == NystromVariant::Reference ? CUBLAS_OP_N : CUBLAS_OP_T,
                                  CUBLAS_DIAG_NON_UNIT, pi, ki, &one, wh, ki, b, pi));

  // Thin SVD B = U Σ Vᵀ (p >= k always holds for a sketched layer: k = min(rank, p) < p).
  double* u = piece<double>(base, L.oU);
  double* sigma = piece<double>(base, L.oSigma);
  double* vt = piece<double>(base, L.oVt);
  double* rwork = piece<double>(base, L.oRwork);
  int lworkSvd = 0;
  NYSACT_CUSOLVER_CHECK(cusolverDnDgesvd_bufferSize(ctx.cusolver(), pi, ki, &lworkSvd));
  double* svdWork = reinterpret_cast<double*>(ctx.staging(static_cast<size_t>(std::max(lworkSvd, 1)) * sizeof(double)));
  signed char jobu = 'S', jobvt = 'N';
  NYSACT_CUSOLVER_CHECK(cusolverDnDgesvd(ctx.cusolver(), jobu, jobvt, pi, ki, b, pi, sigma, u, pi, vt, ki,
                                         svdWork, lworkSvd, rwork, info));
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

// Layers per group launch: at most 4096 (bounds gridDim.y, 65535, and the descriptor uploads), and
// few enough that the group's k x k matrices hold at most INT32_MAX elements, cusolverDnXsyevBatched's
// documented limit (n·lda·batchSize; it answers CUSOLVER_STATUS_INVALID_VALUE beyond it).
size_t maxGroup(int64_t k) {
  const int64_t byElements = static_cast<int64_t>(INT32_MAX) / std::max<int64_t>(1, k * k);
  return static_cast<size_t>(std::max<int64_t>(1, std::min<int64_t>(4096, byElements)));
}

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

// One block per layer, before each batched cuSOLVER call: a matrix whose lower triangle (what the
// call reads) is not finite is replaced by the identity and its layer flagged with `bit`.  cuSOLVER
// does not say what its batched routines do with a non-finite matrix, and one launch serves the
// whole batch, so none is passed: the flagged layer's result is discarded on the host (by `bit`, or
// by the earlier flag whose failure made the matrix non-finite) and the other layers are unaffected.
__global__ void batchGuardKernel(double* __restrict__ a, int64_t k, int* __restrict__ flags, int bit) {
  __shared__ int anyBad;
  const int64_t b = blockIdx.x, kk = k * k;
  double* m = a + b * kk;
  if (threadIdx.x == 0) anyBad = 0;
  __syncthreads();
  int bad = 0;
  for (int64_t e = threadIdx.x; e < kk; e += blockDim.x) {
    const int64_t j = e / k, i = e - (e / k) * k;
    if (i >= j) bad |= !isfinite(m[e]);
  }
  if (bad) atomicOr(&anyBad, 1);
  __syncthreads();
  if (!anyBad) return;
  for (int64_t e = threadIdx.x; e < kk; e += blockDim.x) m[e] = (e / k == e % k) ? 1.0 : 0.0;
  if (threadIdx.x == 0) atomicOr(&flags[b], bit);
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

// A batched group's pieces of the scratch arena for members of fan-in ps and rank k (runGroup
// carves them; reserveNystrom sizes the arena with the same layout).
struct GroupLayout {
  size_t oLayers, oIndices, oPtrL, oPtrG, uploadBytes;
  size_t oInfoW, oInfoL, oInfoG, oFlags, oShift, summaryBytes;
  size_t oStores, oSY, oWM, oW, oM, oVD, oWh, oLambda, oSigma2, oU, oCoefficients, total;
};

GroupLayout groupLayout(int64_t k, const std::vector<int64_t>& ps) {
  const size_t n = ps.size();
  const int64_t kk = k * k;
  int64_t syTotal = 0, uTotal = 0;
  for (int64_t p : ps) {
    syTotal += 2 * p * k;
    uTotal += p * k;
  }
  GroupLayout l;
  ScratchPlan plan;
  // Uploaded in one copy: descriptors, subcolumn indices, the pointer arrays of the batched calls.
  l.oLayers = plan.add<BatchLayer>(n);
  l.oIndices = plan.add<int32_t>(n * static_cast<size_t>(k));
  l.oPtrL = plan.add<double*>(n);
  l.oPtrG = plan.add<double*>(n);
  l.uploadBytes = plan.total();
  // Read back in one copy after the one synchronisation: the three solver infos, flags, shifts.
  l.oInfoW = plan.add<int>(n);
  l.oInfoL = plan.add<int>(n);
  l.oInfoG = plan.add<int>(n);
  l.oFlags = plan.add<int>(n);
  l.oShift = plan.add<double>(n);
  l.summaryBytes = plan.total() - l.oInfoW;
  l.oStores = plan.add<BatchStore>(n);
  l.oSY = plan.add<double>(static_cast<size_t>(syTotal));
  l.oWM = plan.add<double>(2 * n * static_cast<size_t>(kk));
  l.oW = plan.add<double>(n * static_cast<size_t>(kk));
  l.oM = plan.add<double>(n * static_cast<size_t>(kk));
  l.oVD = plan.add<double>(n * static_cast<size_t>(kk));
  l.oWh = plan.add<double>(n * static_cast<size_t>(kk));
  l.oLambda = plan.add<double>(n * static_cast<size_t>(k));
  l.oSigma2 = plan.add<double>(n * static_cast<size_t>(k));
  l.oU = plan.add<double>(static_cast<size_t>(uTotal));
  l.oCoefficients = plan.add<float>(n * static_cast<size_t>(k));
  l.total = plan.total();
  return l;
}

// The device workspace of cusolverDnXsyevBatched for `count` k x k matrices (staging region).
size_t eigenBatchedWorkspaceBytes(Context& ctx, cusolverDnParams_t params, int64_t k, int64_t count, size_t* hostBytes) {
  size_t deviceBytes = 0;
  const void* any = ctx.flag();  // the size query reads no matrix; a valid device address all the same
  NYSACT_CUSOLVER_CHECK(cusolverDnXsyevBatched_bufferSize(ctx.cusolver(), params, CUSOLVER_EIG_MODE_VECTOR,
                                                          CUBLAS_FILL_MODE_LOWER, k, CUDA_R_64F, any, k, CUDA_R_64F,
                                                          any, CUDA_R_64F, &deviceBytes, hostBytes, count));
  return std::max<size_t>(deviceBytes, 256);
}

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

  std::vector<int64_t> ps(members.size());
  for (size_t j = 0; j < members.size(); ++j) ps[j] = items[members[j]].p;
  const GroupLayout L = groupLayout(k, ps);
  const size_t uploadBytes = L.uploadBytes, summaryBytes = L.summaryBytes;
  char* base = ctx.scratch(L.total);
  const BatchLayer* dLayers = piece<BatchLayer>(base, L.oLayers);
  int* infoW = piece<int>(base, L.oInfoW);
  int* infoL = piece<int>(base, L.oInfoL);
  int* infoG = piece<int>(base, L.oInfoG);
  int* flags = piece<int>(base, L.oFlags);
  double* shift = piece<double>(base, L.oShift);
  double* sy = piece<double>(base, L.oSY);
  double* wm = piece<double>(base, L.oWM);
  double* w = piece<double>(base, L.oW);
  double* m = piece<double>(base, L.oM);
  double* vd = piece<double>(base, L.oVD);
  double* wh = piece<double>(base, L.oWh);
  double* lambda = piece<double>(base, L.oLambda);
  double* sigma2 = piece<double>(base, L.oSigma2);
  double* u = piece<double>(base, L.oU);
  float* coefficients = piece<float>(base, L.oCoefficients);

  std::vector<char> upload(uploadBytes, 0);
  for (size_t j = 0; j < members.size(); ++j) {
    const NystromDeviceInput& in = items[members[j]];
    if (in.sketch == nullptr) {
      const size_t offset = L.oIndices + j * static_cast<size_t>(k) * sizeof(int32_t);
      std::memcpy(upload.data() + offset, in.indices->data(), static_cast<size_t>(k) * sizeof(int32_t));
      layers[j].indices = piece<int32_t>(base, offset);
    }
    double* l = wh + static_cast<int64_t>(j) * kk;
    double* g = m + static_cast<int64_t>(j) * kk;
    std::memcpy(upload.data() + L.oPtrL + j * sizeof(double*), &l, sizeof(double*));
    std::memcpy(upload.data() + L.oPtrG + j * sizeof(double*), &g, sizeof(double*));
  }
  std::memcpy(upload.data() + L.oLayers, layers.data(), layers.size() * sizeof(BatchLayer));
  copyToDevice(ctx, base, upload.data(), uploadBytes);
  NYSACT_CUDA_CHECK(cudaMemsetAsync(base + L.oInfoW, 0, summaryBytes, ctx.stream()));
  double** ptrL = piece<double*>(base, L.oPtrL);
  double** ptrG = piece<double*>(base, L.oPtrG);

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
  NYSACT_LAUNCH(batchGuardKernel, perLayer, kThreads, stream)(w, k, flags, kEigenNonFinite);
  NYSACT_CUDA_CHECK_LAUNCH();
  symmetricEigenBatched(ctx, params, w, k, lambda, infoW, n, hostWork);
  NYSACT_LAUNCH(batchShiftKernel, perLayer, kThreads, stream)(lambda, w, k, rho, shift, vd, flags);
  NYSACT_CUDA_CHECK_LAUNCH();
  NYSACT_CUBLAS_CHECK(cublasDgemmStridedBatched(blas, CUBLAS_OP_N, CUBLAS_OP_T, ki, ki, ki, &one, vd, ki, kk, w, ki, kk,
                                                &zero, wh, ki, kk, ni));
  NYSACT_LAUNCH(batchGuardKernel, perLayer, kThreads, stream)(wh, k, flags, kCholeskyNonFinite);
  NYSACT_CUDA_CHECK_LAUNCH();
  NYSACT_CUSOLVER_CHECK(cusolverDnDpotrfBatched(ctx.cusolver(), CUBLAS_FILL_MODE_LOWER, ki, ptrL, ki, infoL, ni));
  NYSACT_LAUNCH(batchFiniteLowerKernel, perLayer, kThreads, stream)(wh, k, flags);
  NYSACT_CUDA_CHECK_LAUNCH();

  // G = L⁻ᵀ M L⁻¹ (reference: B = Y L⁻¹, G = BᵀB) or L⁻¹ M L⁻ᵀ (textbook: B = Y L⁻ᵀ), in place of M.
  // Only L's lower triangle is read (potrfBatched uses the upper one as workspace: destroyed).
  const cublasOperation_t leftOp = reference ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t rightOp = reference ? CUBLAS_OP_N : CUBLAS_OP_T;
  NYSACT_CUBLAS_CHECK(cublasDtrsmBatched(blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, leftOp, CUBLAS_DIAG_NON_UNIT, ki,
                                         ki, &one, ptrL, ki, ptrG, ki, ni));
  NYSACT_CUBLAS_CHECK(cublasDtrsmBatched(blas, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, rightOp, CUBLAS_DIAG_NON_UNIT,
                                         ki, ki, &one, ptrL, ki, ptrG, ki, ni));

  // G = Q diag(σ²) Qᵀ; coefficients; T = L⁻¹ Q Σ⁻¹ (reference) or L⁻ᵀ Q Σ⁻¹ (textbook); U = Y T.
  NYSACT_LAUNCH(batchGuardKernel, perLayer, kThreads, stream)(m, k, flags, kGramNonFinite);
  NYSACT_CUDA_CHECK_LAUNCH();
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
  copyToHost(ctx, summary.data(), base + L.oInfoW, summaryBytes);
  ctx.synchronize();
  auto at = [&](size_t offset, size_t j, size_t size) { return offset - L.oInfoW + j * size; };

  // cuSOLVER info < 0 is a wrong argument (our bug): an error naming the layer, before any layer
  // is touched.
  for (size_t j = 0; j < members.size(); ++j) {
    const std::pair<size_t, const char*> calls[] = {
        {L.oInfoW, "cusolverDnXsyevBatched (SᵀY)"}, {L.oInfoL, "cusolverDnDpotrfBatched"}, {L.oInfoG, "cusolverDnXsyevBatched (Gram)"}};
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
    const int eigenInfo = readAt<int>(summary, at(L.oInfoW, j, sizeof(int)));
    const int choleskyInfo = readAt<int>(summary, at(L.oInfoL, j, sizeof(int)));
    const int gramInfo = readAt<int>(summary, at(L.oInfoG, j, sizeof(int)));
    const int flag = readAt<int>(summary, at(L.oFlags, j, sizeof(int)));
    const double layerShift = readAt<double>(summary, at(L.oShift, j, sizeof(double)));
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
  copyToDevice(ctx, base + L.oStores, stores.data(), stores.size() * sizeof(BatchStore));
  NYSACT_LAUNCH(batchStoreKernel, dim3(blocksFor(widest), static_cast<unsigned int>(stores.size())), kThreads, stream)(
      piece<BatchStore>(base, L.oStores), k, u, coefficients);
  NYSACT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void reserveNystrom(Context& ctx, const std::vector<NystromDeviceInput>& items, bool batched) {
  size_t scratch = 0, staging = 256;
  std::map<std::tuple<int64_t, int32_t, double>, std::vector<int64_t>> groups;
  for (const NystromDeviceInput& in : items) {
    scratch = std::max(scratch, perLayerLayout(in.p, in.k, in.full).total);
    staging = std::max(staging, perLayerWorkspaceBytes(ctx, in.p, in.k, in.full));
    if (batched && !in.full) groups[std::make_tuple(in.k, static_cast<int32_t>(in.variant), in.damping)].push_back(in.p);
  }
  if (!groups.empty()) {
    // Asked on every inverse step: the batched workspace sizes are remembered per (k, count), and
    // cuSOLVER's parameter object is made only when one is not known yet.
    static std::mutex cacheMutex;
    static std::map<std::pair<int64_t, int64_t>, size_t> cache;
    std::unique_ptr<SolverParams> params;
    for (auto& entry : groups) {
      std::vector<int64_t>& ps = entry.second;
      // The rebuild runs a subset of these (layers without statistics go per layer) in groups of
      // at most maxGroup(k): the maxGroup(k) widest layers bound every such group.
      const int64_t k = std::get<0>(entry.first);
      std::sort(ps.begin(), ps.end(), std::greater<int64_t>());
      if (ps.size() > maxGroup(k)) ps.resize(maxGroup(k));
      scratch = std::max(scratch, groupLayout(k, ps).total);
      // (The batched eigensolver's workspace grows with the batch: the largest group bounds it.)
      const auto key = std::make_pair(k, static_cast<int64_t>(ps.size()));
      size_t bytes = 0;
      {
        std::lock_guard<std::mutex> lock(cacheMutex);
        auto it = cache.find(key);
        if (it != cache.end()) bytes = it->second;
      }
      if (bytes == 0) {
        if (!params) params = std::make_unique<SolverParams>();
        size_t hostBytes = 0;
        bytes = eigenBatchedWorkspaceBytes(ctx, params->get(), k, key.second, &hostBytes);
        std::lock_guard<std::mutex> lock(cacheMutex);
        cache.emplace(key, bytes);
      }
      staging = std::max(staging, bytes);
    }
  }
  if (scratch > 0) (void)ctx.scratch(scratch);
  (void)ctx.staging(staging);
}

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
    const size_t most = maxGroup(std::get<0>(entry.first));
    for (size_t start = 0; start < all.size(); start += most) {
      const std::vector<size_t> members(all.begin() + static_cast<std::ptrdiff_t>(start),
                                        all.begin() + static_cast<std::ptrdiff_t>(std::min(all.size(), start + most)));
      runGroup(ctx, params.get(), items, members, destination, out);
    }
  }
  return out;
}

}  // namespace cuda
}  // namespace nysact
