// Machine probes and dense reference formulations for `nysact bench` (bench_kernels.h).
//
// Eigen is built single-threaded here (EIGEN_DONT_PARALLELIZE, the backend's determinism rule), so
// every product below splits its output rows into one block per OpenMP thread: a probe that used
// one core would understate the peak of a backend that uses all of them.  Results of these
// functions need not be bit-reproducible across thread counts; they are baselines, not state.
#include "bench_kernels.h"
#include "cpu_kernels.h"

#include <Eigen/Dense>

#include <algorithm>
#include <chrono>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace nysact {
namespace cpu {
namespace {

int threadCount() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

double seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The backend's threading policy (update.cpp): small passes stay on one thread, because waking a
// descheduled OpenMP thread on a busy machine costs a scheduler time slice.  The references follow
// it so that they are not penalised on small layers.
constexpr int64_t kParallelElements = int64_t{1} << 20;
constexpr double kParallelFlops = double(int64_t{1} << 22);

// out (m x n) = a (m x k) · b (k x n), output rows split into one block per thread.
template <typename A, typename B, typename Out>
void parallelProduct(const A& a, const B& b, Out& out) {
  const int64_t m = out.rows();
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(a.cols()) * static_cast<double>(out.cols());
  const int64_t blocks =
      flops < kParallelFlops ? 1 : std::max<int64_t>(1, std::min<int64_t>(threadCount(), m / 16));
  const int64_t per = (m + blocks - 1) / blocks;
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t r0 = blk * per, h = std::min(m, r0 + per) - r0;
    if (h > 0) out.middleRows(r0, h).noalias() = a.middleRows(r0, h) * b;
  }
}

// C = X̃ᵀ (X̃ S) / rows for an explicit row-major activation matrix X̃ (rows x p).
void sketchProducts(const float* xt, int64_t rows, int64_t p, const float* sketch, int64_t k, float* covariance) {
  const ConstRows x(xt, rows, p);
  const ConstRows s(sketch, p, k);
  RowMatrixF z(rows, k);
  parallelProduct(x, s, z);
  MutableRows c(covariance, p, k);
  const auto xT = x.transpose();
  parallelProduct(xT, z, c);
  c /= static_cast<float>(rows);
}

}  // namespace

std::vector<double> probeSgemm(int64_t n, int repeats) {
  Eigen::MatrixXf a = Eigen::MatrixXf::Random(n, n), b = Eigen::MatrixXf::Random(n, n), c(n, n);
  const int64_t blocks = std::min<int64_t>(threadCount(), n);
  const int64_t per = (n + blocks - 1) / blocks;
  auto product = [&] {
#pragma omp parallel for schedule(static) if (blocks > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t j0 = blk * per, w = std::min(n, j0 + per) - j0;
      if (w > 0) c.middleCols(j0, w).noalias() = a * b.middleCols(j0, w);
    }
  };
  product();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    product();
    times.push_back(seconds(start));
  }
  return times;
}

std::vector<double> probeCopy(size_t bytes, int repeats) {
  const int64_t blocks = threadCount();
  const size_t per = (bytes + blocks - 1) / blocks;
  std::vector<unsigned char> src(bytes), dst(bytes);
  auto copy = [&] {
#pragma omp parallel for schedule(static) if (blocks > 1)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const size_t b0 = std::min(bytes, static_cast<size_t>(blk) * per), b1 = std::min(bytes, b0 + per);
      if (b1 > b0) std::memcpy(dst.data() + b0, src.data() + b0, b1 - b0);
    }
  };
  // Touch both buffers from the threads that will copy them (first-touch page placement).
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const size_t b0 = std::min(bytes, static_cast<size_t>(blk) * per), b1 = std::min(bytes, b0 + per);
    std::memset(src.data() + b0, 1, b1 - b0);
    std::memset(dst.data() + b0, 0, b1 - b0);
  }
  copy();
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    copy();
    times.push_back(seconds(start));
  }
  return times;
}

void referenceDenseSketch(const float* x, int64_t rows, int64_t p0, bool bias, const float* sketch,
                          int64_t k, float* covariance) {
  if (!bias) {
    sketchProducts(x, rows, p0, sketch, k, covariance);
    return;
  }
  const int64_t p = p0 + 1;
  RowMatrixF xt(rows, p);
  xt.leftCols(p0) = ConstRows(x, rows, p0);
  xt.col(p0).setOnes();
  sketchProducts(xt.data(), rows, p, sketch, k, covariance);
}

void referenceIm2colSketch(const float* x, const LayerSpec& spec, const ConvInput& input,
                           const float* sketch, int64_t k, float* covariance) {
  const ConvGeometry g = convGeometry(spec, input.height, input.width);
  const int64_t kh = spec.kernelH, kw = spec.kernelW, ch = spec.inChannels;
  const int64_t p0 = spec.fanIn, p = spec.p();
  const int64_t perImage = g.outH * g.outW, rows = input.batch * perImage;
  RowMatrixF patches(rows, p);
#pragma omp parallel for schedule(static) if (rows * p > kParallelElements)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / perImage, oh = (row % perImage) / g.outW, ow = row % g.outW;
    const float* image = x + b * input.height * input.width * ch;
    float* out = patches.data() + row * p;
    for (int64_t a = 0; a < kh; ++a) {
      const int64_t hi = oh * spec.strideH + a * spec.dilationH - g.padTop;
      for (int64_t bb = 0; bb < kw; ++bb) {
        const int64_t wi = ow * spec.strideW + bb * spec.dilationW - g.padLeft;
        float* dst = out + (a * kw + bb) * ch;
        if (hi < 0 || hi >= input.height || wi < 0 || wi >= input.width) {
          std::fill(dst, dst + ch, 0.0f);
        } else {
          std::memcpy(dst, image + (hi * input.width + wi) * ch, static_cast<size_t>(ch) * sizeof(float));
        }
      }
    }
    if (spec.bias) out[p0] = 1.0f;
  }
  sketchProducts(patches.data(), rows, p, sketch, k, covariance);
}

void referenceDensePreconditioner(const float* basis, const float* coefficients, int64_t p, int64_t k,
                                  double inverseDamping, float* preconditioner) {
  const ConstRows u(basis, p, k);
  const RowMatrixF scaled = u * Eigen::Map<const Eigen::VectorXf>(coefficients, k).asDiagonal();
  MutableRows out(preconditioner, p, p);
  const auto uT = u.transpose();
  parallelProduct(scaled, uT, out);
  out.diagonal().array() += static_cast<float>(inverseDamping);
}

void referenceDenseStep(const float* preconditioner, int64_t p, int64_t q, float* weight,
                        const float* grad, float* momentum, const StepScalars& s) {
  const ConstRows pm(preconditioner, p, p);
  const ConstRows g(grad, p, q);
  RowMatrixF v(p, q);
  parallelProduct(pm, g, v);
  const float lr = static_cast<float>(s.lr), mu = static_cast<float>(s.momentum);
  const float wd = static_cast<float>(s.weightDecay);
  const int64_t n = p * q;
  const float* vd = v.data();
#pragma omp parallel for schedule(static) if (n > kParallelElements)
  for (int64_t i = 0; i < n; ++i) {
    const float d = vd[i] + wd * weight[i];
    const float b = mu * momentum[i] + d;
    momentum[i] = b;
    weight[i] -= lr * b;
  }
}

}  // namespace cpu
}  // namespace nysact
