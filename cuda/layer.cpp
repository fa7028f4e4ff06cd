#include "layer.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "nystrom.cuh"
#include "sketch.cuh"
#include "update.cuh"

namespace nysact {
namespace cuda {
namespace {

template <typename T>
void zeroed(const Context& ctx, DeviceArray<T>& a, size_t n) {
  a.resize(n);
  if (n > 0) NYSACT_CUDA_CHECK(cudaMemsetAsync(a.data(), 0, n * sizeof(T), ctx.stream()));
}

template <typename T>
void upload(const Context& ctx, DeviceArray<T>& a, const std::vector<T>& v) {
  a.resize(v.size());
  copyToDevice(ctx, a.data(), v.data(), v.size() * sizeof(T));
}

template <typename T>
std::vector<T> download(const Context& ctx, const DeviceArray<T>& a) {
  std::vector<T> v(a.size());
  copyToHost(ctx, v.data(), a.data(), a.bytes());
  return v;
}

template <typename T>
T* piece(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

}  // namespace

CudaLayer::CudaLayer(Context& ctx, const LayerSpec& spec) : ctx_(ctx), spec_(spec) {
  validateLayerSpec(spec_);
  if (spec_.kind == LayerKind::Plain) {
    zeroed(ctx_, momentum_, static_cast<size_t>(spec_.size));
  } else {
    p_ = spec_.p();
    k_ = spec_.r();
    zeroed(ctx_, ema_, static_cast<size_t>(p_ * k_));
    zeroed(ctx_, momentum_, static_cast<size_t>(spec_.weightSize()));
    if (spec_.bias) zeroed(ctx_, biasMomentum_, static_cast<size_t>(spec_.fanOut));
  }
  ctx_.synchronize();
}

void CudaLayer::requirePreconditioned(const char* what) const {
  if (spec_.kind == LayerKind::Plain) {
    throw Error("ERR_NYSACT_INVALID_ARGUMENT", std::string(what) + " is not available on a plain parameter");
  }
}

void CudaLayer::requirePending() const {
  requirePreconditioned("pending statistics");
  if (!hasPending_) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "no pending statistics: call sketchCovariance first");
}

void CudaLayer::prepareSketch(const SketchInput& in) {
  if (spec_.fullCovariance()) return;
  const uint64_t step = static_cast<uint64_t>(emaSteps_);
  if (spec_.sketch == SketchKind::Gaussian) {
    candidateSketch_.resize(static_cast<size_t>(p_ * k_));
    if (in.matrix != nullptr) {
      copyToDevice(ctx_, candidateSketch_.data(), in.matrix, candidateSketch_.bytes());
    } else {
      launchGaussianSketch(ctx_, spec_.seed, spec_.layerKey, step, p_, k_, candidateSketch_.data());
    }
  } else {
    // The subcolumn draw is a sequential partial Fisher–Yates over k integers: drawn on the host by
    // the shared code (binding/common.cpp), identical by construction, and uploaded (k ints).
    candidateIndices_.resize(static_cast<size_t>(k_));
    if (in.indices != nullptr) {
      std::memcpy(candidateIndices_.data(), in.indices, candidateIndices_.size() * sizeof(int32_t));
    } else {
      philoxSubcolumns(spec_.seed, spec_.layerKey, step, p_, k_, candidateIndices_.data());
    }
    upload(ctx_, candidateIndicesDevice_, candidateIndices_);
  }
}

bool CudaLayer::runSketch(const float* x, MemoryKind xMemory, int64_t rows, const ConvInput* conv) {
  candidateCovariance_.resize(static_cast<size_t>(p_ * k_));
  SketchOperand operand;
  if (!spec_.fullCovariance()) {
    if (spec_.sketch == SketchKind::Gaussian) {
      operand.matrix = candidateSketch_.data();
    } else {
      operand.indices = candidateIndicesDevice_.data();
    }
  }
  bool ok;
  if (conv == nullptr) {
    ok = cuda::sketchCovarianceDense(ctx_, x, xMemory, rows, spec_.fanIn, spec_.bias, operand, k_,
                                     candidateCovariance_.data());
  } else {
    // Device input: the tile gather reads the caller's tensor in place.  Host input is staged
    // (pinned memory: an asynchronous copy on the stream; pageable: the runtime's staging).
    const float* deviceX = x;
    if (xMemory != MemoryKind::Device) {
      const size_t bytes = static_cast<size_t>(conv->batch * conv->height * conv->width * spec_.inChannels) * sizeof(float);
      float* staged = reinterpret_cast<float*>(ctx_.staging(bytes));
      copyToDevice(ctx_, staged, x, bytes);
      deviceX = staged;
    }
    ok = cuda::sketchCovarianceConv(ctx_, deviceX, spec_, *conv, operand, k_, candidateCovariance_.data());
  }
  if (!ok) return false;
  pendingCovariance_.swap(candidateCovariance_);
  if (!spec_.fullCovariance()) {
    if (spec_.sketch == SketchKind::Gaussian) {
      pendingSketch_.swap(candidateSketch_);
    } else {
      pendingIndices_ = candidateIndices_;
    }
  }
  hasPending_ = true;
  return true;
}

bool CudaLayer::sketchCovarianceDense(const float* x, int64_t rows, const SketchInput& sketch, MemoryKind xMemory) {
  requirePreconditioned("sketchCovarianceDense");
  prepareSketch(sketch);
  return runSketch(x, xMemory, rows, nullptr);
}

bool CudaLayer::sketchCovarianceConv(const float* x, const ConvInput& input, const SketchInput& sketch,
                                     MemoryKind xMemory) {
  requirePreconditioned("sketchCovarianceConv");
  if (spec_.kind != LayerKind::Conv2d) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "sketchCovarianceConv needs a conv2d layer");
  prepareSketch(sketch);
  return runSketch(x, xMemory, 0, &input);
}

bool CudaLayer::sketchResident(const float* deviceX, int64_t rows, const ConvInput* conv) {
  requirePreconditioned("sketchResident");
  prepareSketch(SketchInput{});
  return runSketch(deviceX, MemoryKind::Device, rows, conv);
}

void CudaLayer::discardPendingStatistics() { hasPending_ = false; }

void CudaLayer::readPendingCovariance(float* out) const {
  requirePending();
  copyToHost(ctx_, out, pendingCovariance_.data(), pendingCovariance_.bytes());
  ctx_.synchronize();
}

void CudaLayer::writePendingCovariance(const float* in) {
  requirePending();
  copyToDevice(ctx_, pendingCovariance_.data(), in, pendingCovariance_.bytes());
  ctx_.synchronize();
}

void CudaLayer::commitStatistics(double statDecay) {
  requirePending();
  launchEmaUpdate(ctx_, ema_.data(), pendingCovariance_.data(), static_cast<int64_t>(ema_.size()),
                  static_cast<float>(statDecay), static_cast<float>(1.0 - statDecay));
  ctx_.synchronize();
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

bool CudaLayer::factorInput(double damping, NystromVariant variant, NystromDeviceInput& in, FactorReport& report) const {
  in.ema = ema_.data();
  in.p = p_;
  in.k = k_;
  in.full = spec_.fullCovariance();
  in.sketch = (!in.full && spec_.sketch == SketchKind::Gaussian && !sketch_.empty()) ? sketch_.data() : nullptr;
  in.indices = (!in.full && spec_.sketch == SketchKind::Subcolumns && !indices_.empty()) ? &indices_ : nullptr;
  in.decayProduct = decayProduct_;
  in.damping = damping;
  in.variant = variant;
  if (!in.full && in.sketch == nullptr && in.indices == nullptr) {
    report.status = FactorStatus::KeptPrevious;
    report.detail = "no sketch committed yet";
    return false;
  }
  return true;
}

FactorReport CudaLayer::settleFactors(bool ok, FactorReport report, double damping) {
  if (ok) {
    inverseDamping_ = 1.0 / damping;
    hasFactors_ = true;
    if (report.status != FactorStatus::Ok) factorFallbacks_ += 1;
    return report;
  }
  factorFallbacks_ += 1;
  if (!hasFactors_) {
    // P = I/ρ: a zero correction on any orthonormal basis.
    zeroed(ctx_, basis_, static_cast<size_t>(p_ * k_));
    zeroed(ctx_, coefficients_, static_cast<size_t>(k_));
    ctx_.synchronize();
    inverseDamping_ = 1.0 / damping;
    hasFactors_ = true;
    report.status = FactorStatus::Identity;
  }
  return report;
}

FactorReport CudaLayer::nystromFactors(double damping, NystromVariant variant) {
  requirePreconditioned("nystromFactors");
  NystromDeviceInput in;
  NystromDeviceResult result;
  // U goes straight into basis_: cuda::nystromFactors writes it only once every check has passed
  // (so a failed rebuild leaves the previous factors), and no second p x k array is allocated.
  if (factorInput(damping, variant, in, result.report)) result = cuda::nystromFactors(ctx_, in, basis_);
  if (result.ok) {
    upload(ctx_, coefficients_, result.coefficients);
    ctx_.synchronize();
  }
  return settleFactors(result.ok, std::move(result.report), damping);
}

namespace {

bool perLayerFactors() {
  const char* mode = std::getenv("NYSACT_CUDA_FACTORS");
  return mode != nullptr && std::strcmp(mode, "per-layer") == 0;
}

}  // namespace

std::vector<FactorReport> CudaLayer::nystromFactorsBatch(const std::vector<CudaLayer*>& layers, double damping,
                                                         NystromVariant variant) {
  std::vector<FactorReport> reports(layers.size());
  // Runs layers[i]'s own rebuild, naming it in an error.
  auto single = [&](size_t i) {
    try {
      reports[i] = layers[i]->nystromFactors(damping, variant);
    } catch (const Error& e) {
      throw BatchLayerError(i, e);
    }
  };
  for (size_t i = 0; i < layers.size(); ++i) {
    try {
      layers[i]->requirePreconditioned("nystromFactors");
      if (&layers[i]->context() != &layers.front()->context()) {
        throw Error("ERR_NYSACT_INVALID_ARGUMENT", "a batched rebuild needs layers of one device");
      }
    } catch (const Error& e) {
      throw BatchLayerError(i, e);
    }
  }
  if (layers.empty()) return reports;
  if (perLayerFactors()) {
    for (size_t i = 0; i < layers.size(); ++i) single(i);
    return reports;
  }
  Context& ctx = layers.front()->context();
  std::vector<NystromDeviceInput> inputs(layers.size());
  std::vector<bool> missing(layers.size(), false);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i]->factorInput(damping, variant, inputs[i], reports[i])) {
      missing[i] = true;
      inputs[i].full = true;  // not batched: settled below
    }
  }
  // U and the coefficients go straight into the layer's arrays (allocated on its first rebuild).
  auto destination = [&](size_t i, float** basis, float** coefficients) {
    CudaLayer& l = *layers[i];
    l.basis_.resize(static_cast<size_t>(l.p_ * l.k_));
    l.coefficients_.resize(static_cast<size_t>(l.k_));
    *basis = l.basis_.data();
    *coefficients = l.coefficients_.data();
  };
  const std::vector<NystromBatchOutcome> outcomes = nystromFactorsBatched(ctx, inputs, destination);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (missing[i]) {
      reports[i] = layers[i]->settleFactors(false, std::move(reports[i]), damping);
    } else if (outcomes[i].perLayer) {
      single(i);
    } else {
      reports[i] = layers[i]->settleFactors(outcomes[i].result.ok, outcomes[i].result.report, damping);
    }
  }
  return reports;
}

