// Tests of the emulated cuBLAS / cuSOLVER (blas.cpp) against naive reference loops on small random
// matrices: results, the parts of each operand a routine must not touch, argument validation, and
// (standalone) device-fault detection.  Prints "ok N checks", or each failure and exits nonzero.
//
// Built with -DNYSACT_EMU_BLAS_STANDALONE it needs only blas.cpp: this file then provides a stand-in
// for the emulation's runtime (emu.h) in which queued operations run at once and all memory counts as
// device memory, except in the fault tests, which register the blocks that are "allocated".
// Without it, it links against the emulated runtime and allocates with cudaMalloc.
#include "emu.h"

#include <cublas_v2.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#ifdef NYSACT_EMU_BLAS_STANDALONE
namespace test_runtime {
std::vector<std::string> faults;
cudaError_t stickyError = cudaSuccess;
cudaStream_t lastStream = nullptr;
size_t queued = 0;
// When strict, only registered blocks count as device memory.
bool strict = false;
struct Block {
  const char* begin;
  size_t bytes;
};
std::vector<Block> blocks;
void reset() {
  faults.clear();
  stickyError = cudaSuccess;
  strict = false;
}
}  // namespace test_runtime

namespace nysact_emu {
void enqueue(cudaStream_t stream, std::function<void()> op) {
  test_runtime::lastStream = stream;
  ++test_runtime::queued;
  op();
}
cudaError_t drain() { return test_runtime::stickyError; }
Memory classify(const void* p, size_t bytes) {
  if (!test_runtime::strict) return Memory::Device;
  const char* c = static_cast<const char*>(p);
  for (const auto& block : test_runtime::blocks) {
    if (c >= block.begin && c + bytes <= block.begin + block.bytes) return Memory::Device;
  }
  return Memory::Other;
}
void fault(const std::string& what) {
  std::printf("  (fault, as the test expects where it checks for one) %s\n", what.c_str());
  test_runtime::faults.push_back(what);
  test_runtime::stickyError = cudaErrorIllegalAddress;
}
cudaError_t sticky() { return test_runtime::stickyError; }
void setLastError(cudaError_t) {}
bool injectFault(const char*) { return false; }
size_t mallocLimit() { return SIZE_MAX; }
}  // namespace nysact_emu
#endif

namespace {

int checks = 0, failures = 0;

void check(bool ok, const std::string& what, int line) {
  ++checks;
  if (!ok) {
    ++failures;
    std::printf("FAIL (line %d): %s\n", line, what.c_str());
  }
}
#define CHECK(cond, what) check((cond), (what), __LINE__)

// Device memory the routines may touch: new[] (registered for the fault tests) or cudaMalloc.
template <typename T>
class Buffer {
 public:
  explicit Buffer(size_t n, T fill = T(0)) : n_(n) {
#ifdef NYSACT_EMU_BLAS_STANDALONE
    p_ = new T[std::max<size_t>(n, 1)];
    test_runtime::blocks.push_back({reinterpret_cast<const char*>(p_), n * sizeof(T)});
#else
    void* raw = nullptr;
    if (cudaMalloc(&raw, std::max<size_t>(n, 1) * sizeof(T)) != cudaSuccess) std::abort();
    p_ = static_cast<T*>(raw);
#endif
    std::fill(p_, p_ + n, fill);
  }
  ~Buffer() {
#ifdef NYSACT_EMU_BLAS_STANDALONE
    auto& blocks = test_runtime::blocks;
    blocks.erase(std::remove_if(blocks.begin(), blocks.end(),
                                [&](const test_runtime::Block& b) { return b.begin == reinterpret_cast<char*>(p_); }),
                 blocks.end());
    delete[] p_;
#else
    (void)cudaFree(p_);
#endif
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() { return p_; }
  T& operator[](size_t i) { return p_[i]; }
  size_t size() const { return n_; }
  std::vector<T> copy() const { return std::vector<T>(p_, p_ + n_); }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

void synchronize() {
#ifndef NYSACT_EMU_BLAS_STANDALONE
  (void)cudaDeviceSynchronize();
#endif
}

std::mt19937_64 rng(20240611);
double uniform() { return std::uniform_real_distribution<double>(-1.0, 1.0)(rng); }

template <typename T>
void fillRandom(Buffer<T>& b) {
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<T>(uniform());
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// A dense column-major matrix for the reference computations.
struct Dense {
  int rows, cols;
  std::vector<double> v;
  Dense(int r, int c) : rows(r), cols(c), v(static_cast<size_t>(r) * c, 0.0) {}
  double& operator()(int i, int j) { return v[i + static_cast<size_t>(j) * rows]; }
  double operator()(int i, int j) const { return v[i + static_cast<size_t>(j) * rows]; }
};

Dense multiply(const Dense& a, const Dense& b) {
  Dense c(a.rows, b.cols);
  for (int i = 0; i < a.rows; ++i)
    for (int j = 0; j < b.cols; ++j) {
      double s = 0;
      for (int l = 0; l < a.cols; ++l) s += a(i, l) * b(l, j);
      c(i, j) = s;
    }
  return c;
}

Dense transpose(const Dense& a) {
  Dense t(a.cols, a.rows);
  for (int i = 0; i < a.rows; ++i)
    for (int j = 0; j < a.cols; ++j) t(j, i) = a(i, j);
  return t;
}

template <typename T>
Dense fromStored(const T* p, int rows, int cols, int ld) {
  Dense d(rows, cols);
  for (int j = 0; j < cols; ++j)
    for (int i = 0; i < rows; ++i) d(i, j) = static_cast<double>(p[i + static_cast<size_t>(j) * ld]);
  return d;
}

double maxDiff(const Dense& a, const Dense& b) {
  double m = 0;
  for (size_t i = 0; i < a.v.size(); ++i) m = std::max(m, std::fabs(a.v[i] - b.v[i]));
  return std::isnan(m) ? std::numeric_limits<double>::infinity() : m;
}

double orthonormalityError(const Dense& q) {  // max |QᵀQ - I|
  Dense g = multiply(transpose(q), q);
  for (int i = 0; i < g.rows; ++i) g(i, i) -= 1.0;
  return maxDiff(g, Dense(g.rows, g.cols));
}

// Whether the stored entries outside the rows x cols block (rows rows..ld-1 of each column) kept
// their sentinel.
template <typename T>
bool paddingIntact(const T* p, int rows, int cols, int ld, T sentinel) {
  for (int j = 0; j < cols; ++j)
    for (int i = rows; i < ld; ++i)
      if (!(p[i + static_cast<size_t>(j) * ld] == sentinel)) return false;
  return true;
}

const char* opName(cublasOperation_t op) { return op == CUBLAS_OP_N ? "N" : op == CUBLAS_OP_T ? "T" : "C"; }

// ---- gemm ------------------------------------------------------------------------------------------

template <typename T>
void testGemmOne(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, double tolerance) {
  const int m = 5, n = 4, k = 3;
  const bool tA = ta != CUBLAS_OP_N, tB = tb != CUBLAS_OP_N;
  const int aRows = tA ? k : m, aCols = tA ? m : k, bRows = tB ? n : k, bCols = tB ? k : n;
  const int lda = aRows + 2, ldb = bRows + 1, ldc = m + 3;
  const T sentinel = static_cast<T>(77);
  Buffer<T> a(static_cast<size_t>(lda) * aCols), b(static_cast<size_t>(ldb) * bCols),
      c(static_cast<size_t>(ldc) * n, sentinel);
  fillRandom(a);
  fillRandom(b);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) c[i + j * ldc] = static_cast<T>(uniform());
  const Dense c0 = fromStored(c.data(), m, n, ldc);
  const T alpha = static_cast<T>(0.75), beta = static_cast<T>(-0.5);
  cublasStatus_t status;
  if constexpr (sizeof(T) == 4) {
    status = cublasSgemm(h, ta, tb, m, n, k, &alpha, a.data(), lda, b.data(), ldb, &beta, c.data(), ldc);
  } else {
    status = cublasDgemm(h, ta, tb, m, n, k, &alpha, a.data(), lda, b.data(), ldb, &beta, c.data(), ldc);
  }
  synchronize();
  const std::string name = std::string(sizeof(T) == 4 ? "Sgemm " : "Dgemm ") + opName(ta) + opName(tb);
  CHECK(status == CUBLAS_STATUS_SUCCESS, name + ": status");
  Dense opA = fromStored(a.data(), aRows, aCols, lda), opB = fromStored(b.data(), bRows, bCols, ldb);
  if (tA) opA = transpose(opA);
  if (tB) opB = transpose(opB);
  Dense expected = multiply(opA, opB);
  for (size_t i = 0; i < expected.v.size(); ++i) expected.v[i] = alpha * expected.v[i] + beta * c0.v[i];
  CHECK(maxDiff(fromStored(c.data(), m, n, ldc), expected) < tolerance, name + ": C = alpha op(A) op(B) + beta C");
  CHECK(paddingIntact(c.data(), m, n, ldc, sentinel), name + ": C's rows beyond m untouched");
}

void testGemm(cublasHandle_t h) {
  const cublasOperation_t ops[] = {CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C};
  for (auto ta : ops)
    for (auto tb : ops) {
      testGemmOne<float>(h, ta, tb, 1e-5);
      testGemmOne<double>(h, ta, tb, 1e-13);
    }

  // beta = 0: C is not read (NaN in C does not propagate); alpha = 0: A and B are not read.
  const int m = 3, n = 2, k = 4;
  Buffer<double> a(m * k), b(k * n), c(m * n, kNaN);
  fillRandom(a);
  fillRandom(b);
  const double one = 1.0, zero = 0.0, two = 2.0;
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.data(), m, b.data(), k, &zero, c.data(), m) ==
            CUBLAS_STATUS_SUCCESS,
        "Dgemm beta=0: status");
  synchronize();
  bool finite = true;
  for (size_t i = 0; i < c.size(); ++i) finite = finite && std::isfinite(c[i]);
  CHECK(finite, "Dgemm beta=0: NaN in C is ignored");
  for (size_t i = 0; i < a.size(); ++i) a[i] = kNaN;
  for (size_t i = 0; i < c.size(); ++i) c[i] = 1.5;
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &zero, a.data(), m, b.data(), k, &two, c.data(), m) ==
            CUBLAS_STATUS_SUCCESS,
        "Dgemm alpha=0: status");
  synchronize();
  bool scaled = true;
  for (size_t i = 0; i < c.size(); ++i) scaled = scaled && c[i] == 3.0;
  CHECK(scaled, "Dgemm alpha=0: C = beta C without reading A");
  // k = 0: C = beta C.
  for (size_t i = 0; i < c.size(); ++i) c[i] = 1.5;
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, 0, &one, a.data(), m, b.data(), 1, &two, c.data(), m) ==
            CUBLAS_STATUS_SUCCESS,
        "Dgemm k=0: status");
  synchronize();
  scaled = true;
  for (size_t i = 0; i < c.size(); ++i) scaled = scaled && c[i] == 3.0;
  CHECK(scaled, "Dgemm k=0: C = beta C");
}

