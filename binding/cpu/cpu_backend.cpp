// The CPU backend: per-layer state in host memory, kernels in sketch.cpp, nystrom.cpp, update.cpp.
#include <Eigen/Core>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../backend.h"
#include "cpu_kernels.h"
#include "nystrom.h"

namespace nysact {
namespace {

template <typename T, typename A>
size_t bytesOf(const std::vector<T, A>& v) {
  return v.capacity() * sizeof(T);
}

class CpuLayer final : public Layer {
 public:
  explicit CpuLayer(const LayerSpec& spec) : spec_(spec) {
    validateLayerSpec(spec_);
    if (spec_.kind == LayerKind::Plain) {
      momentum_.assign(static_cast<size_t>(spec_.size), 0.0f);
      return;
    }
    p_ = spec_.p();
    k_ = spec_.r();
    ema_.assign(static_cast<size_t>(p_ * k_), 0.0f);
    momentum_.assign(static_cast<size_t>(spec_.weightSize()), 0.0f);
    if (spec_.bias) biasMomentum_.assign(static_cast<size_t>(spec_.fanOut), 0.0f);
  }

  const LayerSpec& spec() const override { return spec_; }

  // Host and page-locked host memory are the same to the CPU; it has no device memory.
  bool sketchCovarianceDense(const float* x, int64_t rows, const SketchInput& sketch,
                             MemoryKind xMemory = MemoryKind::Host) override {
    requirePreconditioned("sketchCovarianceDense");
    requireHostActivations(xMemory);
    if (!cpu::allFinite(x, rows * spec_.fanIn)) return false;
    prepareSketch(sketch);
    pendingCovariance_.resize(static_cast<size_t>(p_ * k_));
    cpu::sketchCovarianceDense(x, rows, spec_.fanIn, spec_.bias, sketchForProduct(), k_, pendingCovariance_.data());
    hasPending_ = true;
    return true;
  }

  bool sketchCovarianceConv(const float* x, const ConvInput& input, const SketchInput& sketch,
                            MemoryKind xMemory = MemoryKind::Host) override {
    requirePreconditioned("sketchCovarianceConv");
    requireHostActivations(xMemory);
    if (spec_.kind != LayerKind::Conv2d) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "sketchCovarianceConv needs a conv2d layer");
    if (!cpu::allFinite(x, input.batch * input.height * input.width * spec_.inChannels)) return false;
    prepareSketch(sketch);
    pendingCovariance_.resize(static_cast<size_t>(p_ * k_));
    cpu::sketchCovarianceConv(x, spec_, input, sketchForProduct(), k_, pendingCovariance_.data());
    hasPending_ = true;
    return true;
  }

  bool hasPendingStatistics() const override { return hasPending_; }
  void discardPendingStatistics() override { hasPending_ = false; }

  void readPendingCovariance(float* out) const override {
    requirePending();
    std::memcpy(out, pendingCovariance_.data(), pendingCovariance_.size() * sizeof(float));
  }
  void writePendingCovariance(const float* in) override {
    requirePending();
    std::memcpy(pendingCovariance_.data(), in, pendingCovariance_.size() * sizeof(float));
  }

  void commitStatistics(double statDecay) override {
    requirePending();
    const float beta = static_cast<float>(statDecay), oneMinus = static_cast<float>(1.0 - statDecay);
    for (size_t i = 0; i < ema_.size(); ++i) ema_[i] = beta * ema_[i] + oneMinus * pendingCovariance_[i];
    decayProduct_ *= statDecay;
    emaSteps_ += 1;
    if (!spec_.fullCovariance()) {
      if (spec_.sketch == SketchKind::Gaussian) {
        sketch_.swap(pendingSketch_);
      } else {
        indices_.swap(pendingIndices_);
      }
    }
    hasPending_ = false;
  }

