// The fused preconditioned momentum pass (SPEC §1 step 3, SPEC §2 "never materialise P").
//
// V = G/ρ + (G U) diag(c) Uᵀ with c_k = 1/(λ̂_k+ρ) − 1/ρ costs 4·p·q·k flops and reads G twice:
// once for the skinny product M = Uᵀ G (Eigen), once in the fused pass that adds the low-rank
// correction and applies weight decay, momentum and the parameter update element by element,
// writing θ and the momentum buffer once.
#include <Eigen/Dense>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"

namespace nysact {
namespace cpu {
namespace {

struct UpdateScalars {
  float lr, momentum, coupledDecay, shrink;
  bool nesterov;
  explicit UpdateScalars(const StepScalars& s)
      : lr(static_cast<float>(s.lr)),
        momentum(static_cast<float>(s.momentum)),
        coupledDecay(static_cast<float>(s.decoupledWeightDecay ? 0.0 : s.weightDecay)),
        shrink(static_cast<float>(s.decoupledWeightDecay ? 1.0 - s.lr * s.weightDecay : 1.0)),
        nesterov(s.nesterov) {}
};

// d = v + wd·θ; buf = μ·buf + d; θ ← θ − lr·(nesterov ? d + μ·buf : buf).
// Decoupled decay instead shrinks θ by (1 − lr·wd) and leaves d = v.
inline void applyUpdate(const UpdateScalars& u, float v, float& theta, float& buf) {
  const float d = v + u.coupledDecay * theta;
  const float b = u.momentum * buf + d;
  buf = b;
  const float step = u.nesterov ? d + u.momentum * b : b;
  theta = u.shrink * theta - u.lr * step;
}

// Column blocks of q for the skinny product: fixed by shape, so results do not depend on threads.
constexpr int64_t kColumnBlock = 256;
// Below this many elements a pass stays on one thread: the update is memory-bound, and on a busy
// machine waking a descheduled OpenMP thread costs a scheduler time slice (measured ~20 ms on 2
// cores under load for a 100k-element step, against 0.05 ms single-threaded).
constexpr int64_t kParallelElements = int64_t{1} << 20;

}  // namespace

void momentumStep(int64_t n, float* weight, const float* grad, float* momentum, const StepScalars& s) {
  const UpdateScalars u(s);
#pragma omp parallel for schedule(static) if (n > kParallelElements)
  for (int64_t i = 0; i < n; ++i) applyUpdate(u, grad[i], weight[i], momentum[i]);
}

void preconditionedMomentumStep(const LayerSpec& spec, const float* basis, const float* coefficients,
                                int64_t k, double inverseDamping, float* weight, float* bias,
                                const float* gradWeight, const float* gradBias, float* momentum,
                                float* biasMomentum, const StepScalars& s) {
  const UpdateScalars u(s);
  const int64_t p0 = spec.fanIn, q = spec.fanOut;
  const float invRho = static_cast<float>(inverseDamping);
  const ConstRows U(basis, spec.p(), k);
  const Eigen::Map<const Eigen::VectorXf> c(coefficients, k);

  if (spec.layout == WeightLayout::InOut) {
    // G' is p0 x q (+ the bias row).  M = diag(c) Uᵀ G' is k x q.
    const ConstRows g(gradWeight, p0, q);
    RowMatrixF m(k, q);
    const int64_t blocks = (q + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (blocks > 1 && p0 * q > kParallelElements)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t j0 = blk * kColumnBlock, width = std::min(q, j0 + kColumnBlock) - j0;
      m.middleCols(j0, width).noalias() = U.topRows(p0).transpose() * g.middleCols(j0, width);
      if (spec.bias) {
        m.middleCols(j0, width).noalias() +=
            U.row(p0).transpose() * Eigen::Map<const Eigen::RowVectorXf>(gradBias + j0, width);
      }
      m.middleCols(j0, width) = c.asDiagonal() * m.middleCols(j0, width);
    }
    const int64_t rowsTotal = p0 + (spec.bias ? 1 : 0);
#pragma omp parallel if (p0 * q > kParallelElements)
    {
      std::vector<float> correction(static_cast<size_t>(q));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < rowsTotal; ++i) {
        std::fill(correction.begin(), correction.end(), 0.0f);
        const float* ui = basis + i * k;
        for (int64_t kk = 0; kk < k; ++kk) {
          const float w = ui[kk];
          const float* mk = m.data() + kk * q;
          for (int64_t j = 0; j < q; ++j) correction[j] += w * mk[j];
        }
        const bool isBias = i == p0;
        const float* gi = isBias ? gradBias : gradWeight + i * q;
        float* ti = isBias ? bias : weight + i * q;
        float* bi = isBias ? biasMomentum : momentum + i * q;
        for (int64_t j = 0; j < q; ++j) applyUpdate(u, gi[j] * invRho + correction[j], ti[j], bi[j]);
      }
    }
    return;
  }

  // OutIn: G is q x p0 (+ the bias column).  M = G U diag(c) is q x k; the correction of row j is
  // M_j Uᵀ, read through a k x p transposed copy of U for unit-stride inner loops.
  const ConstRows g(gradWeight, q, p0);
  RowMatrixF m(q, k);
  const int64_t blocks = (q + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (blocks > 1 && p0 * q > kParallelElements)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t j0 = blk * kColumnBlock, height = std::min(q, j0 + kColumnBlock) - j0;
    m.middleRows(j0, height).noalias() = g.middleRows(j0, height) * U.topRows(p0);
    if (spec.bias) {
      m.middleRows(j0, height).noalias() +=
          Eigen::Map<const Eigen::VectorXf>(gradBias + j0, height) * U.row(p0);
    }
    m.middleRows(j0, height) = m.middleRows(j0, height) * c.asDiagonal();
  }
  const RowMatrixF ut = U.transpose();
#pragma omp parallel if (p0 * q > kParallelElements)
  {
    std::vector<float> correction(static_cast<size_t>(p0));
#pragma omp for schedule(static)
    for (int64_t j = 0; j < q; ++j) {
      std::fill(correction.begin(), correction.end(), 0.0f);
      const float* mj = m.data() + j * k;
      float biasCorrection = 0.0f;
      for (int64_t kk = 0; kk < k; ++kk) {
        const float w = mj[kk];
        const float* uk = ut.data() + kk * spec.p();
        for (int64_t i = 0; i < p0; ++i) correction[i] += w * uk[i];
        if (spec.bias) biasCorrection += w * uk[p0];
      }
      const float* gj = gradWeight + j * p0;
      float* tj = weight + j * p0;
      float* bj = momentum + j * p0;
      for (int64_t i = 0; i < p0; ++i) applyUpdate(u, gj[i] * invRho + correction[i], tj[i], bj[i]);
      if (spec.bias) applyUpdate(u, gradBias[j] * invRho + biasCorrection, bias[j], biasMomentum[j]);
    }
  }
}

}  // namespace cpu
}  // namespace nysact