void testGemmStridedBatched(cublasHandle_t h) {
  const int m = 4, n = 3, k = 5, batch = 3;
  const int lda = m + 1, ldb = n + 2, ldc = m + 2;  // A: op N (m x k); B: op T (stored n x k)
  const long long strideA = lda * k + 3, strideB = ldb * k + 1, strideC = ldc * n + 2;
  Buffer<double> a(strideA * batch), b(strideB * batch), c(strideC * batch, 9.0);
  fillRandom(a);
  fillRandom(b);
  const double alpha = 1.25, beta = 0.0;
  CHECK(cublasDgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &alpha, a.data(), lda, strideA, b.data(), ldb,
                                  strideB, &beta, c.data(), ldc, strideC, batch) == CUBLAS_STATUS_SUCCESS,
        "DgemmStridedBatched: status");
  synchronize();
  for (int i = 0; i < batch; ++i) {
    const Dense A = fromStored(a.data() + i * strideA, m, k, lda);
    const Dense Bt = transpose(fromStored(b.data() + i * strideB, n, k, ldb));
    Dense expected = multiply(A, Bt);
    for (double& v : expected.v) v *= alpha;
    CHECK(maxDiff(fromStored(c.data() + i * strideC, m, n, ldc), expected) < 1e-13,
          "DgemmStridedBatched: matrix " + std::to_string(i));
    CHECK(paddingIntact(c.data() + i * strideC, m, n, ldc, 9.0), "DgemmStridedBatched: padding of C " + std::to_string(i));
  }
  CHECK(c[strideC - 1] == 9.0 && c[2 * strideC - 1] == 9.0, "DgemmStridedBatched: gaps between matrices untouched");
}

// ---- trsm ------------------------------------------------------------------------------------------

// A triangular matrix (order x order, leading dimension ld) stored in the `lower` or upper triangle of
// a buffer whose other triangle is NaN (and whose diagonal is NaN too when unit), and the dense
// triangular matrix it stands for.
Dense makeTriangle(double* p, int order, int ld, bool lower, bool unit) {
  Dense t(order, order);
  for (int j = 0; j < order; ++j)
    for (int i = 0; i < order; ++i) {
      double& stored = p[i + j * ld];
      const bool inTriangle = lower ? i > j : i < j;
      if (i == j) {
        stored = unit ? kNaN : 2.0 + std::fabs(uniform());
        t(i, j) = unit ? 1.0 : stored;
      } else if (inTriangle) {
        stored = 0.5 * uniform();
        t(i, j) = stored;
      } else {
        stored = kNaN;
      }
    }
  return t;
}