namespace {

// A step operand on the device: the caller's device memory as it is, or (host and pinned memory)
// a scratch piece filled by an asynchronous copy on the stream.
template <typename T>
T* onDevice(const Context& ctx, T* caller, MemoryKind kind, char* base, size_t offset, size_t count) {
  if (caller == nullptr || kind == MemoryKind::Device) return caller;
  float* staged = piece<float>(base, offset);
  copyToDevice(ctx, staged, caller, count * sizeof(float));
  return staged;
}

// Pieces of the scratch arena needed to stage host operands (none for device operands).
size_t stagedCount(MemoryKind kind, size_t count) { return kind == MemoryKind::Device ? 0 : count; }

}  // namespace

CudaLayer::StepLayout CudaLayer::stepLayout(const StepOperands& o) const {
  const size_t n = static_cast<size_t>(spec_.weightSize());
  StepLayout l{};
  ScratchPlan plan;
  l.oW = plan.add<float>(stagedCount(o.weightMemory, n));
  l.oG = plan.add<float>(stagedCount(o.gradWeightMemory, n));
  if (spec_.kind != LayerKind::Plain) {
    const size_t qBias = spec_.bias ? static_cast<size_t>(spec_.fanOut) : 0;
    l.oB = plan.add<float>(stagedCount(o.biasMemory, qBias));
    l.oGb = plan.add<float>(stagedCount(o.gradBiasMemory, qBias));
    l.oM = plan.add<float>(mFloats());
  }
  l.total = plan.total();
  return l;
}