  FactorReport nystromFactors(double damping, NystromVariant variant) override {
    requirePreconditioned("nystromFactors");
    cpu::NystromInput in{};
    in.ema = ema_.data();
    in.p = p_;
    in.k = k_;
    in.full = spec_.fullCovariance();
    in.sketch = (!in.full && spec_.sketch == SketchKind::Gaussian && !sketch_.empty()) ? sketch_.data() : nullptr;
    in.indices = (!in.full && spec_.sketch == SketchKind::Subcolumns && !indices_.empty()) ? indices_.data() : nullptr;
    in.decayProduct = decayProduct_;
    in.damping = damping;
    in.variant = variant;
    cpu::FactorResult result;
    if (!in.full && in.sketch == nullptr && in.indices == nullptr) {
      result.report.status = FactorStatus::KeptPrevious;
      result.report.detail = "no sketch committed yet";
    } else {
      result = cpu::nystromFactors(in);
    }
    if (result.ok) {
      basis_.assign(result.basis.data(), result.basis.data() + result.basis.size());
      coefficients_.assign(result.coefficients.begin(), result.coefficients.end());
      inverseDamping_ = 1.0 / damping;
      hasFactors_ = true;
      if (result.report.status != FactorStatus::Ok) factorFallbacks_ += 1;
      return result.report;
    }
    factorFallbacks_ += 1;
    if (!hasFactors_) {
      // P = I/ρ: a zero correction on any orthonormal basis.
      basis_.assign(static_cast<size_t>(p_ * k_), 0.0f);
      coefficients_.assign(static_cast<size_t>(k_), 0.0f);
      inverseDamping_ = 1.0 / damping;
      hasFactors_ = true;
      result.report.status = FactorStatus::Identity;
    }
    return result.report;
  }

  void preconditionedMomentumStep(const StepOperands& o, const StepScalars& s) override {
    // Host and "pinned" host memory are the same thing here; the CPU backend has no device memory.
    if (!isHostMemory(o.weightMemory) || !isHostMemory(o.gradWeightMemory) || !isHostMemory(o.biasMemory) ||
        !isHostMemory(o.gradBiasMemory)) {
      throw Error("ERR_NYSACT_INVALID_ARGUMENT", "The CPU backend cannot read device memory (a CUDA tensor)");
    }
    if (spec_.kind == LayerKind::Plain) {
      cpu::momentumStep(spec_.size, o.weight, o.gradWeight, momentum_.data(), s);
      return;
    }
    if (!hasFactors_) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "preconditionedMomentumStep before the first nystromFactors");
    cpu::preconditionedMomentumStep(spec_, basis_.data(), coefficients_.data(), k_, inverseDamping_, o.weight, o.bias,
                                    o.gradWeight, o.gradBias, momentum_.data(),
                                    spec_.bias ? biasMomentum_.data() : nullptr, s);
  }

  void exportState(LayerState& out) const override {
    out.ema.assign(ema_.begin(), ema_.end());
    out.sketch.assign(sketch_.begin(), sketch_.end());
    out.indices = indices_;
    out.basis.assign(basis_.begin(), basis_.end());
    out.coefficients.assign(coefficients_.begin(), coefficients_.end());
    out.inverseDamping = inverseDamping_;
    out.decayProduct = decayProduct_;
    out.momentum.assign(momentum_.begin(), momentum_.end());
    out.biasMomentum.assign(biasMomentum_.begin(), biasMomentum_.end());
    out.emaSteps = emaSteps_;
    out.hasFactors = hasFactors_;
    out.factorFallbacks = factorFallbacks_;
  }