void testTrsm(cublasHandle_t h) {
  const int m = 5, n = 4, ldb = m + 2;
  for (auto side : {CUBLAS_SIDE_LEFT, CUBLAS_SIDE_RIGHT})
    for (auto uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER})
      for (auto trans : {CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C})
        for (auto diag : {CUBLAS_DIAG_NON_UNIT, CUBLAS_DIAG_UNIT}) {
          const int order = side == CUBLAS_SIDE_LEFT ? m : n, lda = order + 1;
          Buffer<double> a(static_cast<size_t>(lda) * order, -3.0), b(static_cast<size_t>(ldb) * n, 5.0);
          const Dense t = makeTriangle(a.data(), order, lda, uplo == CUBLAS_FILL_MODE_LOWER, diag == CUBLAS_DIAG_UNIT);
          for (int j = 0; j < n; ++j)
            for (int i = 0; i < m; ++i) b[i + j * ldb] = uniform();
          const Dense b0 = fromStored(b.data(), m, n, ldb);
          const double alpha = -0.8;
          const std::string name = std::string("Dtrsm ") + (side == CUBLAS_SIDE_LEFT ? "L" : "R") +
                                   (uplo == CUBLAS_FILL_MODE_LOWER ? "L" : "U") + opName(trans) +
                                   (diag == CUBLAS_DIAG_UNIT ? "U" : "N");
          CHECK(cublasDtrsm(h, side, uplo, trans, diag, m, n, &alpha, a.data(), lda, b.data(), ldb) ==
                    CUBLAS_STATUS_SUCCESS,
                name + ": status");
          synchronize();
          const Dense x = fromStored(b.data(), m, n, ldb);
          const Dense opT = trans == CUBLAS_OP_N ? t : transpose(t);
          Dense lhs = side == CUBLAS_SIDE_LEFT ? multiply(opT, x) : multiply(x, opT);
          Dense rhs = b0;
          for (double& v : rhs.v) v *= alpha;
          CHECK(maxDiff(lhs, rhs) < 1e-12, name + ": op(A) X = alpha B (or X op(A) = alpha B)");
          CHECK(paddingIntact(b.data(), m, n, ldb, 5.0), name + ": B's rows beyond m untouched");
        }
}

void testTrsmBatched(cublasHandle_t h) {
  const int k = 4, batch = 3, ld = k + 1;
  for (auto side : {CUBLAS_SIDE_LEFT, CUBLAS_SIDE_RIGHT})
    for (auto trans : {CUBLAS_OP_N, CUBLAS_OP_T}) {
      Buffer<double> a(static_cast<size_t>(ld) * k * batch), b(static_cast<size_t>(ld) * k * batch);
      Buffer<double*> aPtr(batch), bPtr(batch);
      std::vector<Dense> t, b0;
      for (int i = 0; i < batch; ++i) {
        aPtr[i] = a.data() + i * ld * k;
        bPtr[i] = b.data() + i * ld * k;
        t.push_back(makeTriangle(aPtr[i], k, ld, true, false));
        for (int j = 0; j < ld * k; ++j) bPtr[i][j] = uniform();
        b0.push_back(fromStored(bPtr[i], k, k, ld));
      }
      const double one = 1.0;
      CHECK(cublasDtrsmBatched(h, side, CUBLAS_FILL_MODE_LOWER, trans, CUBLAS_DIAG_NON_UNIT, k, k, &one,
                               reinterpret_cast<const double* const*>(aPtr.data()), ld, bPtr.data(), ld, batch) ==
                CUBLAS_STATUS_SUCCESS,
            "DtrsmBatched: status");
      synchronize();
      for (int i = 0; i < batch; ++i) {
        const Dense x = fromStored(bPtr[i], k, k, ld);
        const Dense opT = trans == CUBLAS_OP_N ? t[i] : transpose(t[i]);
        const Dense lhs = side == CUBLAS_SIDE_LEFT ? multiply(opT, x) : multiply(x, opT);
        CHECK(maxDiff(lhs, b0[i]) < 1e-12, "DtrsmBatched: matrix " + std::to_string(i));
      }
    }
}

// ---- symmetric eigensolvers -----------------------------------------------------------------------

// Fills the `lower` (or upper) triangle of an n x n matrix (leading dimension ld) with random values,
// the other triangle with NaN, and returns the symmetric matrix the triangle stands for.
template <typename T>
Dense makeSymmetricTriangle(T* p, int n, int ld, bool lower) {
  Dense s(n, n);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < n; ++i) {
      if (lower ? i >= j : i <= j) {
        p[i + j * ld] = static_cast<T>(uniform());
        s(i, j) = s(j, i) = static_cast<double>(p[i + j * ld]);
      } else {
        p[i + j * ld] = std::numeric_limits<T>::quiet_NaN();
      }
    }
  return s;
}

// Checks S V = V diag(w), VᵀV = I and w ascending.
void checkEigen(const Dense& s, const Dense& v, const std::vector<double>& w, double tolerance,
                const std::string& name) {
  Dense vw = v;
  for (int j = 0; j < v.cols; ++j)
    for (int i = 0; i < v.rows; ++i) vw(i, j) *= w[j];
  CHECK(maxDiff(multiply(s, v), vw) < tolerance, name + ": A V = V diag(w)");
  CHECK(orthonormalityError(v) < tolerance, name + ": VᵀV = I");
  CHECK(std::is_sorted(w.begin(), w.end()), name + ": eigenvalues ascending");
}