void CudaLayer::preconditionedMomentumStep(const StepOperands& o, const StepScalars& s) {
  const size_t n = static_cast<size_t>(spec_.weightSize());
  const StepLayout L = stepLayout(o);
  if (spec_.kind == LayerKind::Plain) {
    char* base = L.total > 0 ? ctx_.scratch(L.total) : nullptr;
    float* w = onDevice(ctx_, o.weight, o.weightMemory, base, L.oW, n);
    const float* g = onDevice(ctx_, o.gradWeight, o.gradWeightMemory, base, L.oG, n);
    cuda::momentumStep(ctx_, static_cast<int64_t>(n), w, g, momentum_.data(), s);
    if (o.weightMemory != MemoryKind::Device) copyToHost(ctx_, o.weight, w, n * sizeof(float));
    return;
  }
  if (!hasFactors_) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "preconditionedMomentumStep before the first nystromFactors");
  char* base = ctx_.scratch(L.total);
  const DeviceStep d = deviceStep(o, base, L, piece<float>(base, L.oM));
  cuda::preconditionedMomentumStep(ctx_, spec_, d, s);
  const size_t q = static_cast<size_t>(spec_.fanOut);
  if (o.weightMemory != MemoryKind::Device) copyToHost(ctx_, o.weight, d.weight, n * sizeof(float));
  if (spec_.bias && o.biasMemory != MemoryKind::Device) copyToHost(ctx_, o.bias, d.bias, q * sizeof(float));
}