  void importState(const LayerState& in) override {
    validateLayerState(spec_, in);
    if (spec_.kind == LayerKind::Plain) {
      momentum_.assign(in.momentum.begin(), in.momentum.end());
      return;
    }
    ema_.assign(in.ema.begin(), in.ema.end());
    sketch_.assign(in.sketch.begin(), in.sketch.end());
    indices_ = in.indices;
    basis_.assign(in.basis.begin(), in.basis.end());
    coefficients_.assign(in.coefficients.begin(), in.coefficients.end());
    inverseDamping_ = in.inverseDamping;
    decayProduct_ = in.decayProduct;
    momentum_.assign(in.momentum.begin(), in.momentum.end());
    biasMomentum_.assign(in.biasMomentum.begin(), in.biasMomentum.end());
    emaSteps_ = in.emaSteps;
    hasFactors_ = in.hasFactors;
    factorFallbacks_ = in.factorFallbacks;
    hasPending_ = false;
  }

  size_t stateBytes() const override {
    return bytesOf(ema_) + bytesOf(sketch_) + bytesOf(indices_) + bytesOf(basis_) + bytesOf(coefficients_) +
           bytesOf(momentum_) + bytesOf(biasMomentum_) + bytesOf(pendingCovariance_) + bytesOf(pendingSketch_) +
           bytesOf(pendingIndices_) + bytesOf(productSketch_);
  }

 private:
  void requirePreconditioned(const char* what) const {
    if (spec_.kind == LayerKind::Plain) {
      throw Error("ERR_NYSACT_INVALID_ARGUMENT", std::string(what) + " is not available on a plain parameter");
    }
  }
  static void requireHostActivations(MemoryKind kind) {
    if (!isHostMemory(kind)) {
      throw Error("ERR_NYSACT_INVALID_ARGUMENT", "The CPU backend cannot read activations in device memory");
    }
  }
  void requirePending() const {
    requirePreconditioned("pending statistics");
    if (!hasPending_) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "no pending statistics: call sketchCovariance first");
  }

  // Fills the pending sketch for this statistics step: caller-supplied, or Philox keyed by
  // (seed, layer, emaSteps).  Full-covariance layers use the identity.
  void prepareSketch(const SketchInput& in) {
    if (spec_.fullCovariance()) return;
    const uint64_t step = static_cast<uint64_t>(emaSteps_);
    if (spec_.sketch == SketchKind::Gaussian) {
      pendingSketch_.resize(static_cast<size_t>(p_ * k_));
      if (in.matrix != nullptr) {
        std::memcpy(pendingSketch_.data(), in.matrix, pendingSketch_.size() * sizeof(float));
      } else {
        philoxGaussianSketch(spec_.seed, spec_.layerKey, step, p_, k_, pendingSketch_.data());
      }
    } else {
      pendingIndices_.resize(static_cast<size_t>(k_));
      if (in.indices != nullptr) {
        std::memcpy(pendingIndices_.data(), in.indices, pendingIndices_.size() * sizeof(int32_t));
      } else {
        philoxSubcolumns(spec_.seed, spec_.layerKey, step, p_, k_, pendingIndices_.data());
      }
    }
  }

  // The p x k matrix the products use: the gaussian sketch, the subcolumn selector, or I.
  const float* sketchForProduct() {
    if (!spec_.fullCovariance() && spec_.sketch == SketchKind::Gaussian) return pendingSketch_.data();
    productSketch_.assign(static_cast<size_t>(p_ * k_), 0.0f);
    if (spec_.fullCovariance()) {
      for (int64_t i = 0; i < p_; ++i) productSketch_[i * k_ + i] = 1.0f;
    } else {
      for (int64_t j = 0; j < k_; ++j) productSketch_[pendingIndices_[j] * k_ + j] = 1.0f;
    }
    return productSketch_.data();
  }

  LayerSpec spec_;
  int64_t p_ = 0, k_ = 0;
  // Aligned storage (cpu_kernels.h): heap-dependent alignment would make results differ from run
  // to run.
  cpu::AlignedFloats ema_, sketch_, basis_, coefficients_, momentum_, biasMomentum_;
  std::vector<int32_t> indices_;
  double inverseDamping_ = 0.0, decayProduct_ = 1.0;
  int64_t emaSteps_ = 0, factorFallbacks_ = 0;
  bool hasFactors_ = false;
  // Transient: the statistics of the current step, before commitStatistics.
  cpu::AlignedFloats pendingCovariance_, pendingSketch_, productSketch_;
  std::vector<int32_t> pendingIndices_;
  bool hasPending_ = false;
};

