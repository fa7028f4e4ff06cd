// cuBLAS and cuSOLVER, emulated on the host: exactly the routines the CUDA backend calls, with the
// C signatures (and exported symbol names, e.g. cublasSgemm_v2) of the real cublas_v2.h and
// cusolverDn.h, so that the backend's own code compiles and links unchanged.
//
// How every routine is emulated (see emu.h for the machinery):
//   * Arguments are validated on the calling thread, as the real libraries do, and a bad one is
//     answered with CUBLAS_STATUS_INVALID_VALUE / CUSOLVER_STATUS_INVALID_VALUE.  cuSOLVER also
//     reports which argument was wrong through its info output (info = -i, the i-th argument not
//     counting the handle), written in stream order.
//   * Host scalars (alpha, beta; the handles are in CUBLAS_POINTER_MODE_HOST) are read at call time;
//     sizes and pointers are captured by value.  A handle in CUBLAS_POINTER_MODE_DEVICE is answered
//     with CUBLAS_STATUS_NOT_SUPPORTED: the backend never uses it.
//   * If the context is already broken (a sticky error), the call returns success and does nothing,
//     as a launch into a faulted context does nothing useful.
//   * Every matrix, vector and workspace operand must lie in device-accessible memory for the bytes
//     the routine touches (column-major extent ((cols - 1) * ld + rows) elements).  If one does not,
//     the call is a device fault (nysact_emu::fault: printed, sticky cudaErrorIllegalAddress) and
//     still returns success, since a GPU reports illegal addresses asynchronously.  The matrices
//     behind a device array of device pointers (the *Batched routines) are only known when the
//     operation runs, so they are checked then.
//   * The computation itself is queued on the handle's stream (nysact_emu::enqueue) and runs when
//     the host synchronises.  Double routines compute in double; single ones accumulate in double.
//   * Workspaces (and, where the contract says "destroyed", inputs) are overwritten with NaN bit
//     patterns, so that code relying on their contents after the call shows up.
#include "emu.h"

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <Eigen/Dense>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

// The opaque handle types the headers declare (struct cublasContext* etc.).
struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasPointerMode_t pointerMode = CUBLAS_POINTER_MODE_HOST;
  cublasMath_t mathMode = CUBLAS_DEFAULT_MATH;
};
struct cusolverDnContext {
  cudaStream_t stream = nullptr;
};
struct cusolverDnParams {
  int unused = 0;
};

