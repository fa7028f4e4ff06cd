// The backend interface (STYLE.md point 4): plain C++, no Node headers, usable from a C++
// driver or benchmark. The CPU backend (binding/cpu) implements it; a CUDA backend implements the
// same interface in its own shared library.
//
// Conventions (SPEC §1):
//   p0 = fan-in without bias, p = p0 + bias, q = fan-out, r = min(rank, p).
//   Sketches are p x r, row-major, the bias row last.  A layer with r == p keeps the full covariance
//   (its "sketch" is the identity and is never stored).
//   Weights and gradients are read and written in place in the caller's memory, in the layout given
//   by LayerSpec::layout; the bias is a separate vector of q elements.  Each such pointer comes with
//   its MemoryKind (ordinary host memory, page-locked host memory, or device memory of the backend).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace nysact {

inline constexpr int kBackendInterfaceVersion = 3;

// Every error a backend raises. `code` is stable and reaches JS unchanged.
class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message)
      : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

enum class LayerKind : int32_t { Dense = 0, Conv2d = 1, Plain = 2 };
enum class SketchKind : int32_t { Gaussian = 0, Subcolumns = 1 };
// InOut: tfjs layout, weight [in, out] / [kh, kw, inC, outC] viewed as p0 x q row-major.
// OutIn: PyTorch-style [out, in], viewed as q x p0 row-major.
enum class WeightLayout : int32_t { InOut = 0, OutIn = 1 };
enum class Padding : int32_t { Valid = 0, Same = 1 };
// Reference: B solves B L = Y.  Textbook: B = Y L^-T (SPEC §1 step 2).
enum class NystromVariant : int32_t { Reference = 0, Textbook = 1 };

// Where a caller's array lives.  Host: ordinary (pageable) host memory.  PinnedHost: page-locked
// host memory from Backend::allocate (the CUDA backend copies it asynchronously; on the CPU it is
// ordinary host memory).  Device: memory of the backend's device from Backend::allocate; the CPU
// backend has none.
enum class MemoryKind : int32_t { Host = 0, PinnedHost = 1, Device = 2 };

inline bool isHostMemory(MemoryKind kind) { return kind != MemoryKind::Device; }

struct LayerSpec {
  LayerKind kind = LayerKind::Dense;
  int64_t fanIn = 0;   // p0 (conv: kernelH * kernelW * inChannels)
  int64_t fanOut = 0;  // q
  bool bias = false;
  int64_t rank = 10;
  SketchKind sketch = SketchKind::Gaussian;
  WeightLayout layout = WeightLayout::InOut;
  // conv2d geometry (channels last)
  int32_t kernelH = 1, kernelW = 1, inChannels = 0;
  int32_t strideH = 1, strideW = 1, dilationH = 1, dilationW = 1;
  Padding padding = Padding::Valid;
  // plain: number of elements
  int64_t size = 0;
  // Philox key: (seed, layerKey); counter: (statistics step, element block)
  uint64_t seed = 0;
  uint32_t layerKey = 0;

  int64_t p() const { return fanIn + (bias ? 1 : 0); }
  int64_t r() const { return rank < p() ? rank : p(); }
  bool fullCovariance() const { return kind != LayerKind::Plain && r() == p(); }
  int64_t weightSize() const { return kind == LayerKind::Plain ? size : fanIn * fanOut; }
};

// Conv input geometry for one statistics call (NHWC).
struct ConvInput {
  int64_t batch = 0;
  int64_t height = 0;
  int64_t width = 0;
};

// Output size and leading padding with TensorFlow semantics.
struct ConvGeometry {
  int64_t outH, outW, padTop, padLeft;
};
ConvGeometry convGeometry(const LayerSpec& spec, int64_t height, int64_t width);

// A caller-supplied sketch: exactly one of matrix (p*r floats) or indices (r distinct ints in
// [0, p)) is non-null; both null means "draw with Philox".
struct SketchInput {
  const float* matrix = nullptr;
  const int32_t* indices = nullptr;
};

// Step-dependent scalars, computed once by the host and passed as one packed struct to every
// backend (ggml style).
struct StepScalars {
  double lr = 0.1;
  double momentum = 0.9;
  double weightDecay = 0.0;
  bool nesterov = false;
  bool decoupledWeightDecay = false;
};

// The arrays of one fused step (SPEC §1 steps 3/4), each with where it lives.  bias / gradBias are
// null iff the layer has no bias.
struct StepOperands {
  float* weight = nullptr;
  float* bias = nullptr;
  const float* gradWeight = nullptr;
  const float* gradBias = nullptr;
  MemoryKind weightMemory = MemoryKind::Host;
  MemoryKind biasMemory = MemoryKind::Host;
  MemoryKind gradWeightMemory = MemoryKind::Host;
  MemoryKind gradBiasMemory = MemoryKind::Host;
};

