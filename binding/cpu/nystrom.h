#pragma once

#include <Eigen/Dense>

#include <cstdint>
#include <vector>

#include "../backend.h"

namespace nysact {
namespace cpu {

struct NystromInput {
  const float* ema;        // p x k row-major (full: p x p)
  const float* sketch;     // p x k gaussian sketch, or null with indices
  const int32_t* indices;  // k subcolumn indices, or null
  int64_t p, k;
  bool full;
  double decayProduct;  // Π β: Ĉ = ema / (1 − Π β)
  double damping;
  NystromVariant variant;
};

struct FactorResult {
  bool ok = false;  // false: keep previous factors (report says why)
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> basis;
  std::vector<float> coefficients;
  FactorReport report;
};

FactorResult nystromFactors(const NystromInput& in);

}  // namespace cpu
}  // namespace nysact