namespace {

using Index = int64_t;

bool brokenContext() { return nysact_emu::sticky() != cudaSuccess; }

// Bytes spanned by a column-major rows x cols matrix with leading dimension ld (0 when empty).
size_t matrixBytes(Index rows, Index cols, Index ld, size_t element) {
  if (rows <= 0 || cols <= 0) return 0;
  return static_cast<size_t>((cols - 1) * ld + rows) * element;
}

// Bytes spanned by a vector of n elements with increment inc (BLAS: the array starts at the
// pointer whatever the sign of inc).
size_t vectorBytes(Index n, Index inc, size_t element) {
  if (n <= 0) return 0;
  return static_cast<size_t>(1 + (n - 1) * (inc < 0 ? -inc : inc)) * element;
}

std::string describePointer(const void* p, size_t bytes) {
  std::ostringstream s;
  s << bytes << " bytes at " << p;
  return s.str();
}

// Checks that [p, p + bytes) is device-accessible; otherwise faults with a message naming the
// routine and the operand, and returns false.
bool operandOk(const char* routine, const std::string& operand, const void* p, size_t bytes) {
  if (nysact_emu::deviceAccessible(p, bytes)) return true;
  nysact_emu::fault(std::string(routine) + ": " + operand + " (" + describePointer(p, bytes) +
                    ") is not device memory or overruns its allocation");
  return false;
}

std::string matrixName(const char* name, Index rows, Index cols, Index ld) {
  std::ostringstream s;
  s << name << ", " << rows << " x " << cols << " with leading dimension " << ld;
  return s.str();
}

bool matrixOk(const char* routine, const char* name, const void* p, Index rows, Index cols, Index ld, size_t element) {
  return operandOk(routine, matrixName(name, rows, cols, ld), p, matrixBytes(rows, cols, ld, element));
}

// A strided batch of `count` matrices, matrix b at p + b * stride elements: checks the whole span.
bool stridedOk(const char* routine, const char* name, const void* p, Index rows, Index cols, Index ld, Index stride,
               Index count, size_t element) {
  const size_t one = matrixBytes(rows, cols, ld, element);
  if (one == 0 || count <= 0) return true;
  const Index last = (count - 1) * stride;
  const Index low = std::min<Index>(0, last), high = std::max<Index>(0, last);
  const char* start = static_cast<const char*>(p) + low * static_cast<Index>(element);
  std::ostringstream s;
  s << matrixName(name, rows, cols, ld);
  if (count > 1) s << ", " << count << " matrices " << stride << " elements apart";
  return operandOk(routine, s.str(), start, static_cast<size_t>(high - low) * element + one);
}

void scribble(void* p, size_t bytes) {
  if (p != nullptr && bytes > 0) std::memset(p, 0xff, bytes);  // all-ones: a NaN as float and double
}

template <typename T>
T nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

bool validOp(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }
bool validFill(cublasFillMode_t uplo) { return uplo == CUBLAS_FILL_MODE_LOWER || uplo == CUBLAS_FILL_MODE_UPPER; }
bool validSide(cublasSideMode_t side) { return side == CUBLAS_SIDE_LEFT || side == CUBLAS_SIDE_RIGHT; }
bool validDiag(cublasDiagType_t diag) { return diag == CUBLAS_DIAG_NON_UNIT || diag == CUBLAS_DIAG_UNIT; }
bool validJobz(cusolverEigMode_t jobz) { return jobz == CUSOLVER_EIG_MODE_NOVECTOR || jobz == CUSOLVER_EIG_MODE_VECTOR; }

// ---- host kernels --------------------------------------------------------------------------------

// C = alpha op(A) op(B) + beta C (m x n, inner dimension k), accumulated in double.  op(A) and op(B)
// are read only when k > 0 and alpha != 0; C is not read when beta == 0 (BLAS convention).  Real
// types: CUBLAS_OP_C is CUBLAS_OP_T.
template <typename T>
void gemmHost(bool transA, bool transB, Index m, Index n, Index k, double alpha, const T* a, Index lda, const T* b,
              Index ldb, double beta, T* c, Index ldc) {
  const bool product = k > 0 && alpha != 0.0;
  std::vector<double> column(static_cast<size_t>(product ? k : 0)), sum(static_cast<size_t>(m));
  for (Index j = 0; j < n; ++j) {
    std::fill(sum.begin(), sum.end(), 0.0);
    if (product) {
      for (Index l = 0; l < k; ++l) column[l] = transB ? b[j + l * ldb] : b[l + j * ldb];  // op(B)(l, j)
      if (!transA) {
        for (Index l = 0; l < k; ++l) {
          const T* al = a + l * lda;  // column l of A = op(A)(:, l)
          const double blj = column[l];
          for (Index i = 0; i < m; ++i) sum[i] += static_cast<double>(al[i]) * blj;
        }
      } else {
        for (Index i = 0; i < m; ++i) {
          const T* ai = a + i * lda;  // column i of A = row i of op(A)
          double s = 0.0;
          for (Index l = 0; l < k; ++l) s += static_cast<double>(ai[l]) * column[l];
          sum[i] = s;
        }
      }
    }
    T* cj = c + j * ldc;
    for (Index i = 0; i < m; ++i) {
      const double value = beta == 0.0 ? alpha * sum[i] : alpha * sum[i] + beta * static_cast<double>(cj[i]);
      cj[i] = static_cast<T>(value);
    }
  }
}

using MatrixMap = Eigen::Map<Eigen::MatrixXd, 0, Eigen::OuterStride<>>;
using ConstMatrixMap = Eigen::Map<const Eigen::MatrixXd, 0, Eigen::OuterStride<>>;

// B = alpha op(A)⁻¹ B (side LEFT, A m x m) or B = alpha B op(A)⁻¹ (side RIGHT, A n x n); only A's
// `uplo` triangle is read, and not its diagonal when diag is UNIT.  alpha == 0 sets B to zero
// without reading A.
void trsmHost(cublasSideMode_t side, cublasFillMode_t uplo, cublasOperation_t trans, cublasDiagType_t diag, Index m,
              Index n, double alpha, const double* a, Index lda, double* b, Index ldb) {
  MatrixMap bm(b, m, n, Eigen::OuterStride<>(ldb));
  if (alpha == 0.0) {
    bm.setZero();
    return;
  }
  if (alpha != 1.0) bm *= alpha;
  const Index order = side == CUBLAS_SIDE_LEFT ? m : n;
  const ConstMatrixMap am(a, order, order, Eigen::OuterStride<>(lda));
  const bool transposed = trans != CUBLAS_OP_N;
  auto solve = [&](const auto& triangle) {
    if (side == CUBLAS_SIDE_LEFT) {
      if (transposed) {
        triangle.transpose().template solveInPlace<Eigen::OnTheLeft>(bm);
      } else {
        triangle.template solveInPlace<Eigen::OnTheLeft>(bm);
      }
    } else {
      if (transposed) {
        triangle.transpose().template solveInPlace<Eigen::OnTheRight>(bm);
      } else {
        triangle.template solveInPlace<Eigen::OnTheRight>(bm);
      }
    }
  };
  const bool lower = uplo == CUBLAS_FILL_MODE_LOWER, unit = diag == CUBLAS_DIAG_UNIT;
  if (lower && unit) solve(am.triangularView<Eigen::UnitLower>());
  if (lower && !unit) solve(am.triangularView<Eigen::Lower>());
  if (!lower && unit) solve(am.triangularView<Eigen::UnitUpper>());
  if (!lower && !unit) solve(am.triangularView<Eigen::Upper>());
}

// Cholesky factorisation in place of the `uplo` triangle of the n x n matrix a: A = L Lᵀ (lower) or
// A = Uᵀ U (upper); the other triangle is neither read nor written.  Returns 0, or i > 0 when the
// leading minor of order i is not positive definite (its pivot is <= 0 or NaN, as LAPACK's dpotrf
// tests it); the factorisation stops there, leaving columns before i factored (LAPACK's state).
int choleskyHost(bool lower, Index n, double* a, Index lda) {
  auto at = [&](Index i, Index j) -> double& { return a[i + j * lda]; };
  for (Index j = 0; j < n; ++j) {
    // F(i, j) is the factor's entry: L(i, j) (i >= j) for lower, U(j, i) for upper.
    auto f = [&](Index i, Index l) -> double& { return lower ? at(i, l) : at(l, i); };
    double pivot = f(j, j);
    for (Index l = 0; l < j; ++l) pivot -= f(j, l) * f(j, l);
    if (!(pivot > 0.0)) {
      f(j, j) = pivot;
      return static_cast<int>(j + 1);
    }
    const double d = std::sqrt(pivot);
    f(j, j) = d;
    for (Index i = j + 1; i < n; ++i) {
      double s = f(i, j);
      for (Index l = 0; l < j; ++l) s -= f(i, l) * f(j, l);
      f(i, j) = s / d;
    }
  }
  return 0;
}

// Whether the `uplo` triangle (the part a solver reads) of the n x n matrix a is finite.
template <typename T>
bool triangleFinite(bool lower, Index n, const T* a, Index lda) {
  for (Index j = 0; j < n; ++j)
    for (Index i = lower ? j : 0; i < (lower ? n : j + 1); ++i)
      if (!std::isfinite(static_cast<double>(a[i + j * lda]))) return false;
  return true;
}

// The batched solvers treat a non-finite input matrix as a fault.  cuSOLVER does not say what its
// batched routines do with one (reports differ: info > 0, or info 0 with NaN results), and one
// launch serves every matrix of the batch, so the backend guards its batches (nystrom.cu
// batchGuardKernel) and must never pass one; the emulation checks that it does not.
template <typename T>
bool batchInputFinite(const char* routine, int64_t index, bool lower, Index n, const T* a, Index lda) {
  if (triangleFinite(lower, n, a, lda)) return true;
  nysact_emu::fault(std::string(routine) + ": batch matrix " + std::to_string(index) +
                    " holds a non-finite value (cuSOLVER leaves the result unspecified; guard the batch)");
  return false;
}

// Symmetric eigendecomposition of the n x n matrix a whose `uplo` triangle alone is read; eigenvalues
// ascending into w; with `vectors`, the orthonormal eigenvectors overwrite a (column j belongs to
// w[j]), otherwise a's `uplo` triangle is destroyed (NaN) and the other left as it was.
// Non-finite input (or a failure of Eigen's solver): every output is NaN and the return value is
// max(1, n - 1) > 0, cuSOLVER's "off-diagonal elements of the tridiagonal form did not converge";
// callers test both.  Returns 0 on success.  Computes in double whatever T is.  `injected`: an
// injected failure (NYSACT_CUDA_EMU_FAULTS=syev), answered as non-finite input is.
template <typename T>
int symmetricEigenHost(bool vectors, bool lower, Index n, T* a, Index lda, T* w, bool injected = false) {
  if (n == 0) return 0;
  Eigen::MatrixXd full(n, n);
  bool finite = true;
  for (Index j = 0; j < n; ++j) {
    for (Index i = 0; i < n; ++i) {
      const bool stored = lower ? i >= j : i <= j;
      const double value = static_cast<double>(stored ? a[i + j * lda] : a[j + i * lda]);
      finite = finite && std::isfinite(value);
      full(i, j) = value;
    }
  }
  finite = finite && !injected;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver;
  if (finite) {
    solver.compute(full, vectors ? Eigen::ComputeEigenvectors : Eigen::EigenvaluesOnly);
    finite = solver.info() == Eigen::Success;
  }
  for (Index j = 0; j < n; ++j) {
    w[j] = finite ? static_cast<T>(solver.eigenvalues()(j)) : nan<T>();
    for (Index i = 0; i < n; ++i) {
      if (vectors) {
        a[i + j * lda] = finite ? static_cast<T>(solver.eigenvectors()(i, j)) : nan<T>();
      } else if (lower ? i >= j : i <= j) {
        a[i + j * lda] = nan<T>();
      }
    }
  }
  return finite ? 0 : static_cast<int>(std::max<Index>(1, n - 1));
}

// ---- cuSOLVER helpers -------------------------------------------------------------------------------

// A rejected argument: cuSOLVER returns CUSOLVER_STATUS_INVALID_VALUE and reports info = -position
// (the argument's position, not counting the handle) in its first info entry, in stream order.
cusolverStatus_t rejectArgument(cudaStream_t stream, int* info, int position) {
  if (!brokenContext() && info != nullptr && nysact_emu::deviceAccessible(info, sizeof(int))) {
    nysact_emu::enqueue(stream, [info, position] { *info = -position; });
  }
  return CUSOLVER_STATUS_INVALID_VALUE;
}

// Workspace sizes the emulated bufferSize routines report (in elements).  Any deterministic size
// would do; these are LAPACK's documented minimum workspaces, so they grow as the real ones do.
int64_t syevdWork(cusolverEigMode_t jobz, int64_t n) {
  return std::max<int64_t>(1, jobz == CUSOLVER_EIG_MODE_VECTOR ? 1 + 6 * n + 2 * n * n : 2 * n + 1);
}
int64_t potrfWork(int64_t n) { return std::max<int64_t>(1, 64 * n); }  // a blocked factorisation's panel
int64_t gesvdWork(int64_t m, int64_t n) {
  const int64_t lo = std::min(m, n), hi = std::max(m, n);
  return std::max<int64_t>({1, 3 * lo + hi, 5 * lo});
}
template <typename T>
size_t syevBatchedDeviceBytes(int64_t n, int64_t batch) {
  return static_cast<size_t>(std::max<int64_t>(1, batch * (n * n + n))) * sizeof(T);
}

bool fitsInt(int64_t value) { return value <= INT_MAX; }

bool isJob(signed char job, char upper) { return job == upper || job == upper - 'A' + 'a'; }
bool validSvdJob(signed char job) { return isJob(job, 'A') || isJob(job, 'S') || isJob(job, 'O') || isJob(job, 'N'); }

// Which element types XsyevBatched supports here: real single or double, all three types equal.
enum class Precision { Float, Double, Unsupported };
Precision syevPrecision(cudaDataType a, cudaDataType w, cudaDataType compute) {
  if (a == CUDA_R_64F && w == CUDA_R_64F && compute == CUDA_R_64F) return Precision::Double;
  if (a == CUDA_R_32F && w == CUDA_R_32F && compute == CUDA_R_32F) return Precision::Float;
  return Precision::Unsupported;
}

}  // namespace