// Operands that all live in ordinary host memory (the typed-array path).
inline StepOperands hostOperands(float* weight, float* bias, const float* gradWeight, const float* gradBias) {
  StepOperands o;
  o.weight = weight;
  o.bias = bias;
  o.gradWeight = gradWeight;
  o.gradBias = gradBias;
  return o;
}

enum class FactorStatus : int32_t {
  Ok = 0,
  ShiftEnlarged = 1,   // Cholesky needed a larger shift than SPEC §1's |min λ| + ρ
  KeptPrevious = 2,    // factorisation failed; the previous factors stay in use
  Identity = 3,        // failed with no previous factors: P = I/ρ (plain scaled SGD)
};

struct FactorReport {
  FactorStatus status = FactorStatus::Ok;
  double shift = 0.0;   // the shift finally used (0 for full-covariance layers)
  int32_t attempts = 0; // Cholesky attempts
  std::string detail;   // empty when Ok
};

// Complete, bit-exact state of one layer. Arrays are empty where the layer kind has none.
struct LayerState {
  std::vector<float> ema;          // p x r (full covariance: p x p)
  std::vector<float> sketch;       // p x r gaussian sketch of the last statistics step
  std::vector<int32_t> indices;    // r subcolumn indices of the last statistics step
  std::vector<float> basis;        // U, p x r row-major (full covariance: p x p eigenvectors)
  std::vector<float> coefficients; // r values: 1/(λ̂+ρ) − 1/ρ
  double inverseDamping = 0.0;     // 1/ρ used when the factors were built
  double decayProduct = 1.0;       // Π β over committed statistics steps: bias correction 1 − Π β
  std::vector<float> momentum;     // same layout and size as the weight (plain: size)
  std::vector<float> biasMomentum; // q
  int64_t emaSteps = 0;
  bool hasFactors = false;
  int64_t factorFallbacks = 0;
};

// Backend-owned state and kernels of one layer (preconditioned, or plain momentum SGD).
class Layer {
 public:
  virtual ~Layer() = default;
  virtual const LayerSpec& spec() const = 0;

  // SPEC §1 step 1, first half: computes C = Xᵀ(X S)/n for this statistics step into a pending
  // slot, together with its sketch.  The EMA is not touched.  Returns false (an earlier pending
  // result left as it was) if the activations contain a non-finite value.  `xMemory` says where x
  // lives (the typed-array path passes Host; JS tensors pass their kind): device memory is read in
  // place, page-locked host memory may be copied asynchronously.  Throws
  // ERR_NYSACT_INVALID_ARGUMENT (nothing changed) for a memory kind the backend cannot read.
  // Overriders repeat the default, so that calls read the same through any static type.
  virtual bool sketchCovarianceDense(const float* x, int64_t rows, const SketchInput& sketch,
                                     MemoryKind xMemory = MemoryKind::Host) = 0;
  virtual bool sketchCovarianceConv(const float* x, const ConvInput& input, const SketchInput& sketch,
                                    MemoryKind xMemory = MemoryKind::Host) = 0;
  virtual bool hasPendingStatistics() const = 0;
  virtual void discardPendingStatistics() = 0;
  // Pending C (p x r) for data-parallel averaging: read it, all-reduce it, write it back.
  virtual void readPendingCovariance(float* out) const = 0;
  virtual void writePendingCovariance(const float* in) = 0;
  // SPEC §1 step 1, second half: ema = β·ema + (1−β)·C, the pending sketch becomes the sketch.
  virtual void commitStatistics(double statDecay) = 0;
  // SPEC §1 step 2.  Never leaves non-finite factors: falls back and reports.
  virtual FactorReport nystromFactors(double damping, NystromVariant variant) = 0;
  // SPEC §1 steps 3/4, one fused pass: V = G/ρ + (G U) diag(c) Uᵀ, weight decay, momentum,
  // parameter update, in place.  May return before a device has finished: the results in the
  // operands (and errors of the device's execution) are there after Backend::synchronize().
  // Throws ERR_NYSACT_INVALID_ARGUMENT for a memory kind the backend cannot read.
  virtual void preconditionedMomentumStep(const StepOperands& operands, const StepScalars& s) = 0;

  virtual void exportState(LayerState& out) const = 0;
  virtual void importState(const LayerState& in) = 0;  // validated sizes; throws nysact::Error
  virtual size_t stateBytes() const = 0;
};