void testSyevd(cusolverDnHandle_t h) {
  const int n = 6, lda = 8;
  for (auto uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER}) {
    const std::string name = std::string("Dsyevd ") + (uplo == CUBLAS_FILL_MODE_LOWER ? "lower" : "upper");
    Buffer<double> a(lda * n, 3.0), w(n), info(1);
    const Dense s = makeSymmetricTriangle(a.data(), n, lda, uplo == CUBLAS_FILL_MODE_LOWER);
    int lwork = 0;
    CHECK(cusolverDnDsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, uplo, n, a.data(), lda, w.data(), &lwork) ==
                  CUSOLVER_STATUS_SUCCESS &&
              lwork >= 1,
          name + ": bufferSize");
    Buffer<double> work(lwork);
    Buffer<int> devInfo(1, -99);
    CHECK(cusolverDnDsyevd(h, CUSOLVER_EIG_MODE_VECTOR, uplo, n, a.data(), lda, w.data(), work.data(), lwork,
                           devInfo.data()) == CUSOLVER_STATUS_SUCCESS,
          name + ": status");
    synchronize();
    CHECK(devInfo[0] == 0, name + ": info = 0");
    checkEigen(s, fromStored(a.data(), n, n, lda), w.copy(), 1e-12, name);
    CHECK(paddingIntact(a.data(), n, n, lda, 3.0), name + ": A's rows beyond n untouched");

    // Eigenvalues only: the same values.
    Buffer<double> a2(lda * n), w2(n);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < n; ++i) a2[i + j * lda] = s(i, j);
    int lwork2 = 0;
    (void)cusolverDnDsyevd_bufferSize(h, CUSOLVER_EIG_MODE_NOVECTOR, uplo, n, a2.data(), lda, w2.data(), &lwork2);
    Buffer<double> work2(lwork2);
    CHECK(cusolverDnDsyevd(h, CUSOLVER_EIG_MODE_NOVECTOR, uplo, n, a2.data(), lda, w2.data(), work2.data(), lwork2,
                           devInfo.data()) == CUSOLVER_STATUS_SUCCESS,
          name + " novector: status");
    synchronize();
    double diff = 0;
    for (int j = 0; j < n; ++j) diff = std::max(diff, std::fabs(w[j] - w2[j]));
    CHECK(devInfo[0] == 0 && diff < 1e-12, name + " novector: same eigenvalues");
  }

  // Non-finite input: info > 0 and NaN eigenvalues.
  Buffer<double> a(n * n), w(n);
  makeSymmetricTriangle(a.data(), n, n, true);
  a[2] = std::numeric_limits<double>::infinity();
  int lwork = 0;
  (void)cusolverDnDsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a.data(), n, w.data(),
                                    &lwork);
  Buffer<double> work(lwork);
  Buffer<int> devInfo(1, 0);
  CHECK(cusolverDnDsyevd(h, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, n, a.data(), n, w.data(), work.data(),
                         lwork, devInfo.data()) == CUSOLVER_STATUS_SUCCESS,
        "Dsyevd non-finite: status");
  synchronize();
  CHECK(devInfo[0] > 0 && std::isnan(w[0]), "Dsyevd non-finite: info > 0 and NaN eigenvalues");
}

template <typename T>
void testSyevBatchedType(cusolverDnHandle_t h, cusolverDnParams_t params, cudaDataType type, double tolerance) {
  const int64_t n = 5, lda = 6, batch = 3;
  const std::string name = std::string("XsyevBatched ") + (type == CUDA_R_64F ? "double" : "float");
  for (auto uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER}) {
    Buffer<T> a(lda * n * batch, static_cast<T>(3)), w(n * batch);
    std::vector<Dense> s;
    for (int64_t b = 0; b < batch; ++b)
      s.push_back(makeSymmetricTriangle(a.data() + b * lda * n, n, lda, uplo == CUBLAS_FILL_MODE_LOWER));
    size_t deviceBytes = 0, hostBytes = 0;
    CHECK(cusolverDnXsyevBatched_bufferSize(h, params, CUSOLVER_EIG_MODE_VECTOR, uplo, n, type, a.data(), lda, type,
                                            w.data(), type, &deviceBytes, &hostBytes, batch) ==
              CUSOLVER_STATUS_SUCCESS,
          name + ": bufferSize");
    Buffer<char> work(deviceBytes);
    std::vector<char> hostWork(hostBytes);
    Buffer<int> info(batch, -99);
    CHECK(cusolverDnXsyevBatched(h, params, CUSOLVER_EIG_MODE_VECTOR, uplo, n, type, a.data(), lda, type, w.data(),
                                 type, work.data(), deviceBytes, hostBytes > 0 ? hostWork.data() : nullptr, hostBytes,
                                 info.data(), batch) == CUSOLVER_STATUS_SUCCESS,
          name + ": status");
    synchronize();
    for (int64_t b = 0; b < batch; ++b) {
      CHECK(info[b] == 0, name + ": info[" + std::to_string(b) + "] = 0");
      std::vector<double> wb(w.data() + b * n, w.data() + (b + 1) * n);
      checkEigen(s[b], fromStored(a.data() + b * lda * n, n, n, lda), wb, tolerance,
                 name + " matrix " + std::to_string(b));
      CHECK(paddingIntact(a.data() + b * lda * n, n, n, lda, static_cast<T>(3)), name + ": padding untouched");
    }
  }
}

void testSyevBatched(cusolverDnHandle_t h) {
  cusolverDnParams_t params = nullptr;
  CHECK(cusolverDnCreateParams(&params) == CUSOLVER_STATUS_SUCCESS && params != nullptr, "CreateParams");
  testSyevBatchedType<double>(h, params, CUDA_R_64F, 1e-12);
  testSyevBatchedType<float>(h, params, CUDA_R_32F, 1e-5);
  CHECK(cusolverDnDestroyParams(params) == CUSOLVER_STATUS_SUCCESS, "DestroyParams");
}

// ---- Cholesky --------------------------------------------------------------------------------------

// A random symmetric positive definite matrix.
Dense randomSpd(int n) {
  Dense g(n, n);
  for (double& v : g.v) v = uniform();
  Dense s = multiply(g, transpose(g));
  for (int i = 0; i < n; ++i) s(i, i) += n;
  return s;
}

// Stores the `lower` (or upper) triangle of s in p; the other triangle gets `other`.
void storeTriangle(double* p, const Dense& s, int ld, bool lower, double other) {
  for (int j = 0; j < s.cols; ++j)
    for (int i = 0; i < s.rows; ++i) p[i + j * ld] = (lower ? i >= j : i <= j) ? s(i, j) : other;
}

// The factor stored in p's triangle (L lower, or U upper), zero elsewhere.
Dense factorOf(const double* p, int n, int ld, bool lower) {
  Dense f(n, n);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < n; ++i)
      if (lower ? i >= j : i <= j) f(i, j) = p[i + j * ld];
  return f;
}

bool otherTriangleIs(const double* p, int n, int ld, bool lower, double value) {
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < n; ++i)
      if ((lower ? i < j : i > j) && !(p[i + j * ld] == value)) return false;
  return true;
}