DeviceStep CudaLayer::deviceStep(const StepOperands& o, char* base, const StepLayout& L, float* scratchM) const {
  const size_t n = static_cast<size_t>(spec_.weightSize()), q = static_cast<size_t>(spec_.fanOut);
  DeviceStep d;
  d.basis = basis_.data();
  d.coefficients = coefficients_.data();
  d.k = k_;
  d.inverseDamping = static_cast<float>(inverseDamping_);
  d.weight = onDevice(ctx_, o.weight, o.weightMemory, base, L.oW, n);
  d.gradWeight = onDevice(ctx_, o.gradWeight, o.gradWeightMemory, base, L.oG, n);
  d.momentum = momentum_.data();
  d.scratchM = scratchM;
  if (spec_.bias) {
    d.bias = onDevice(ctx_, o.bias, o.biasMemory, base, L.oB, q);
    d.gradBias = onDevice(ctx_, o.gradBias, o.gradBiasMemory, base, L.oGb, q);
    d.biasMomentum = biasMomentum_.data();
  }
  return d;
}

namespace {

bool perLayerSteps() {
  const char* mode = std::getenv("NYSACT_CUDA_STEP");
  return mode != nullptr && std::strcmp(mode, "per-layer") == 0;
}

}  // namespace

bool CudaLayer::joinsStepBatch(const StepOperands& o, bool factors) const {
  const bool plain = spec_.kind == LayerKind::Plain;
  const bool device = o.weightMemory == MemoryKind::Device && o.gradWeightMemory == MemoryKind::Device &&
                      (plain || !spec_.bias || (o.biasMemory == MemoryKind::Device && o.gradBiasMemory == MemoryKind::Device));
  return (plain || factors) && device;
}