// Thrown by Backend::nystromFactorsBatch when the failure belongs to one layer: `index` is its
// position in the batch.  Other nysact::Error exceptions of a batch name no layer.
class BatchLayerError : public Error {
 public:
  BatchLayerError(size_t index, const Error& cause) : Error(cause.code(), cause.what()), index_(index) {}
  size_t index() const { return index_; }

 private:
  size_t index_;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  virtual std::unique_ptr<Layer> createLayer(const LayerSpec& spec) = 0;
  // SPEC §1 step 2 for many preconditioned layers of this backend at once (an optimizer step's
  // inverse update): reports[i] is layers[i]->nystromFactors(damping, variant)'s report, and each
  // layer ends in the state that call would leave.  A backend may batch the small r x r problems
  // across layers (CUDA); the default calls the layers one after the other.  When it throws, some
  // layers may have been rebuilt and others not (as when the per-layer loop stops part-way).
  virtual std::vector<FactorReport> nystromFactorsBatch(const std::vector<Layer*>& layers, double damping,
                                                        NystromVariant variant);
  // Before an optimizer step over these layers of this backend changes anything: allocates every
  // piece of memory the step's commits, its inverse update (layers with factors[i]) and its fused
  // steps with these operands' memory kinds will use, so that a step short of memory fails here
  // with nothing changed.  Changes no state; throws BatchLayerError naming a layer, or
  // nysact::Error.  The default does nothing: the CPU backend allocates nothing in a step.
  virtual void reserveStep(const std::vector<Layer*>& layers, const std::vector<bool>& factors,
                           const std::vector<StepOperands>& operands, double damping, NystromVariant variant) {
    (void)layers, (void)factors, (void)operands, (void)damping, (void)variant;
  }
  // SPEC §1 steps 3-4 for many layers of this backend at once (an optimizer step's updates):
  // layers[i]->preconditionedMomentumStep(operands[i], scalars) for every i, with the same results.
  // A backend may share kernel launches across layers (CUDA); the default calls the layers one
  // after the other.  When it throws (BatchLayerError naming a layer, or nysact::Error), some
  // layers may have been updated and others not (as when the per-layer loop stops part-way).
  virtual void preconditionedMomentumStepBatch(const std::vector<Layer*>& layers,
                                               const std::vector<StepOperands>& operands, const StepScalars& scalars);
  // Whether x[0..n) holds only finite values (x in memory of the given kind).
  virtual bool allFinite(const float* x, size_t n, MemoryKind kind) const = 0;
  // Waits for all work queued by this backend's layers; turns a device's asynchronous execution
  // errors into nysact::Error.  A no-op on the CPU.
  virtual void synchronize() = 0;

  // Memory handed out to callers (JS host buffers and tensors): at least 64-byte aligned, `bytes`
  // > 0.  Throws nysact::Error (ERR_NYSACT_INVALID_ARGUMENT for a kind the backend does not have,
  // ERR_NYSACT_NATIVE when out of memory).  release() never throws; null is ignored.
  virtual void* allocate(MemoryKind kind, size_t bytes) = 0;
  virtual void release(MemoryKind kind, void* memory) noexcept = 0;
  // Synchronous copy of `bytes` between memories of any kinds this backend has.
  virtual void copy(void* dst, MemoryKind dstKind, const void* src, MemoryKind srcKind, size_t bytes) = 0;
  // Synchronous fill of `count` floats.
  virtual void fill(float* dst, MemoryKind kind, float value, size_t count) = 0;
};

// Validates a spec (throws nysact::Error with code ERR_NYSACT_INVALID_ARGUMENT).
void validateLayerSpec(const LayerSpec& spec);
// SPEC §1's shifted Cholesky is tried this many times, the shift ×10 after each failure.
inline constexpr int kMaxCholeskyAttempts = 4;
// The report after the Cholesky loop stopped with `enlargements` failed attempts (kMaxCholeskyAttempts:
// it never succeeded) at `shift`: attempts, shift, status and detail, worded alike on every backend.
// Returns false when the factorisation failed (status KeptPrevious; the caller stops there).
bool settleCholeskyReport(FactorReport& report, int enlargements, double shift);
// Validates a state against the layer it is imported into, before anything changes (throws
// nysact::Error with code ERR_NYSACT_STATE naming the field; the same messages on every backend).
void validateLayerState(const LayerSpec& spec, const LayerState& in);

Backend& cpuBackend();
int cpuThreads();
void setCpuThreads(int threads);

// Deterministic sketches (binding/philox_sketch.h), exposed for tests and other backends.
void philoxGaussianSketch(uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t p, int64_t r,
                          float* out);
void philoxSubcolumns(uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t p, int64_t r,
                      int32_t* out);

}  // namespace nysact