void testPotrf(cusolverDnHandle_t h) {
  const int n = 6, lda = 7;
  for (auto uplo : {CUBLAS_FILL_MODE_LOWER, CUBLAS_FILL_MODE_UPPER}) {
    const bool lower = uplo == CUBLAS_FILL_MODE_LOWER;
    const std::string name = std::string("Dpotrf ") + (lower ? "lower" : "upper");
    const Dense s = randomSpd(n);
    Buffer<double> a(lda * n, 8.0);
    storeTriangle(a.data(), s, lda, lower, 99.0);
    int lwork = 0;
    CHECK(cusolverDnDpotrf_bufferSize(h, uplo, n, a.data(), lda, &lwork) == CUSOLVER_STATUS_SUCCESS && lwork >= 1,
          name + ": bufferSize");
    Buffer<double> work(lwork);
    Buffer<int> info(1, -99);
    CHECK(cusolverDnDpotrf(h, uplo, n, a.data(), lda, work.data(), lwork, info.data()) == CUSOLVER_STATUS_SUCCESS,
          name + ": status");
    synchronize();
    CHECK(info[0] == 0, name + ": info = 0");
    const Dense f = factorOf(a.data(), n, lda, lower);
    CHECK(maxDiff(lower ? multiply(f, transpose(f)) : multiply(transpose(f), f), s) < 1e-12,
          name + (lower ? ": L Lᵀ = A" : ": Uᵀ U = A"));
    bool positiveDiagonal = true;
    for (int i = 0; i < n; ++i) positiveDiagonal = positiveDiagonal && f(i, i) > 0;
    CHECK(positiveDiagonal, name + ": positive diagonal");
    CHECK(otherTriangleIs(a.data(), n, lda, lower, 99.0), name + ": other triangle untouched");
    CHECK(paddingIntact(a.data(), n, n, lda, 8.0), name + ": padding untouched");

    // Not positive definite at order 3: info = 3, other triangle still untouched.
    Dense bad = randomSpd(n);
    bad(2, 2) = -50.0;
    storeTriangle(a.data(), bad, lda, lower, 99.0);
    CHECK(cusolverDnDpotrf(h, uplo, n, a.data(), lda, work.data(), lwork, info.data()) == CUSOLVER_STATUS_SUCCESS,
          name + " non-PD: status");
    synchronize();
    CHECK(info[0] == 3, name + " non-PD: info = 3 (got " + std::to_string(info[0]) + ")");
    CHECK(otherTriangleIs(a.data(), n, lda, lower, 99.0), name + " non-PD: other triangle untouched");

    // NaN on the diagonal at order 1.
    Dense nanMatrix = randomSpd(n);
    nanMatrix(0, 0) = kNaN;
    storeTriangle(a.data(), nanMatrix, lda, lower, 99.0);
    (void)cusolverDnDpotrf(h, uplo, n, a.data(), lda, work.data(), lwork, info.data());
    synchronize();
    CHECK(info[0] == 1, name + " NaN: info = 1");
  }
}

void testPotrfBatched(cusolverDnHandle_t h) {
  const int n = 5, lda = 6, batch = 3;
  Buffer<double> a(lda * n * batch);
  Buffer<double*> ptr(batch);
  Buffer<int> info(batch, -99);
  std::vector<Dense> s;
  for (int i = 0; i < batch; ++i) {
    ptr[i] = a.data() + i * lda * n;
    s.push_back(randomSpd(n));
    if (i == 1) s[i](3, 3) = -10.0;  // matrix 1: leading minor of order 4 not positive definite
    storeTriangle(ptr[i], s[i], lda, true, 42.0);
  }
  CHECK(cusolverDnDpotrfBatched(h, CUBLAS_FILL_MODE_LOWER, n, ptr.data(), lda, info.data(), batch) ==
            CUSOLVER_STATUS_SUCCESS,
        "DpotrfBatched: status");
  synchronize();
  CHECK(info[0] == 0 && info[1] == 4 && info[2] == 0, "DpotrfBatched: infoArray = {0, 4, 0}");
  for (int i : {0, 2}) {
    const Dense l = factorOf(ptr[i], n, lda, true);
    CHECK(maxDiff(multiply(l, transpose(l)), s[i]) < 1e-12, "DpotrfBatched: L Lᵀ = A, matrix " + std::to_string(i));
    bool destroyed = true;  // cuSOLVER documents the batched routine's other triangle as destroyed
    for (int j = 0; j < n; ++j)
      for (int r = 0; r < j; ++r) destroyed = destroyed && std::isnan(ptr[i][r + j * lda]);
    CHECK(destroyed, "DpotrfBatched: upper triangle destroyed (NaN)");
  }
}

// ---- SVD -------------------------------------------------------------------------------------------

void testGesvd(cusolverDnHandle_t h) {
  const int m = 7, n = 4, lda = 9, ldu = 8, ldvt = 5;
  Dense a0(m, n);
  for (double& v : a0.v) v = uniform();
  int lwork = 0;
  CHECK(cusolverDnDgesvd_bufferSize(h, m, n, &lwork) == CUSOLVER_STATUS_SUCCESS && lwork >= 1, "Dgesvd: bufferSize");
  std::vector<double> reference;
  const char jobs[][2] = {{'S', 'N'}, {'A', 'A'}, {'S', 'S'}, {'O', 'S'}, {'S', 'O'}, {'N', 'N'}, {'N', 'A'}};
  for (const auto& job : jobs) {
    const signed char jobu = job[0], jobvt = job[1];
    const std::string name = std::string("Dgesvd ") + job[0] + job[1];
    Buffer<double> a(lda * n, 6.0), s(n), u(ldu * m, kNaN), vt(ldvt * n, kNaN), work(lwork), rwork(n);
    Buffer<int> info(1, -99);
    for (int j = 0; j < n; ++j)
      for (int i = 0; i < m; ++i) a[i + j * lda] = a0(i, j);
    CHECK(cusolverDnDgesvd(h, jobu, jobvt, m, n, a.data(), lda, s.data(), u.data(), ldu, vt.data(), ldvt, work.data(),
                           lwork, job[0] == 'A' ? nullptr : rwork.data(), info.data()) == CUSOLVER_STATUS_SUCCESS,
          name + ": status");
    synchronize();
    CHECK(info[0] == 0, name + ": info = 0");
    std::vector<double> sigma = s.copy();
    CHECK(std::is_sorted(sigma.rbegin(), sigma.rend()) && sigma.back() >= 0, name + ": singular values descending");
    if (reference.empty()) reference = sigma;
    double diff = 0;
    for (int i = 0; i < n; ++i) diff = std::max(diff, std::fabs(sigma[i] - reference[i]));
    CHECK(diff < 1e-12, name + ": same singular values as jobu=S");
    // U (first n columns) from U or from A; Vᵀ from VT or from A's first n rows.
    const bool haveU = job[0] != 'N', haveV = job[1] != 'N';
    const Dense uThin = job[0] == 'O' ? fromStored(a.data(), m, n, lda) : fromStored(u.data(), m, n, ldu);
    const Dense vtSquare = job[1] == 'O' ? fromStored(a.data(), n, n, lda) : fromStored(vt.data(), n, n, ldvt);
    if (haveU) CHECK(orthonormalityError(uThin) < 1e-12, name + ": U has orthonormal columns");
    if (haveV) CHECK(orthonormalityError(transpose(vtSquare)) < 1e-12, name + ": Vᵀ has orthonormal rows");
    if (job[0] == 'A') {
      CHECK(orthonormalityError(fromStored(u.data(), m, m, ldu)) < 1e-12, name + ": full U orthogonal");
    }
    if (haveU && haveV) {
      Dense us = uThin;
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) us(i, j) *= sigma[j];
      CHECK(maxDiff(multiply(us, vtSquare), a0) < 1e-12, name + ": U Σ Vᵀ = A");
    }
    if (haveU && !haveV) {
      // Uᵀ A = Σ Vᵀ has rows of norm σ_j.
      const Dense utA = multiply(transpose(uThin), a0);
      double worst = 0;
      for (int i = 0; i < n; ++i) {
        double norm = 0;
        for (int j = 0; j < n; ++j) norm += utA(i, j) * utA(i, j);
        worst = std::max(worst, std::fabs(std::sqrt(norm) - sigma[i]));
      }
      CHECK(worst < 1e-12, name + ": |row i of Uᵀ A| = σ_i");
    }
    if (job[0] == 'N') CHECK(std::isnan(u[0]), name + ": U untouched");
    if (job[1] == 'N') CHECK(std::isnan(vt[0]), name + ": VT untouched");
    CHECK(paddingIntact(a.data(), m, n, lda, 6.0), name + ": A's rows beyond m untouched");
  }

  // Non-finite input: info > 0, NaN singular values.
  Buffer<double> a(m * n), s(n), u(m * n), work(lwork);
  Buffer<int> info(1, 0);
  fillRandom(a);
  a[5] = kNaN;
  (void)cusolverDnDgesvd(h, 'S', 'N', m, n, a.data(), m, s.data(), u.data(), m, nullptr, n, work.data(), lwork,
                         nullptr, info.data());
  synchronize();
  CHECK(info[0] > 0 && std::isnan(s[0]), "Dgesvd non-finite: info > 0 and NaN singular values");
}

