// Backend-independent pieces of the interface: spec validation, TensorFlow conv geometry and the
// Philox sketch draws (compiled with -ffp-contract=off, see philox_sketch.h).
#include <cmath>
#include <numeric>
#include <sstream>
#include <vector>

#include "backend.h"
#include "philox_sketch.h"

namespace nysact {
namespace {

[[noreturn]] void invalid(const std::string& message) { throw Error("ERR_NYSACT_INVALID_ARGUMENT", message); }

constexpr int64_t kMaxDimension = int64_t{1} << 31;

void requireRange(const char* name, int64_t value, int64_t lo, int64_t hi) {
  if (value < lo || value > hi) {
    std::ostringstream msg;
    msg << "Expected an integer in [" << lo << ", " << hi << "] for spec." << name << " but received " << value;
    invalid(msg.str());
  }
}

}  // namespace

namespace {

[[noreturn]] void stateError(const std::string& message) { throw Error("ERR_NYSACT_STATE", message); }

template <typename T>
void requireSize(const char* field, const std::vector<T>& v, size_t expected, bool allowEmpty) {
  if (v.size() == expected || (allowEmpty && v.empty())) return;
  std::ostringstream msg;
  msg << "Expected state." << field << " to have " << expected << " elements" << (allowEmpty ? " (or none)" : "")
      << " but received " << v.size();
  stateError(msg.str());
}

}  // namespace

bool settleCholeskyReport(FactorReport& report, int enlargements, double shift) {
  report.attempts = enlargements + (enlargements < kMaxCholeskyAttempts ? 1 : 0);
  report.shift = shift;
  if (enlargements == kMaxCholeskyAttempts) {
    report.status = FactorStatus::KeptPrevious;
    report.detail = "Cholesky factorisation failed even with an enlarged shift";
    return false;
  }
  if (enlargements > 0) {
    std::ostringstream msg;
    msg << "Cholesky needed the shift enlarged " << enlargements << " time(s) to " << shift;
    report.status = FactorStatus::ShiftEnlarged;
    report.detail = msg.str();
  }
  return true;
}

void validateLayerState(const LayerSpec& spec, const LayerState& in) {
  if (spec.kind == LayerKind::Plain) {
    requireSize("momentum", in.momentum, static_cast<size_t>(spec.size), false);
    return;
  }
  const int64_t p = spec.p(), k = spec.r();
  const size_t pk = static_cast<size_t>(p * k);
  requireSize("ema", in.ema, pk, false);
  const bool sketched = !spec.fullCovariance();
  requireSize("sketch", in.sketch, sketched && spec.sketch == SketchKind::Gaussian ? pk : 0, true);
  requireSize("indices", in.indices, sketched && spec.sketch == SketchKind::Subcolumns ? static_cast<size_t>(k) : 0, true);
  requireSize("basis", in.basis, in.hasFactors ? pk : 0, false);
  requireSize("coefficients", in.coefficients, in.hasFactors ? static_cast<size_t>(k) : 0, false);
  requireSize("momentum", in.momentum, static_cast<size_t>(spec.weightSize()), false);
  requireSize("biasMomentum", in.biasMomentum, spec.bias ? static_cast<size_t>(spec.fanOut) : 0, false);
  for (int32_t index : in.indices)
    if (index < 0 || index >= p) stateError("state.indices holds a column outside [0, p)");
  if (in.emaSteps < 0) stateError("state.emaSteps must be non-negative");
  if (!(in.decayProduct >= 0.0 && in.decayProduct <= 1.0)) stateError("state.decayProduct must be in [0, 1]");
  if (in.hasFactors && !(std::isfinite(in.inverseDamping) && in.inverseDamping > 0.0)) {
    stateError("state.inverseDamping must be a positive finite number");
  }
}

void validateLayerSpec(const LayerSpec& s) {
  if (s.kind == LayerKind::Plain) {
    requireRange("size", s.size, 1, int64_t{1} << 40);
    return;
  }
  if (s.kind != LayerKind::Dense && s.kind != LayerKind::Conv2d) invalid("Expected 0, 1 or 2 for spec.kind");
  requireRange("fanIn", s.fanIn, 1, kMaxDimension);
  requireRange("fanOut", s.fanOut, 1, kMaxDimension);
  requireRange("rank", s.rank, 1, 1 << 16);
  if (s.fanIn * s.fanOut > (int64_t{1} << 40)) invalid("spec.fanIn * spec.fanOut is too large");
  if (s.sketch != SketchKind::Gaussian && s.sketch != SketchKind::Subcolumns) invalid("Expected 0 or 1 for spec.sketch");
  if (s.layout != WeightLayout::InOut && s.layout != WeightLayout::OutIn) invalid("Expected 0 or 1 for spec.layout");
  if (s.kind == LayerKind::Conv2d) {
    requireRange("kernelH", s.kernelH, 1, 1 << 12);
    requireRange("kernelW", s.kernelW, 1, 1 << 12);
    requireRange("inChannels", s.inChannels, 1, 1 << 24);
    requireRange("strideH", s.strideH, 1, 1 << 12);
    requireRange("strideW", s.strideW, 1, 1 << 12);
    requireRange("dilationH", s.dilationH, 1, 1 << 12);
    requireRange("dilationW", s.dilationW, 1, 1 << 12);
    if (s.padding != Padding::Valid && s.padding != Padding::Same) invalid("Expected 0 or 1 for spec.padding");
    if (int64_t{s.kernelH} * s.kernelW * s.inChannels != s.fanIn) {
      invalid("spec.fanIn must equal spec.kernelH * spec.kernelW * spec.inChannels");
    }
  }
}

ConvGeometry convGeometry(const LayerSpec& s, int64_t height, int64_t width) {
  ConvGeometry g{};
  const int64_t effH = (int64_t{s.kernelH} - 1) * s.dilationH + 1;
  const int64_t effW = (int64_t{s.kernelW} - 1) * s.dilationW + 1;
  if (s.padding == Padding::Same) {
    g.outH = (height + s.strideH - 1) / s.strideH;
    g.outW = (width + s.strideW - 1) / s.strideW;
    const int64_t padH = std::max<int64_t>((g.outH - 1) * s.strideH + effH - height, 0);
    const int64_t padW = std::max<int64_t>((g.outW - 1) * s.strideW + effW - width, 0);
    g.padTop = padH / 2;
    g.padLeft = padW / 2;
  } else {
    g.outH = height >= effH ? (height - effH) / s.strideH + 1 : 0;
    g.outW = width >= effW ? (width - effW) / s.strideW + 1 : 0;
    g.padTop = 0;
    g.padLeft = 0;
  }
  return g;
}

void philoxGaussianSketch(uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t p, int64_t r, float* out) {
  const double invSqrtP = 1.0 / std::sqrt(static_cast<double>(p));
  const int64_t n = p * r;
  const int64_t blocks = (n + 3) / 4;
  // Each block of 4 elements depends only on its counter: any split over threads gives the same
  // bits. Parallel only for large sketches (waking a second thread costs more below that).
#if defined(_OPENMP)  // the CUDA library builds this file without OpenMP
#pragma omp parallel for schedule(static) if (blocks > 8192)
#endif
  for (int64_t b = 0; b < blocks; ++b) {
    const r123::Philox4x32::ctr_type x = philox::draw(seed, layerKey, statStep, philox::kGaussian, static_cast<uint32_t>(b));
    for (int pair = 0; pair < 2; ++pair) {
      const int64_t e = 4 * b + 2 * pair;
      if (e >= n) break;
      float two[2];
      philox::gaussianSketchPair(x, pair, invSqrtP, two);
      out[e] = two[0];
      if (e + 1 < n) out[e + 1] = two[1];
    }
  }
}

void philoxSubcolumns(uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t p, int64_t r, int32_t* out) {
  // Partial Fisher–Yates: r distinct columns, in draw order.
  std::vector<int32_t> perm(static_cast<size_t>(p));
  std::iota(perm.begin(), perm.end(), 0);
  for (int64_t j = 0; j < r; ++j) {
    const int64_t pick = j + philox::subcolumnDraw(seed, layerKey, statStep, j, static_cast<uint32_t>(p - j));
    std::swap(perm[j], perm[pick]);
    out[j] = perm[j];
  }
}

std::vector<FactorReport> Backend::nystromFactorsBatch(const std::vector<Layer*>& layers, double damping,
                                                      NystromVariant variant) {
  std::vector<FactorReport> reports;
  reports.reserve(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    try {
      reports.push_back(layers[i]->nystromFactors(damping, variant));
    } catch (const Error& e) {
      throw BatchLayerError(i, e);
    }
  }
  return reports;
}

void Backend::preconditionedMomentumStepBatch(const std::vector<Layer*>& layers,
                                              const std::vector<StepOperands>& operands, const StepScalars& scalars) {
  for (size_t i = 0; i < layers.size(); ++i) {
    try {
      layers[i]->preconditionedMomentumStep(operands[i], scalars);
    } catch (const Error& e) {
      throw BatchLayerError(i, e);
    }
  }
}

}  // namespace nysact