extern "C" {

// ==== cuBLAS: handles ===============================================================================

// cublasCreate: a new handle on the default stream, pointer mode HOST, default math.
cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

// cublasDestroy: releases the handle; like the real one, it synchronises the device first.
cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  (void)nysact_emu::drain();
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

// cublasSetStream: later calls on this handle are ordered on `streamId` (nullptr: the default stream).
cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t streamId) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = streamId;
  return CUBLAS_STATUS_SUCCESS;
}

// cublasSetMathMode: recorded only (the emulation computes the same way in every mode, and does not
// validate the mode: the set of modes differs between cuBLAS versions).
cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->mathMode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

// cublasSetPointerMode: HOST or DEVICE scalars (the emulated routines support HOST only).
cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) return CUBLAS_STATUS_INVALID_VALUE;
  handle->pointerMode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

// cublasGetStatusName: the enumerator's name.
const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}

// cublasGetStatusString: a short description of the status.
const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid value was used as an argument";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "an absent device architectural feature is required";
    case CUBLAS_STATUS_MAPPING_ERROR: return "an access to GPU memory space failed";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "an error was detected when checking the current licensing";
  }
  return "unknown cuBLAS status";
}

}  // extern "C"

namespace {

// The argument rules of cublas<t>gemm (and, per matrix, gemmStridedBatched): m, n, k >= 0; valid
// ops; lda >= max(1, rows of A as stored) (m for op N, k otherwise); ldb >= max(1, k for op N, n
// otherwise); ldc >= max(1, m); alpha and beta not NULL.
cublasStatus_t checkGemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                         int k, const void* alpha, int lda, int ldb, const void* beta, int ldc) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || k < 0 || !validOp(transa) || !validOp(transb)) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, transa == CUBLAS_OP_N ? m : k)) return CUBLAS_STATUS_INVALID_VALUE;
  if (ldb < std::max(1, transb == CUBLAS_OP_N ? k : n)) return CUBLAS_STATUS_INVALID_VALUE;
  if (ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
  if (alpha == nullptr || beta == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (handle->pointerMode != CUBLAS_POINTER_MODE_HOST) return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}

// cublasSgemm / cublasDgemm / one matrix of a strided batch: checks the operands and queues the
// product.  A is stored (m x k for op N, k x m otherwise), B (k x n for op N, n x k otherwise).
template <typename T>
cublasStatus_t gemm(const char* routine, cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                    int m, int n, int k, const T* alpha, const T* a, int lda, Index strideA, const T* b, int ldb,
                    Index strideB, const T* beta, T* c, int ldc, Index strideC, int batchCount) {
  const cublasStatus_t status = checkGemm(handle, transa, transb, m, n, k, alpha, lda, ldb, beta, ldc);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0 || batchCount == 0 || brokenContext()) return CUBLAS_STATUS_SUCCESS;
  const double alphaValue = static_cast<double>(*alpha), betaValue = static_cast<double>(*beta);
  const bool transA = transa != CUBLAS_OP_N, transB = transb != CUBLAS_OP_N;
  if (k > 0 && alphaValue != 0.0) {
    if (!stridedOk(routine, "A", a, transA ? k : m, transA ? m : k, lda, strideA, batchCount, sizeof(T)) ||
        !stridedOk(routine, "B", b, transB ? n : k, transB ? k : n, ldb, strideB, batchCount, sizeof(T))) {
      return CUBLAS_STATUS_SUCCESS;
    }
  }
  if (!stridedOk(routine, "C", c, m, n, ldc, strideC, batchCount, sizeof(T))) return CUBLAS_STATUS_SUCCESS;
  nysact_emu::enqueue(handle->stream, [=] {
    for (Index i = 0; i < batchCount; ++i) {
      gemmHost<T>(transA, transB, m, n, k, alphaValue, a + i * strideA, lda, b + i * strideB, ldb, betaValue,
                  c + i * strideC, ldc);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

// The argument rules of cublas<t>trsm (and trsmBatched per matrix): valid side, uplo, trans, diag;
// m, n >= 0; lda >= max(1, m) for side LEFT, max(1, n) for side RIGHT; ldb >= max(1, m); alpha not
// NULL.
cublasStatus_t checkTrsm(cublasHandle_t handle, cublasSideMode_t side, cublasFillMode_t uplo,
                         cublasOperation_t trans, cublasDiagType_t diag, int m, int n, const double* alpha, int lda,
                         int ldb) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!validSide(side) || !validFill(uplo) || !validOp(trans) || !validDiag(diag)) return CUBLAS_STATUS_INVALID_VALUE;
  if (m < 0 || n < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (lda < std::max(1, side == CUBLAS_SIDE_LEFT ? m : n) || ldb < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
  if (alpha == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (handle->pointerMode != CUBLAS_POINTER_MODE_HOST) return CUBLAS_STATUS_NOT_SUPPORTED;
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

// ==== cuBLAS: level 2 and 3 ========================================================================

// cublasSgemm: C = alpha op(A) op(B) + beta C, single precision (accumulated in double here).
cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                              const float* beta, float* C, int ldc) {
  return gemm<float>("cublasSgemm", handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// cublasDgemm: C = alpha op(A) op(B) + beta C, double precision.
cublasStatus_t cublasDgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const double* alpha, const double* A, int lda, const double* B, int ldb,
                              const double* beta, double* C, int ldc) {
  return gemm<double>("cublasDgemm", handle, transa, transb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// cublasDgemmStridedBatched: for i < batchCount, C + i strideC = alpha op(A + i strideA) op(B + i
// strideB) + beta (C + i strideC); batchCount >= 0.
cublasStatus_t cublasDgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const double* alpha, const double* A, int lda,
                                         long long int strideA, const double* B, int ldb, long long int strideB,
                                         const double* beta, double* C, int ldc, long long int strideC,
                                         int batchCount) {
  return gemm<double>("cublasDgemmStridedBatched", handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb,
                      strideB, beta, C, ldc, strideC, batchCount);
}

// cublasDtrsm: solves op(A) X = alpha B (side LEFT, A m x m) or X op(A) = alpha B (side RIGHT, A n x
// n) for X, which overwrites B (m x n).  A is triangular (`uplo`; the other triangle is not read),
// with a unit diagonal (not read) when diag is UNIT.
cublasStatus_t cublasDtrsm_v2(cublasHandle_t handle, cublasSideMode_t side, cublasFillMode_t uplo,
                              cublasOperation_t trans, cublasDiagType_t diag, int m, int n, const double* alpha,
                              const double* A, int lda, double* B, int ldb) {
  static const char* const routine = "cublasDtrsm";
  const cublasStatus_t status = checkTrsm(handle, side, uplo, trans, diag, m, n, alpha, lda, ldb);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (m == 0 || n == 0 || brokenContext()) return CUBLAS_STATUS_SUCCESS;
  const double alphaValue = *alpha;
  const int order = side == CUBLAS_SIDE_LEFT ? m : n;
  if ((alphaValue != 0.0 && !matrixOk(routine, "A", A, order, order, lda, sizeof(double))) ||
      !matrixOk(routine, "B", B, m, n, ldb, sizeof(double))) {
    return CUBLAS_STATUS_SUCCESS;
  }
  nysact_emu::enqueue(handle->stream,
                      [=] { trsmHost(side, uplo, trans, diag, m, n, alphaValue, A, lda, B, ldb); });
  return CUBLAS_STATUS_SUCCESS;
}

// cublasDtrsmBatched: cublasDtrsm on each pair (A[i], B[i]), i < batchCount, where A and B are
// device arrays of device pointers (read when the operation runs, in stream order).
cublasStatus_t cublasDtrsmBatched(cublasHandle_t handle, cublasSideMode_t side, cublasFillMode_t uplo,
                                  cublasOperation_t trans, cublasDiagType_t diag, int m, int n, const double* alpha,
                                  const double* const A[], int lda, double* const B[], int ldb, int batchCount) {
  static const char* const routine = "cublasDtrsmBatched";
  const cublasStatus_t status = checkTrsm(handle, side, uplo, trans, diag, m, n, alpha, lda, ldb);
  if (status != CUBLAS_STATUS_SUCCESS) return status;
  if (batchCount < 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (m == 0 || n == 0 || batchCount == 0 || brokenContext()) return CUBLAS_STATUS_SUCCESS;
  const double alphaValue = *alpha;
  const size_t arrayBytes = static_cast<size_t>(batchCount) * sizeof(void*);
  if (!operandOk(routine, "the pointer array A", A, arrayBytes) ||
      !operandOk(routine, "the pointer array B", B, arrayBytes)) {
    return CUBLAS_STATUS_SUCCESS;
  }
  const int order = side == CUBLAS_SIDE_LEFT ? m : n;
  nysact_emu::enqueue(handle->stream, [=] {
    for (int i = 0; i < batchCount; ++i) {
      const std::string index = "[" + std::to_string(i) + "]";
      if ((alphaValue != 0.0 && !matrixOk(routine, ("A" + index).c_str(), A[i], order, order, lda, sizeof(double))) ||
          !matrixOk(routine, ("B" + index).c_str(), B[i], m, n, ldb, sizeof(double))) {
        return;  // a faulting kernel: the rest of the batch is not computed
      }
      trsmHost(side, uplo, trans, diag, m, n, alphaValue, A[i], lda, B[i], ldb);
    }
  });
  return CUBLAS_STATUS_SUCCESS;
}

// ==== cuSOLVER: handles ============================================================================

// cusolverDnCreate: a new handle on the default stream.
cusolverStatus_t cusolverDnCreate(cusolverDnHandle_t* handle) {
  if (handle == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *handle = new cusolverDnContext();
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnDestroy: releases the handle (host resources only; no synchronisation).
cusolverStatus_t cusolverDnDestroy(cusolverDnHandle_t handle) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnSetStream: later calls on this handle are ordered on `streamId`.
cusolverStatus_t cusolverDnSetStream(cusolverDnHandle_t handle, cudaStream_t streamId) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  handle->stream = streamId;
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnCreateParams / cusolverDnDestroyParams: the 64-bit API's options object (default
// algorithm; the emulation has only one).
cusolverStatus_t cusolverDnCreateParams(cusolverDnParams_t* params) {
  if (params == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *params = new cusolverDnParams();
  return CUSOLVER_STATUS_SUCCESS;
}

cusolverStatus_t cusolverDnDestroyParams(cusolverDnParams_t params) {
  if (params == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  delete params;
  return CUSOLVER_STATUS_SUCCESS;
}

// ==== cuSOLVER: symmetric eigensolvers =============================================================

// cusolverDnDsyevd_bufferSize: the `work` length (doubles) cusolverDnDsyevd needs for these
// arguments.  Same argument rules as cusolverDnDsyevd.
cusolverStatus_t cusolverDnDsyevd_bufferSize(cusolverDnHandle_t handle, cusolverEigMode_t jobz, cublasFillMode_t uplo,
                                             int n, const double* A, int lda, const double* W, int* lwork) {
  (void)A;
  (void)W;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (!validJobz(jobz) || !validFill(uplo) || n < 0 || lda < std::max(1, n) || lwork == nullptr) {
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  const int64_t size = syevdWork(jobz, n);
  if (!fitsInt(size)) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = static_cast<int>(size);
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnDsyevd: eigenvalues (ascending, into W[0..n)) and, for jobz VECTOR, orthonormal
// eigenvectors (overwriting A: column j pairs with W[j]) of the symmetric n x n matrix A, of which
// only the `uplo` triangle is read.  *info: 0 on success, -i for a wrong i-th argument (with
// CUSOLVER_STATUS_INVALID_VALUE), > 0 when it did not converge (here: for non-finite input, with NaN
// outputs).  Rules: valid jobz and uplo, n >= 0, lda >= max(1, n), lwork >= the bufferSize.
cusolverStatus_t cusolverDnDsyevd(cusolverDnHandle_t handle, cusolverEigMode_t jobz, cublasFillMode_t uplo, int n,
                                  double* A, int lda, double* W, double* work, int lwork, int* info) {
  static const char* const routine = "cusolverDnDsyevd";
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  const cudaStream_t stream = handle->stream;
  if (!validJobz(jobz)) return rejectArgument(stream, info, 1);
  if (!validFill(uplo)) return rejectArgument(stream, info, 2);
  if (n < 0) return rejectArgument(stream, info, 3);
  if (lda < std::max(1, n)) return rejectArgument(stream, info, 5);
  if (lwork < syevdWork(jobz, n)) return rejectArgument(stream, info, 8);
  if (brokenContext()) return CUSOLVER_STATUS_SUCCESS;
  if (!matrixOk(routine, "A", A, n, n, lda, sizeof(double)) ||
      !operandOk(routine, "W", W, static_cast<size_t>(n) * sizeof(double)) ||
      !operandOk(routine, "work", work, static_cast<size_t>(lwork) * sizeof(double)) ||
      !operandOk(routine, "info", info, sizeof(int))) {
    return CUSOLVER_STATUS_SUCCESS;
  }
  const bool injected = nysact_emu::injectFault("syev");
  nysact_emu::enqueue(stream, [=] {
    *info = symmetricEigenHost<double>(jobz == CUSOLVER_EIG_MODE_VECTOR, uplo == CUBLAS_FILL_MODE_LOWER, n, A, lda, W,
                                       injected);
    scribble(work, static_cast<size_t>(lwork) * sizeof(double));
  });
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnXsyevBatched_bufferSize: device and host workspace bytes for cusolverDnXsyevBatched
// (the emulation needs no host workspace: 0).  Same argument rules as cusolverDnXsyevBatched.
cusolverStatus_t cusolverDnXsyevBatched_bufferSize(cusolverDnHandle_t handle, cusolverDnParams_t params,
                                                   cusolverEigMode_t jobz, cublasFillMode_t uplo, int64_t n,
                                                   cudaDataType dataTypeA, const void* A, int64_t lda,
                                                   cudaDataType dataTypeW, const void* W, cudaDataType computeType,
                                                   size_t* workspaceInBytesOnDevice, size_t* workspaceInBytesOnHost,
                                                   int64_t batchSize) {
  (void)A;
  (void)W;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (params == nullptr || !validJobz(jobz) || !validFill(uplo) || n < 0 || lda < std::max<int64_t>(1, n) ||
      batchSize < 0 || workspaceInBytesOnDevice == nullptr || workspaceInBytesOnHost == nullptr) {
    return CUSOLVER_STATUS_INVALID_VALUE;
  }
  const Precision precision = syevPrecision(dataTypeA, dataTypeW, computeType);
  if (precision == Precision::Unsupported) return CUSOLVER_STATUS_NOT_SUPPORTED;
  if (n > 0 && batchSize > 0 && lda > INT32_MAX / n / batchSize) return CUSOLVER_STATUS_INVALID_VALUE;
  *workspaceInBytesOnDevice = precision == Precision::Double ? syevBatchedDeviceBytes<double>(n, batchSize)
                                                             : syevBatchedDeviceBytes<float>(n, batchSize);
  *workspaceInBytesOnHost = 0;
  return CUSOLVER_STATUS_SUCCESS;
}

}  // extern "C"

namespace {

template <typename T>
cusolverStatus_t syevBatched(cudaStream_t stream, cusolverEigMode_t jobz, cublasFillMode_t uplo, int64_t n, T* a,
                             int64_t lda, T* w, void* work, size_t workBytes, int* info, int64_t batch) {
  static const char* const routine = "cusolverDnXsyevBatched";
  if (workBytes < syevBatchedDeviceBytes<T>(n, batch)) return rejectArgument(stream, info, 12);
  if (batch == 0 || brokenContext()) return CUSOLVER_STATUS_SUCCESS;  // n == 0 still sets each info to 0
  const size_t matrixStride = static_cast<size_t>(lda * n);
  if (!stridedOk(routine, "A", a, n, n, lda, static_cast<Index>(matrixStride), batch, sizeof(T)) ||
      !operandOk(routine, "W", w, static_cast<size_t>(n * batch) * sizeof(T)) ||
      !operandOk(routine, "info", info, static_cast<size_t>(batch) * sizeof(int)) ||
      !operandOk(routine, "bufferOnDevice", work, workBytes)) {
    return CUSOLVER_STATUS_SUCCESS;
  }
  std::vector<bool> injected(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) injected[b] = nysact_emu::injectFault("syev");
  nysact_emu::enqueue(stream, [=] {
    for (int64_t b = 0; b < batch; ++b) {
      T* ab = a + static_cast<size_t>(b) * matrixStride;
      if (!batchInputFinite(routine, b, uplo == CUBLAS_FILL_MODE_LOWER, n, ab, lda)) return;
      info[b] = symmetricEigenHost<T>(jobz == CUSOLVER_EIG_MODE_VECTOR, uplo == CUBLAS_FILL_MODE_LOWER, n, ab, lda,
                                      w + b * n, injected[b]);
    }
    scribble(work, workBytes);
  });
  return CUSOLVER_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

// cusolverDnXsyevBatched (64-bit API): for each of batchSize symmetric n x n matrices stored one
// after the other (matrix k's (i, j) at A[i + lda j + lda n k]), of which only the `uplo` triangle is
// read: eigenvalues ascending into W[n k .. n k + n) and, for jobz VECTOR, orthonormal eigenvectors
// overwriting the matrix (column j pairs with eigenvalue j).  info has batchSize entries: 0, or > 0
// when matrix k did not converge (here: non-finite input, with NaN outputs); on
// CUSOLVER_STATUS_INVALID_VALUE, info[0] = -i names the wrong i-th argument (not counting the
// handle).  Supported here: real double or real single, with dataTypeA == dataTypeW == computeType
// (else CUSOLVER_STATUS_NOT_SUPPORTED).  The documented size limit n * lda * batchSize <= INT32_MAX
// is enforced (CUSOLVER_STATUS_INVALID_VALUE, as the documentation says; the buffer-size query too).
cusolverStatus_t cusolverDnXsyevBatched(cusolverDnHandle_t handle, cusolverDnParams_t params, cusolverEigMode_t jobz,
                                        cublasFillMode_t uplo, int64_t n, cudaDataType dataTypeA, void* A,
                                        int64_t lda, cudaDataType dataTypeW, void* W, cudaDataType computeType,
                                        void* bufferOnDevice, size_t workspaceInBytesOnDevice, void* bufferOnHost,
                                        size_t workspaceInBytesOnHost, int* info, int64_t batchSize) {
  (void)bufferOnHost;
  (void)workspaceInBytesOnHost;  // the emulation asks for no host workspace
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  const cudaStream_t stream = handle->stream;
  if (params == nullptr) return rejectArgument(stream, info, 1);
  if (!validJobz(jobz)) return rejectArgument(stream, info, 2);
  if (!validFill(uplo)) return rejectArgument(stream, info, 3);
  if (n < 0) return rejectArgument(stream, info, 4);
  if (lda < std::max<int64_t>(1, n)) return rejectArgument(stream, info, 7);
  if (batchSize < 0) return rejectArgument(stream, info, 16);
  const Precision precision = syevPrecision(dataTypeA, dataTypeW, computeType);
  if (precision == Precision::Unsupported) return CUSOLVER_STATUS_NOT_SUPPORTED;
  if (n > 0 && batchSize > 0 && lda > INT32_MAX / n / batchSize) return CUSOLVER_STATUS_INVALID_VALUE;
  if (precision == Precision::Double) {
    return syevBatched<double>(stream, jobz, uplo, n, static_cast<double*>(A), lda, static_cast<double*>(W),
                               bufferOnDevice, workspaceInBytesOnDevice, info, batchSize);
  }
  return syevBatched<float>(stream, jobz, uplo, n, static_cast<float*>(A), lda, static_cast<float*>(W),
                            bufferOnDevice, workspaceInBytesOnDevice, info, batchSize);
}

// ==== cuSOLVER: Cholesky ===========================================================================

// cusolverDnDpotrf_bufferSize: the Workspace length (doubles) cusolverDnDpotrf needs.  Same
// argument rules as cusolverDnDpotrf.
cusolverStatus_t cusolverDnDpotrf_bufferSize(cusolverDnHandle_t handle, cublasFillMode_t uplo, int n, double* A,
                                             int lda, int* Lwork) {
  (void)A;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (!validFill(uplo) || n < 0 || lda < std::max(1, n) || Lwork == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  const int64_t size = potrfWork(n);
  if (!fitsInt(size)) return CUSOLVER_STATUS_INVALID_VALUE;
  *Lwork = static_cast<int>(size);
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnDpotrf: Cholesky factorisation of the symmetric positive definite n x n matrix A, in
// place of its `uplo` triangle (A = L Lᵀ, lower; A = Uᵀ U, upper); the other triangle is not
// touched.  *devInfo: 0, or i > 0 when the leading minor of order i is not positive definite (A is
// then partly factored), or -i for a wrong i-th argument (with CUSOLVER_STATUS_INVALID_VALUE).
// Rules: valid uplo, n >= 0, lda >= max(1, n), Lwork >= the bufferSize.
cusolverStatus_t cusolverDnDpotrf(cusolverDnHandle_t handle, cublasFillMode_t uplo, int n, double* A, int lda,
                                  double* Workspace, int Lwork, int* devInfo) {
  static const char* const routine = "cusolverDnDpotrf";
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  const cudaStream_t stream = handle->stream;
  if (!validFill(uplo)) return rejectArgument(stream, devInfo, 1);
  if (n < 0) return rejectArgument(stream, devInfo, 2);
  if (lda < std::max(1, n)) return rejectArgument(stream, devInfo, 4);
  if (Lwork < potrfWork(n)) return rejectArgument(stream, devInfo, 6);
  if (brokenContext()) return CUSOLVER_STATUS_SUCCESS;
  if (!matrixOk(routine, "A", A, n, n, lda, sizeof(double)) ||
      !operandOk(routine, "Workspace", Workspace, static_cast<size_t>(Lwork) * sizeof(double)) ||
      !operandOk(routine, "devInfo", devInfo, sizeof(int))) {
    return CUSOLVER_STATUS_SUCCESS;
  }
  const bool injected = nysact_emu::injectFault("potrf");
  nysact_emu::enqueue(stream, [=] {
    *devInfo = injected ? std::min(n, 1) : choleskyHost(uplo == CUBLAS_FILL_MODE_LOWER, n, A, lda);
    scribble(Workspace, static_cast<size_t>(Lwork) * sizeof(double));
  });
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnDpotrfBatched: cusolverDnDpotrf on each Aarray[i] (n x n, leading dimension lda), i <
// batchSize, where Aarray is a device array of device pointers (read when the operation runs);
// infoArray[i] is matrix i's info.  On CUSOLVER_STATUS_INVALID_VALUE, infoArray[0] = -i names the
// wrong i-th argument.  Rules: valid uplo, n >= 0, lda >= max(1, n), batchSize >= 0.
cusolverStatus_t cusolverDnDpotrfBatched(cusolverDnHandle_t handle, cublasFillMode_t uplo, int n, double* Aarray[],
                                         int lda, int* infoArray, int batchSize) {
  static const char* const routine = "cusolverDnDpotrfBatched";
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  const cudaStream_t stream = handle->stream;
  if (!validFill(uplo)) return rejectArgument(stream, infoArray, 1);
  if (n < 0) return rejectArgument(stream, infoArray, 2);
  if (lda < std::max(1, n)) return rejectArgument(stream, infoArray, 4);
  if (batchSize < 0) return rejectArgument(stream, infoArray, 6);
  if (batchSize == 0 || brokenContext()) return CUSOLVER_STATUS_SUCCESS;
  if (!operandOk(routine, "the pointer array Aarray", Aarray, static_cast<size_t>(batchSize) * sizeof(void*)) ||
      !operandOk(routine, "infoArray", infoArray, static_cast<size_t>(batchSize) * sizeof(int))) {
    return CUSOLVER_STATUS_SUCCESS;
  }
  std::vector<bool> injected(static_cast<size_t>(batchSize));
  for (int i = 0; i < batchSize; ++i) injected[i] = nysact_emu::injectFault("potrf");
  nysact_emu::enqueue(stream, [=] {
    for (int i = 0; i < batchSize; ++i) {
      const std::string name = "Aarray[" + std::to_string(i) + "]";
      if (!matrixOk(routine, name.c_str(), Aarray[i], n, n, lda, sizeof(double))) return;  // a faulting kernel
      const bool lower = uplo == CUBLAS_FILL_MODE_LOWER;
      if (!batchInputFinite(routine, i, lower, n, Aarray[i], lda)) return;
      infoArray[i] = injected[i] ? std::min(n, 1) : choleskyHost(lower, n, Aarray[i], lda);
      // The batched routine uses the other triangle as workspace: documented as destroyed.
      for (Index j = 0; j < n; ++j)
        for (Index r = 0; r < n; ++r)
          if (lower ? r < j : r > j) Aarray[i][r + j * lda] = nan<double>();
    }
  });
  return CUSOLVER_STATUS_SUCCESS;
}

// ==== cuSOLVER: singular value decomposition =======================================================

// cusolverDnDgesvd_bufferSize: the `work` length (doubles) cusolverDnDgesvd needs for an m x n
// matrix.  Rules: m, n >= 0.
cusolverStatus_t cusolverDnDgesvd_bufferSize(cusolverDnHandle_t handle, int m, int n, int* lwork) {
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  if (m < 0 || n < 0 || lwork == nullptr) return CUSOLVER_STATUS_INVALID_VALUE;
  *lwork = static_cast<int>(gesvdWork(m, n));
  return CUSOLVER_STATUS_SUCCESS;
}

// cusolverDnDgesvd: A = U Σ Vᵀ for an m x n matrix A with m >= n (cuSOLVER's gesvd supports only
// m >= n).  S[0..n) receives the singular values, descending.  jobu: 'A' all m columns of U into U
// (m x m); 'S' the first n columns into U (m x n); 'O' the first n columns overwrite A; 'N' none.
// jobvt: 'A' all n rows of Vᵀ into VT (n x n); 'S' the first min(m, n) = n rows; 'O' they overwrite
// A's first n rows; 'N' none.  VT is Vᵀ, not V.  Unless a job is 'O', A's contents are destroyed
// (NaN here).  rwork (may be NULL) receives unconverged superdiagonals only when info > 0, and is
// never touched here.  *info: 0; > 0 for non-convergence (here: non-finite input, with NaN outputs);
// -i for a wrong i-th argument (with CUSOLVER_STATUS_INVALID_VALUE).  Rules (LAPACK's, with
// cuSOLVER's m >= n): jobu, jobvt in 'A', 'S', 'O', 'N' and not both 'O'; m >= n >= 0;
// lda >= max(1, m); ldu >= 1, and >= m when jobu is 'A' or 'S'; ldvt >= 1, and >= n when jobvt is
// 'A' or 'S'; lwork >= the bufferSize.
cusolverStatus_t cusolverDnDgesvd(cusolverDnHandle_t handle, signed char jobu, signed char jobvt, int m, int n,
                                  double* A, int lda, double* S, double* U, int ldu, double* VT, int ldvt,
                                  double* work, int lwork, double* rwork, int* info) {
  static const char* const routine = "cusolverDnDgesvd";
  (void)rwork;
  if (handle == nullptr) return CUSOLVER_STATUS_NOT_INITIALIZED;
  const cudaStream_t stream = handle->stream;
  if (!validSvdJob(jobu)) return rejectArgument(stream, info, 1);
  if (!validSvdJob(jobvt) || (isJob(jobu, 'O') && isJob(jobvt, 'O'))) return rejectArgument(stream, info, 2);
  if (m < 0) return rejectArgument(stream, info, 3);
  if (n < 0 || n > m) return rejectArgument(stream, info, 4);
  if (lda < std::max(1, m)) return rejectArgument(stream, info, 6);
  const bool uAll = isJob(jobu, 'A'), uSome = isJob(jobu, 'S'), uOver = isJob(jobu, 'O');
  const bool vAll = isJob(jobvt, 'A'), vSome = isJob(jobvt, 'S'), vOver = isJob(jobvt, 'O');
  if (ldu < 1 || ((uAll || uSome) && ldu < m)) return rejectArgument(stream, info, 9);
  if (ldvt < 1 || ((vAll || vSome) && ldvt < n)) return rejectArgument(stream, info, 11);
  if (lwork < gesvdWork(m, n)) return rejectArgument(stream, info, 13);
  if (brokenContext()) return CUSOLVER_STATUS_SUCCESS;
  const int uColumns = uAll ? m : (uSome ? n : 0), vRows = (vAll || vSome) ? n : 0;
  if (!matrixOk(routine, "A", A, m, n, lda, sizeof(double)) ||
      !operandOk(routine, "S", S, static_cast<size_t>(n) * sizeof(double)) ||
      !matrixOk(routine, "U", U, uColumns > 0 ? m : 0, uColumns, ldu, sizeof(double)) ||
      !matrixOk(routine, "VT", VT, vRows, n, ldvt, sizeof(double)) ||
      !operandOk(routine, "work", work, static_cast<size_t>(lwork) * sizeof(double)) ||
      !operandOk(routine, "info", info, sizeof(int))) {
    return CUSOLVER_STATUS_SUCCESS;
  }
  const bool injected = nysact_emu::injectFault("gesvd");
  nysact_emu::enqueue(stream, [=] {
    scribble(work, static_cast<size_t>(lwork) * sizeof(double));
    *info = 0;
    if (m == 0 || n == 0) return;
    MatrixMap a(A, m, n, Eigen::OuterStride<>(lda));
    // An injected failure (NYSACT_CUDA_EMU_FAULTS) behaves as non-finite input: NaN out, info > 0.
    const bool finite = !injected && a.allFinite();
    const bool wantU = uColumns > 0 || uOver, wantV = vRows > 0 || vOver;
    unsigned int options = 0;
    if (wantU) options |= uAll ? Eigen::ComputeFullU : Eigen::ComputeThinU;
    if (wantV) options |= Eigen::ComputeFullV;  // m >= n: V is n x n either way
    Eigen::JacobiSVD<Eigen::MatrixXd> svd;
    if (finite) svd.compute(Eigen::MatrixXd(a), options);
    auto u = [&](Index i, Index j) { return finite ? svd.matrixU()(i, j) : nan<double>(); };
    auto vt = [&](Index i, Index j) { return finite ? svd.matrixV()(j, i) : nan<double>(); };
    for (Index j = 0; j < n; ++j) S[j] = finite ? svd.singularValues()(j) : nan<double>();
    for (Index j = 0; j < uColumns; ++j) {
      for (Index i = 0; i < m; ++i) U[i + j * ldu] = u(i, j);
    }
    for (Index j = 0; j < n; ++j) {
      for (Index i = 0; i < vRows; ++i) VT[i + j * ldvt] = vt(i, j);
    }
    if (uOver) {
      for (Index j = 0; j < n; ++j) {
        for (Index i = 0; i < m; ++i) a(i, j) = u(i, j);
      }
    } else if (vOver) {
      a.fill(nan<double>());
      for (Index j = 0; j < n; ++j) {
        for (Index i = 0; i < n; ++i) a(i, j) = vt(i, j);
      }
    } else {
      a.fill(nan<double>());  // "the contents of A are destroyed"
    }
    if (!finite) *info = std::max(1, n - 1);
  });
  return CUSOLVER_STATUS_SUCCESS;
}

}  // extern "C"