// ---- argument validation ---------------------------------------------------------------------------

void testValidation(cublasHandle_t h, cusolverDnHandle_t sh) {
  Buffer<double> a(100), b(100), c(100), w(10), work(1000);
  Buffer<float> fa(100);
  Buffer<int> info(4, 0);
  Buffer<double*> ptr(2);
  ptr[0] = a.data();
  ptr[1] = b.data();
  const double one = 1.0;
  const float fone = 1.0f;
  const cublasStatus_t bad = CUBLAS_STATUS_INVALID_VALUE;

  // cuBLAS
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, -1, 2, 2, &one, a.data(), 2, b.data(), 2, &one, c.data(), 2) == bad,
        "Dgemm m < 0");
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 2, &one, a.data(), 2, b.data(), 2, &one, c.data(), 3) == bad,
        "Dgemm lda < m (op N)");
  CHECK(cublasDgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 3, 2, 4, &one, a.data(), 3, b.data(), 4, &one, c.data(), 3) == bad,
        "Dgemm lda < k (op T)");
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, 3, 5, 2, &one, a.data(), 3, b.data(), 4, &one, c.data(), 3) == bad,
        "Dgemm ldb < n (op T)");
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 2, 2, &one, a.data(), 3, b.data(), 2, &one, c.data(), 2) == bad,
        "Dgemm ldc < m");
  CHECK(cublasDgemm(h, CUBLAS_OP_CONJG, CUBLAS_OP_N, 2, 2, 2, &one, a.data(), 2, b.data(), 2, &one, c.data(), 2) ==
            bad,
        "Dgemm op CONJG (not a gemm op)");
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, nullptr, a.data(), 2, b.data(), 2, &one, c.data(), 2) == bad,
        "Dgemm alpha NULL");
  CHECK(cublasDgemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, a.data(), 2, b.data(), 2, &one, c.data(), 2) ==
            CUBLAS_STATUS_NOT_INITIALIZED,
        "Dgemm NULL handle");
  CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, -2, &fone, fa.data(), 2, fa.data(), 2, &fone, fa.data(), 2) ==
            bad,
        "Sgemm k < 0");
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 0, 0, 0, &one, nullptr, 1, nullptr, 1, &one, nullptr, 1) ==
            CUBLAS_STATUS_SUCCESS,
        "Dgemm empty: success, nothing touched");
  CHECK(cublasDgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, a.data(), 2, 4, b.data(), 2, 4, &one,
                                  c.data(), 2, 4, -1) == bad,
        "DgemmStridedBatched batchCount < 0");
  CHECK(cublasDtrsm(h, CUBLAS_SIDE_RIGHT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, 5, 4, &one,
                    a.data(), 3, b.data(), 5) == bad,
        "Dtrsm lda < n (side right)");
  CHECK(cublasDtrsm(h, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, 5, 4, &one,
                    a.data(), 5, b.data(), 4) == bad,
        "Dtrsm ldb < m");
  CHECK(cublasDtrsm(h, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_FULL, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, 2, 2, &one,
                    a.data(), 2, b.data(), 2) == bad,
        "Dtrsm uplo FULL");
  CHECK(cublasDtrsmBatched(h, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, 2, 2, &one,
                           reinterpret_cast<const double* const*>(ptr.data()), 2, ptr.data(), 2, -1) == bad,
        "DtrsmBatched batchCount < 0");
  CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_DEVICE) == CUBLAS_STATUS_SUCCESS, "SetPointerMode DEVICE");
  CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, a.data(), 2, b.data(), 2, &one, c.data(), 2) ==
            CUBLAS_STATUS_NOT_SUPPORTED,
        "Dgemm in pointer mode DEVICE: not supported by the emulation");
  CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST) == CUBLAS_STATUS_SUCCESS, "SetPointerMode HOST");
  CHECK(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH) == CUBLAS_STATUS_SUCCESS, "SetMathMode default");
  CHECK(std::string(cublasGetStatusName(CUBLAS_STATUS_INVALID_VALUE)) == "CUBLAS_STATUS_INVALID_VALUE",
        "GetStatusName");
  CHECK(std::string(cublasGetStatusString(CUBLAS_STATUS_SUCCESS)).size() > 0, "GetStatusString");
  CHECK(cublasCreate(nullptr) == bad, "cublasCreate(NULL)");

  // cuSOLVER: INVALID_VALUE, and info = -(argument position) written in stream order.
  const cusolverStatus_t sbad = CUSOLVER_STATUS_INVALID_VALUE;
  int lwork = 0;
  CHECK(cusolverDnDsyevd_bufferSize(sh, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 4, a.data(), 3, w.data(),
                                    &lwork) == sbad,
        "Dsyevd_bufferSize lda < n");
  auto infoIs = [&](int expected) {
    synchronize();
    return info[0] == expected;
  };
  CHECK(cusolverDnDsyevd(sh, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 4, a.data(), 3, w.data(), work.data(),
                         1000, info.data()) == sbad &&
            infoIs(-5),
        "Dsyevd lda < n: INVALID_VALUE, info = -5");
  CHECK(cusolverDnDsyevd(sh, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 4, a.data(), 4, w.data(), work.data(),
                         1, info.data()) == sbad &&
            infoIs(-8),
        "Dsyevd lwork too small: INVALID_VALUE, info = -8");
  CHECK(cusolverDnDsyevd(sh, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_FULL, 4, a.data(), 4, w.data(), work.data(),
                         1000, info.data()) == sbad &&
            infoIs(-2),
        "Dsyevd uplo FULL: info = -2");
  CHECK(cusolverDnDpotrf(sh, CUBLAS_FILL_MODE_LOWER, -1, a.data(), 1, work.data(), 1000, info.data()) == sbad &&
            infoIs(-2),
        "Dpotrf n < 0: info = -2");
  CHECK(cusolverDnDpotrf(sh, CUBLAS_FILL_MODE_FULL, 2, a.data(), 2, work.data(), 1000, info.data()) == sbad &&
            infoIs(-1),
        "Dpotrf uplo FULL: info = -1");
  CHECK(cusolverDnDpotrf_bufferSize(sh, CUBLAS_FILL_MODE_LOWER, 5, a.data(), 5, &lwork) == CUSOLVER_STATUS_SUCCESS &&
            cusolverDnDpotrf(sh, CUBLAS_FILL_MODE_LOWER, 5, a.data(), 5, work.data(), lwork - 1, info.data()) == sbad &&
            infoIs(-6),
        "Dpotrf Lwork below bufferSize: info = -6");
  CHECK(cusolverDnDpotrfBatched(sh, CUBLAS_FILL_MODE_LOWER, 2, ptr.data(), 1, info.data(), 2) == sbad && infoIs(-4),
        "DpotrfBatched lda < n: infoArray[0] = -4");
  CHECK(cusolverDnDpotrfBatched(sh, CUBLAS_FILL_MODE_LOWER, 2, ptr.data(), 2, info.data(), -1) == sbad &&
            infoIs(-6),
        "DpotrfBatched batchSize < 0");
  CHECK(cusolverDnDgesvd(sh, 'S', 'N', 3, 4, a.data(), 3, w.data(), b.data(), 3, c.data(), 4, work.data(), 1000,
                         nullptr, info.data()) == sbad,
        "Dgesvd m < n: INVALID_VALUE (cuSOLVER gesvd supports m >= n only)");
  CHECK(cusolverDnDgesvd(sh, 'X', 'N', 4, 3, a.data(), 4, w.data(), b.data(), 4, c.data(), 3, work.data(), 1000,
                         nullptr, info.data()) == sbad &&
            infoIs(-1),
        "Dgesvd bad jobu: info = -1");
  CHECK(cusolverDnDgesvd(sh, 'O', 'O', 4, 3, a.data(), 4, w.data(), b.data(), 4, c.data(), 3, work.data(), 1000,
                         nullptr, info.data()) == sbad &&
            infoIs(-2),
        "Dgesvd jobu = jobvt = 'O': info = -2");
  CHECK(cusolverDnDgesvd(sh, 'S', 'N', 4, 3, a.data(), 3, w.data(), b.data(), 4, c.data(), 3, work.data(), 1000,
                         nullptr, info.data()) == sbad &&
            infoIs(-6),
        "Dgesvd lda < m: info = -6");
  CHECK(cusolverDnDgesvd(sh, 'S', 'N', 4, 3, a.data(), 4, w.data(), b.data(), 3, c.data(), 3, work.data(), 1000,
                         nullptr, info.data()) == sbad &&
            infoIs(-9),
        "Dgesvd ldu < m (jobu S): info = -9");
  CHECK(cusolverDnDgesvd(sh, 'S', 'N', 4, 3, a.data(), 4, w.data(), b.data(), 4, c.data(), 3, work.data(), 1,
                         nullptr, info.data()) == sbad &&
            infoIs(-13),
        "Dgesvd lwork too small: info = -13");
  cusolverDnParams_t params = nullptr;
  (void)cusolverDnCreateParams(&params);
  size_t deviceBytes = 0, hostBytes = 0;
  CHECK(cusolverDnXsyevBatched_bufferSize(sh, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, CUDA_R_64F,
                                          a.data(), 3, CUDA_C_64F, w.data(), CUDA_R_64F, &deviceBytes, &hostBytes,
                                          2) == CUSOLVER_STATUS_NOT_SUPPORTED,
        "XsyevBatched_bufferSize mixed types: not supported");
  CHECK(cusolverDnXsyevBatched(sh, nullptr, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, CUDA_R_64F, a.data(),
                               3, CUDA_R_64F, w.data(), CUDA_R_64F, work.data(), 8000, nullptr, 0, info.data(), 2) ==
                sbad &&
            infoIs(-1),
        "XsyevBatched params NULL: info[0] = -1");
  CHECK(cusolverDnXsyevBatched(sh, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, CUDA_R_64F, a.data(),
                               2, CUDA_R_64F, w.data(), CUDA_R_64F, work.data(), 8000, nullptr, 0, info.data(),
                               2) == sbad &&
            infoIs(-7),
        "XsyevBatched lda < n: info[0] = -7");
  CHECK(cusolverDnXsyevBatched(sh, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, CUDA_R_64F, a.data(),
                               3, CUDA_R_64F, w.data(), CUDA_R_64F, work.data(), 1, nullptr, 0, info.data(), 2) ==
                sbad &&
            infoIs(-12),
        "XsyevBatched device workspace too small: info[0] = -12");
  CHECK(cusolverDnXsyevBatched(sh, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, CUDA_R_64F, a.data(),
                               3, CUDA_R_64F, w.data(), CUDA_R_64F, work.data(), 8000, nullptr, 0, info.data(), -2) ==
                sbad &&
            infoIs(-16),
        "XsyevBatched batchSize < 0: info[0] = -16");
  const int64_t tooMany = static_cast<int64_t>(INT32_MAX) / 9 + 1;  // n·lda·batchSize > INT32_MAX for n = lda = 3
  CHECK(cusolverDnXsyevBatched_bufferSize(sh, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, CUDA_R_64F,
                                          a.data(), 3, CUDA_R_64F, w.data(), CUDA_R_64F, &deviceBytes, &hostBytes,
                                          tooMany) == sbad,
        "XsyevBatched_bufferSize n·lda·batchSize > INT32_MAX: invalid value (the documented limit)");
  CHECK(cusolverDnXsyevBatched(sh, params, CUSOLVER_EIG_MODE_VECTOR, CUBLAS_FILL_MODE_LOWER, 3, CUDA_R_64F, a.data(),
                               3, CUDA_R_64F, w.data(), CUDA_R_64F, work.data(), 8000, nullptr, 0, info.data(),
                               tooMany) == sbad,
        "XsyevBatched n·lda·batchSize > INT32_MAX: invalid value (the documented limit)");
  (void)cusolverDnDestroyParams(params);
  CHECK(cusolverDnDpotrf(nullptr, CUBLAS_FILL_MODE_LOWER, 2, a.data(), 2, work.data(), 1000, info.data()) ==
            CUSOLVER_STATUS_NOT_INITIALIZED,
        "Dpotrf NULL handle");
}

