// Eigenvalue-shifted Nyström factors (SPEC §1 step 2), in double precision.  Only U (p x r) and
// the r coefficients are kept: P = U diag(1/(λ̂+ρ)) Uᵀ + (I − U Uᵀ)/ρ is never formed.
#include "nystrom.h"
#include "cpu_kernels.h"

#include <Eigen/Dense>

#include <cmath>
#include <sstream>

namespace nysact {
namespace cpu {
namespace {

using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename M>
bool finite(const M& m) {
  return m.allFinite();
}

// Chat = ema / (1 − Πβ), in double.
RowMatrixD biasCorrected(const NystromInput& in) {
  const double denominator = 1.0 - in.decayProduct;
  return Eigen::Map<const RowMatrixF>(in.ema, in.p, in.k).cast<double>() / denominator;
}

}  // namespace

FactorResult nystromFactors(const NystromInput& in) {
  FactorResult out;
  const double rho = in.damping;
  if (!(1.0 - in.decayProduct > 0.0)) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "no statistics committed yet";
    return out;
  }
  const RowMatrixD chat = biasCorrected(in);
  if (!finite(chat)) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "covariance estimate is not finite";
    return out;
  }

  if (in.full) {
    // P = (Ĉ + ρI)⁻¹ = Q diag(1/(μ+ρ)) Qᵀ: stored as the full eigenbasis with c = 1/(μ+ρ) − 1/ρ,
    // so the same low-rank apply serves both kinds of layer.
    const Eigen::MatrixXd sym = 0.5 * (chat + chat.transpose());
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(sym);
    if (eig.info() != Eigen::Success || !finite(eig.eigenvalues()) || (eig.eigenvalues().array() + rho).minCoeff() <= 0.0) {
      out.report.status = FactorStatus::KeptPrevious;
      out.report.detail = "eigendecomposition of the full covariance failed";
      return out;
    }
    out.basis = eig.eigenvectors().cast<float>();
    out.coefficients.resize(in.p);
    for (int64_t i = 0; i < in.p; ++i)
      out.coefficients[i] = static_cast<float>(1.0 / (eig.eigenvalues()[i] + rho) - 1.0 / rho);
    out.ok = true;
    return out;
  }

  const int64_t p = in.p, r = in.k;
  RowMatrixD sketch = RowMatrixD::Zero(p, r);
  if (in.indices != nullptr) {
    for (int64_t j = 0; j < r; ++j) sketch(in.indices[j], j) = 1.0;
  } else {
    sketch = Eigen::Map<const RowMatrixF>(in.sketch, p, r).cast<double>();
  }
  const RowMatrixD y = chat + rho * sketch;
  const Eigen::MatrixXd w = sketch.transpose() * y;
  // M = YᵀY (r x r, lower triangle): with W, the only products over p before U = Y T below.
  Eigen::MatrixXd m = Eigen::MatrixXd::Zero(r, r);
  m.selfadjointView<Eigen::Lower>().rankUpdate(y.transpose());
  // The reference eigendecomposes the lower triangle of the (non-symmetric) W.
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(w, Eigen::ComputeEigenvectors);
  if (eig.info() != Eigen::Success || !finite(eig.eigenvalues()) || !finite(eig.eigenvectors())) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "eigendecomposition of SᵀY failed";
    return out;
  }
  const Eigen::VectorXd& lambda = eig.eigenvalues();
  const Eigen::MatrixXd& v = eig.eigenvectors();
  double shift = std::fabs(lambda.minCoeff()) + rho;
  Eigen::LLT<Eigen::MatrixXd> llt;
  int attempts = 0;
  for (; attempts < kMaxCholeskyAttempts; ++attempts) {
    const Eigen::MatrixXd wh = v * (lambda.array() + shift).matrix().asDiagonal() * v.transpose();
    llt.compute(wh);
    if (llt.info() == Eigen::Success && finite(Eigen::MatrixXd(llt.matrixL()))) break;
    shift *= 10.0;
  }
  if (!settleCholeskyReport(out.report, attempts, shift)) return out;

  // The thin SVD B = U Σ Qᵀ of the p x r Nyström factor, without forming B: reference B = Y L⁻¹
  // (B L = Y), textbook B = Y L⁻ᵀ.  BᵀB = K M Kᵀ with K = L⁻ᵀ (reference) or L⁻¹ (textbook), an
  // r x r problem: BᵀB = Q Σ² Qᵀ, and U = B Q Σ⁻¹ = Y (Kᵀ Q Σ⁻¹).  Only the directions with
  // λ̂ = σ² − shift > 0 matter (the others have coefficient 0); for them σ² > shift ≥ ρ, so Σ⁻¹ is
  // bounded, and U's other columns are stored as zeros.  Cost O(p·r²) in two products instead of
  // a triangular solve and a Jacobi SVD over p x r.
  const Eigen::MatrixXd mFull = m.selfadjointView<Eigen::Lower>();
  const bool reference = in.variant == NystromVariant::Reference;
  // K M, then (K M) Kᵀ = (K (K M)ᵀ)ᵀ; K x = solve with Lᵀ (reference) or L (textbook).
  auto applyK = [&](const Eigen::MatrixXd& x) -> Eigen::MatrixXd {
    return reference ? Eigen::MatrixXd(llt.matrixU().solve(x)) : Eigen::MatrixXd(llt.matrixL().solve(x));
  };
  const Eigen::MatrixXd km = applyK(mFull);
  const Eigen::MatrixXd kmk = applyK(km.transpose()).transpose();
  const Eigen::MatrixXd gram = 0.5 * (kmk + kmk.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> gramEig(gram, Eigen::ComputeEigenvectors);
  if (gramEig.info() != Eigen::Success || !finite(gramEig.eigenvalues()) || !finite(gramEig.eigenvectors())) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "eigendecomposition of the Nyström factor's Gram matrix BᵀB failed";
    return out;
  }
  // Descending σ², as a thin SVD orders them.
  Eigen::MatrixXd q(r, r);
  Eigen::VectorXd lambdaHat(r), inverseSigma = Eigen::VectorXd::Zero(r);
  for (int64_t j = 0; j < r; ++j) {
    const int64_t from = r - 1 - j;
    q.col(j) = gramEig.eigenvectors().col(from);
    const double sigma2 = std::max(gramEig.eigenvalues()[from], 0.0);
    lambdaHat[j] = std::max(sigma2 - shift, 0.0);
    if (lambdaHat[j] > 0.0) inverseSigma[j] = 1.0 / std::sqrt(sigma2);
  }
  // Kᵀ = L⁻¹ (reference) or L⁻ᵀ (textbook).
  const Eigen::MatrixXd kq = reference ? Eigen::MatrixXd(llt.matrixL().solve(q)) : Eigen::MatrixXd(llt.matrixU().solve(q));
  const Eigen::MatrixXd t = kq * inverseSigma.asDiagonal();
  const Eigen::MatrixXd u = y * t;
  if (!finite(u)) {
    out.report.status = FactorStatus::KeptPrevious;
    out.report.detail = "the Nyström basis is not finite";
    return out;
  }
  out.basis = u.cast<float>();
  out.coefficients.resize(r);
  for (int64_t j = 0; j < r; ++j) out.coefficients[j] = static_cast<float>(1.0 / (lambdaHat[j] + rho) - 1.0 / rho);
  out.ok = true;
  return out;
}

}  // namespace cpu
}  // namespace nysact