std::vector<size_t> CudaLayer::stepBatchPieces(const std::vector<CudaLayer*>& layers, const std::vector<size_t>& members,
                                               size_t* total) {
  ScratchPlan plan;
  std::vector<size_t> offsets;
  for (size_t i : members) {
    if (layers[i]->spec_.kind != LayerKind::Plain) offsets.push_back(plan.add<float>(layers[i]->mFloats()));
  }
  *total = plan.total();
  return offsets;
}

void CudaLayer::preconditionedMomentumStepBatch(const std::vector<CudaLayer*>& layers,
                                                const std::vector<StepOperands>& operands, const StepScalars& s) {
  if (layers.empty()) return;
  Context& ctx = layers.front()->context();
  std::vector<size_t> members, others;
  const bool shared = !perLayerSteps();
  for (size_t i = 0; i < layers.size(); ++i) {
    if (&layers[i]->context() != &ctx) {
      throw BatchLayerError(i, Error("ERR_NYSACT_INVALID_ARGUMENT", "a step plan needs layers of one device"));
    }
    (shared && layers[i]->joinsStepBatch(operands[i], layers[i]->hasFactors_) ? members : others).push_back(i);
  }
  // Plain parameters: one multi-tensor momentum launch per 96 tensors.
  std::vector<size_t> preconditioned;
  std::vector<DeviceMomentum> plain;
  for (size_t i : members) {
    const CudaLayer& l = *layers[i];
    if (l.spec_.kind != LayerKind::Plain) {
      preconditioned.push_back(i);
      continue;
    }
    DeviceMomentum t;
    t.n = l.spec_.weightSize();
    t.weight = operands[i].weight;
    t.grad = operands[i].gradWeight;
    t.momentum = l.momentum_.data();
    plain.push_back(t);
  }
  if (!plain.empty()) cuda::momentumStepBatch(ctx, plain, s);
  if (!preconditioned.empty()) {
    // Each member's M gets its own piece of the scratch arena (reserved by reserveStep); its
    // operands are all device memory, used in place.
    size_t total = 0;
    const std::vector<size_t> offsets = stepBatchPieces(layers, preconditioned, &total);
    char* base = ctx.scratch(total);
    std::vector<const LayerSpec*> specs;
    std::vector<DeviceStep> steps;
    for (size_t j = 0; j < preconditioned.size(); ++j) {
      const CudaLayer& l = *layers[preconditioned[j]];
      const StepOperands& o = operands[preconditioned[j]];
      specs.push_back(&l.spec_);
      steps.push_back(l.deviceStep(o, base, l.stepLayout(o), piece<float>(base, offsets[j])));
    }
    try {
      cuda::preconditionedMomentumStepBatch(ctx, specs, steps, s);
    } catch (const BatchLayerError& e) {
      throw BatchLayerError(preconditioned[e.index() < preconditioned.size() ? e.index() : 0], e);
    }
  }
  // The rest one by one (host operands are staged through the scratch arena one layer at a time;
  // stream order keeps that after the batched launches above).
  for (size_t i : others) {
    try {
      layers[i]->preconditionedMomentumStep(operands[i], s);
    } catch (const Error& e) {
      throw BatchLayerError(i, e);
    }
  }
}