#ifdef NYSACT_EMU_BLAS_STANDALONE
// ---- streams, device faults, sticky errors (stand-in runtime only) --------------------------------

void testStreamsAndFaults(cublasHandle_t h, cusolverDnHandle_t sh) {
  const double one = 1.0, zero = 0.0;
  // The computation is queued on the handle's stream.
  cudaStream_t fake = reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(0x1000));
  Buffer<double> a(16, 1.0), b(16, 1.0), c(16, 0.0);
  CHECK(cublasSetStream(h, fake) == CUBLAS_STATUS_SUCCESS, "cublasSetStream");
  (void)cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, a.data(), 4, b.data(), 4, &zero, c.data(), 4);
  CHECK(test_runtime::lastStream == fake, "Dgemm queued on the handle's stream");
  CHECK(cusolverDnSetStream(sh, fake) == CUSOLVER_STATUS_SUCCESS, "cusolverDnSetStream");
  Buffer<double> work(1000);
  Buffer<int> info(1);
  for (int i = 0; i < 4; ++i) a[i * 5] = 4.0;
  test_runtime::lastStream = nullptr;
  (void)cusolverDnDpotrf(sh, CUBLAS_FILL_MODE_LOWER, 4, a.data(), 4, work.data(), 1000, info.data());
  CHECK(test_runtime::lastStream == fake, "Dpotrf queued on the handle's stream");
  (void)cublasSetStream(h, nullptr);
  (void)cusolverDnSetStream(sh, nullptr);

  // Strict memory: an operand that overruns its block by one element is a fault (success status,
  // nothing computed, sticky error); later calls return success and do nothing.
  test_runtime::reset();
  test_runtime::strict = true;
  {
    Buffer<double> aa(4 * 3), bb(3 * 2, 1.0), cc(4 * 2 - 1, 0.0);  // C needs (2-1)*4 + 4 = 8 elements
    const size_t queuedBefore = test_runtime::queued;
    CHECK(cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 2, 3, &one, aa.data(), 4, bb.data(), 3, &zero, cc.data(), 4) ==
              CUBLAS_STATUS_SUCCESS,
          "Dgemm C overrun: success status");
    CHECK(test_runtime::faults.size() == 1 && test_runtime::faults[0].find("cublasDgemm: C") == 0,
          "Dgemm C overrun: one fault naming cublasDgemm and C");
    CHECK(test_runtime::queued == queuedBefore, "Dgemm C overrun: nothing queued");
    CHECK(nysact_emu::sticky() == cudaErrorIllegalAddress, "fault makes the error sticky");
    Buffer<double> c2(8, 0.0);
    (void)cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 4, 2, 3, &one, aa.data(), 4, bb.data(), 3, &zero, c2.data(), 4);
    CHECK(test_runtime::queued == queuedBefore && test_runtime::faults.size() == 1,
          "broken context: later calls queue nothing and fault no more");
  }
  test_runtime::reset();
  test_runtime::strict = true;
  {
    // Leading dimension larger than rows: the extent is (cols-1)*ld + rows, not cols*ld.
    Buffer<double> aa(2 * 5 + 3, 0.0), bb(3 * 3, 0.0), cc(2 * 3, 0.0);  // A: 3 x 3 with lda 5 needs 13
    (void)cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 3, 3, &one, aa.data(), 5, bb.data(), 3, &zero, cc.data(), 3);
    CHECK(!test_runtime::faults.empty(), "Dgemm: C 3 x 3 in 6 elements is a fault");
    test_runtime::reset();
    test_runtime::strict = true;
    Buffer<double> c9(9, 0.0);
    (void)cublasDgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 3, 3, 3, &one, aa.data(), 5, bb.data(), 3, &zero, c9.data(), 3);
    CHECK(test_runtime::faults.empty(), "Dgemm: A 3 x 3 with lda 5 fits exactly in 13 elements");
  }
  test_runtime::reset();
  test_runtime::strict = true;
  {
    // Pageable host memory (not registered) as a matrix.
    std::vector<double> host(16, 0.0);
    Buffer<double> bb(16);
    (void)cublasDtrsm(h, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, 4, 4, &one,
                      host.data(), 4, bb.data(), 4);
    CHECK(test_runtime::faults.size() == 1 && test_runtime::faults[0].find("cublasDtrsm: A") == 0,
          "Dtrsm with host memory as A: fault");
  }
  test_runtime::reset();
  test_runtime::strict = true;
  {
    // A pointer array whose entries point outside any allocation: the fault comes when it runs.
    std::vector<double> host(16, 0.0);
    Buffer<double> good(16, 0.0);
    for (int i = 0; i < 4; ++i) good[i * 5] = 1.0;
    Buffer<double*> ptr(2);
    Buffer<int> infos(2, -99);
    ptr[0] = good.data();
    ptr[1] = host.data();
    (void)cusolverDnDpotrfBatched(sh, CUBLAS_FILL_MODE_LOWER, 4, ptr.data(), 4, infos.data(), 2);
    CHECK(test_runtime::faults.size() == 1 && test_runtime::faults[0].find("Aarray[1]") != std::string::npos,
          "DpotrfBatched: Aarray[1] not device memory is a fault");
    CHECK(infos[0] == 0 && infos[1] == -99, "DpotrfBatched: the batch stops at the faulting matrix");
  }
  test_runtime::reset();
  test_runtime::strict = true;
  {
    // A workspace shorter than the lwork passed.
    Buffer<double> aa(16, 0.0), shortWork(10);
    Buffer<int> infos(1);
    int lwork = 0;
    (void)cusolverDnDpotrf_bufferSize(sh, CUBLAS_FILL_MODE_LOWER, 4, aa.data(), 4, &lwork);
    (void)cusolverDnDpotrf(sh, CUBLAS_FILL_MODE_LOWER, 4, aa.data(), 4, shortWork.data(), lwork, infos.data());
    CHECK(test_runtime::faults.size() == 1 && test_runtime::faults[0].find("Workspace") != std::string::npos,
          "Dpotrf: workspace shorter than Lwork is a fault");
  }
  test_runtime::reset();
}
#endif

}  // namespace