class CpuBackend final : public Backend {
 public:
  CpuBackend() {
    // Eigen must not thread its own products: our chunking fixes the summation order.
    Eigen::setNbThreads(1);
  }
  const char* name() const override { return "cpu"; }
  std::unique_ptr<Layer> createLayer(const LayerSpec& spec) override { return std::make_unique<CpuLayer>(spec); }

  // The layers' rebuilds are independent (each reads and writes only its own state, and Eigen runs
  // single-threaded inside, see the constructor), so running them on OpenMP threads gives the serial
  // loop's bits.  Every layer is attempted; the first failing one (by position) is reported.
  std::vector<FactorReport> nystromFactorsBatch(const std::vector<Layer*>& layers, double damping,
                                                NystromVariant variant) override {
    for (Layer* layer : layers) {
      if (dynamic_cast<CpuLayer*>(layer) == nullptr) {
        throw Error("ERR_NYSACT_INVALID_ARGUMENT", "nystromFactorsBatch: a layer of another backend");
      }
    }
    const int64_t n = static_cast<int64_t>(layers.size());
    std::vector<FactorReport> reports(layers.size());
    std::vector<std::exception_ptr> errors(layers.size());
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int64_t i = 0; i < n; ++i) {
      try {
        reports[static_cast<size_t>(i)] = layers[static_cast<size_t>(i)]->nystromFactors(damping, variant);
      } catch (...) {
        errors[static_cast<size_t>(i)] = std::current_exception();
      }
    }
    for (size_t i = 0; i < errors.size(); ++i) {
      if (!errors[i]) continue;
      try {
        std::rethrow_exception(errors[i]);
      } catch (const Error& e) {
        throw BatchLayerError(i, e);
      }
    }
    return reports;
  }
  bool allFinite(const float* x, size_t n, MemoryKind kind) const override {
    requireHost(kind);
    return cpu::allFinite(x, static_cast<int64_t>(n));
  }
  void synchronize() override {}

  // Caller memory is 64-byte aligned host memory (a cache line, and Eigen's widest packet) for
  // every host kind: page-locking means nothing without a device.
  void* allocate(MemoryKind kind, size_t bytes) override {
    requireHost(kind);
    if (bytes == 0) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "Cannot allocate 0 bytes");
    const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    if (rounded < bytes) throw Error("ERR_NYSACT_NATIVE", "Out of host memory");
    void* memory = std::aligned_alloc(kAlignment, rounded);
    if (memory == nullptr) throw Error("ERR_NYSACT_NATIVE", "Out of host memory allocating an aligned buffer");
    return memory;
  }
  void release(MemoryKind, void* memory) noexcept override { std::free(memory); }
  void copy(void* dst, MemoryKind dstKind, const void* src, MemoryKind srcKind, size_t bytes) override {
    requireHost(dstKind);
    requireHost(srcKind);
    if (bytes > 0) std::memmove(dst, src, bytes);
  }
  void fill(float* dst, MemoryKind kind, float value, size_t count) override {
    requireHost(kind);
    std::fill(dst, dst + count, value);
  }

 private:
  static constexpr size_t kAlignment = 64;
  static void requireHost(MemoryKind kind) {
    if (!isHostMemory(kind)) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "The CPU backend has no device memory");
  }
};

}  // namespace

Backend& cpuBackend() {
  static CpuBackend backend;
  return backend;
}

int cpuThreads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void setCpuThreads(int threads) {
#ifdef _OPENMP
  omp_set_num_threads(std::max(1, threads));
#else
  (void)threads;
#endif
}

}  // namespace nysact