void CudaLayer::reserveStep(const std::vector<CudaLayer*>& layers, const std::vector<bool>& factors,
                            const std::vector<StepOperands>& operands, double damping, NystromVariant variant) {
  if (layers.empty()) return;
  Context& ctx = layers.front()->context();
  size_t scratch = 0;
  std::vector<NystromDeviceInput> rebuilds;
  std::vector<size_t> batched;
  const bool shared = !perLayerSteps();
  for (size_t i = 0; i < layers.size(); ++i) {
    CudaLayer& l = *layers[i];
    if (&l.context() != &ctx) throw BatchLayerError(i, Error("ERR_NYSACT_INVALID_ARGUMENT", "a step plan needs layers of one device"));
    scratch = std::max(scratch, l.stepLayout(operands[i]).total);
    if (shared && l.joinsStepBatch(operands[i], l.hasFactors_ || factors[i])) batched.push_back(i);
    if (factors[i] && l.spec_.kind != LayerKind::Plain) {
      // The arrays a rebuild writes (unused, and not exported, until the layer has factors).
      if (l.basis_.empty()) l.basis_.resize(static_cast<size_t>(l.p_ * l.k_));
      if (l.coefficients_.empty()) l.coefficients_.resize(static_cast<size_t>(l.k_));
      NystromDeviceInput in;
      in.p = l.p_;
      in.k = l.k_;
      in.full = l.spec_.fullCovariance();
      in.damping = damping;
      in.variant = variant;
      rebuilds.push_back(in);
    }
  }
  size_t batchBytes = 0;
  (void)stepBatchPieces(layers, batched, &batchBytes);
  scratch = std::max(scratch, batchBytes);
  if (scratch > 0) (void)ctx.scratch(scratch);
  reserveNystrom(ctx, rebuilds, !perLayerFactors());
}

void CudaLayer::exportState(LayerState& out) const {
  out.ema = download(ctx_, ema_);
  out.sketch = download(ctx_, sketch_);
  out.indices = indices_;
  // Without factors the arrays may exist (reserved by a step plan) but hold nothing: exported
  // empty, as the CPU backend's are.
  out.basis = hasFactors_ ? download(ctx_, basis_) : std::vector<float>();
  out.coefficients = hasFactors_ ? download(ctx_, coefficients_) : std::vector<float>();
  out.momentum = download(ctx_, momentum_);
  out.biasMomentum = download(ctx_, biasMomentum_);
  ctx_.synchronize();
  out.inverseDamping = inverseDamping_;
  out.decayProduct = decayProduct_;
  out.emaSteps = emaSteps_;
  out.hasFactors = hasFactors_;
  out.factorFallbacks = factorFallbacks_;
}

void CudaLayer::importState(const LayerState& in) {
  validateLayerState(spec_, in);
  // Every array whose size changes is allocated before any is overwritten, so that an import short
  // of device memory fails with the layer as it was.  (Same-size arrays are copied in place; an
  // empty array in the state releases the layer's.)
  struct Import {
    DeviceArray<float>& target;
    const std::vector<float>& values;
    DeviceArray<float> fresh;
  };
  std::vector<Import> arrays;
  if (spec_.kind == LayerKind::Plain) {
    arrays.push_back({momentum_, in.momentum, {}});
  } else {
    for (auto [target, values] : {std::pair<DeviceArray<float>*, const std::vector<float>*>{&ema_, &in.ema},
                                  {&sketch_, &in.sketch},
                                  {&basis_, &in.basis},
                                  {&coefficients_, &in.coefficients},
                                  {&momentum_, &in.momentum},
                                  {&biasMomentum_, &in.biasMomentum}}) {
      arrays.push_back({*target, *values, {}});
    }
  }
  for (Import& a : arrays)
    if (a.target.size() != a.values.size()) a.fresh.resize(a.values.size());
  for (Import& a : arrays) {
    if (a.target.size() != a.values.size()) a.target.swap(a.fresh);
    copyToDevice(ctx_, a.target.data(), a.values.data(), a.values.size() * sizeof(float));
  }
  ctx_.synchronize();
  if (spec_.kind == LayerKind::Plain) return;
  indices_ = in.indices;
  inverseDamping_ = in.inverseDamping;
  decayProduct_ = in.decayProduct;
  emaSteps_ = in.emaSteps;
  hasFactors_ = in.hasFactors;
  factorFallbacks_ = in.factorFallbacks;
  hasPending_ = false;
}

size_t CudaLayer::stateBytes() const {
  return ema_.bytes() + sketch_.bytes() + basis_.bytes() + coefficients_.bytes() + momentum_.bytes() +
         biasMomentum_.bytes() + pendingCovariance_.bytes() + pendingSketch_.bytes() + candidateCovariance_.bytes() +
         candidateSketch_.bytes() + candidateIndicesDevice_.bytes() +
         (indices_.capacity() + pendingIndices_.capacity() + candidateIndices_.capacity()) * sizeof(int32_t);
}

}  // namespace cuda
}  // namespace nysact