int main() {
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
  CHECK(cublasCreate(&blas) == CUBLAS_STATUS_SUCCESS, "cublasCreate");
  CHECK(cublasSetPointerMode(blas, CUBLAS_POINTER_MODE_HOST) == CUBLAS_STATUS_SUCCESS, "cublasSetPointerMode");
  CHECK(cusolverDnCreate(&solver) == CUSOLVER_STATUS_SUCCESS, "cusolverDnCreate");

  testGemm(blas);
  testGemmStridedBatched(blas);
  testTrsm(blas);
  testTrsmBatched(blas);
  testSyevd(solver);
  testSyevBatched(solver);
  testPotrf(solver);
  testPotrfBatched(solver);
  testGesvd(solver);
  testValidation(blas, solver);
#ifdef NYSACT_EMU_BLAS_STANDALONE
  testStreamsAndFaults(blas, solver);
#endif

  CHECK(cusolverDnDestroy(solver) == CUSOLVER_STATUS_SUCCESS, "cusolverDnDestroy");
  CHECK(cublasDestroy(blas) == CUBLAS_STATUS_SUCCESS, "cublasDestroy");
  if (failures > 0) {
    std::printf("FAILED %d of %d checks\n", failures, checks);
    return 1;
  }
  std::printf("ok %d checks\n", checks);
  return 0;
}
