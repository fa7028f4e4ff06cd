// The CUDA implementation of one layer (the semantics of binding/cpu/cpu_backend.cpp CpuLayer,
// including fallbacks, bias correction via decayProduct and the state layout).
//
// Residency: the EMA, sketches, factors and momentum buffers live on the device.  Weights and
// gradients arrive as host pointers (the binding's API: tfjs and the framework-free optimizer own
// Float32Arrays): each step copies G, θ (and the bias pair) to the device, runs the fused kernel
// and copies θ back — three transfers of the weight per step over PCIe, the simplest correct
// scheme for a host-pointer API.  Operands and activations in device memory (JS DeviceTensors)
// are used in place instead: no transfer at all (cuda/README.md, "Residency").
#pragma once

#include <cstdint>
#include <vector>

#include "../binding/backend.h"
#include "context.h"
#include "update.cuh"

namespace nysact {
namespace cuda {

struct NystromDeviceInput;

class CudaLayer {
 public:
  CudaLayer(Context& ctx, const LayerSpec& spec);

  const LayerSpec& spec() const { return spec_; }
  Context& context() const { return ctx_; }

  // x in memory of kind xMemory: device activations are read in place (no host-to-device copy),
  // pinned ones copied asynchronously on the stream, pageable ones through the runtime's staging.
  bool sketchCovarianceDense(const float* x, int64_t rows, const SketchInput& sketch, MemoryKind xMemory);
  bool sketchCovarianceConv(const float* x, const ConvInput& input, const SketchInput& sketch, MemoryKind xMemory);
  bool hasPendingStatistics() const { return hasPending_; }
  void discardPendingStatistics();
  void readPendingCovariance(float* out) const;
  void writePendingCovariance(const float* in);
  void commitStatistics(double statDecay);
  FactorReport nystromFactors(double damping, NystromVariant variant);
  // The inverse update of many layers of one context (an optimizer step's): the batched path of
  // cuda/nystrom.cu, or, with NYSACT_CUDA_FACTORS=per-layer, nystromFactors layer by layer.  Same
  // reports and fallbacks as the per-layer calls; throws BatchLayerError naming a layer's index.
  static std::vector<FactorReport> nystromFactorsBatch(const std::vector<CudaLayer*>& layers, double damping,
                                                       NystromVariant variant);
  // Enqueued on the context's stream; the caller synchronises (Context::synchronize) before it reads
  // host operands back.  Device operands are used in place: no copy at all.
  void preconditionedMomentumStep(const StepOperands& operands, const StepScalars& s);
  // preconditionedMomentumStep for many layers of one context (an optimizer step's updates), with
  // the same results bit for bit.  Whose operands all live on the device share launches: the
  // layers with factors the fused kernel's (cuda::preconditionedMomentumStepBatch), the plain
  // parameters a multi-tensor momentum kernel's (cuda::momentumStepBatch).  The others, and every
  // layer with NYSACT_CUDA_STEP=per-layer, step one by one.  Throws BatchLayerError naming a layer.
  static void preconditionedMomentumStepBatch(const std::vector<CudaLayer*>& layers,
                                              const std::vector<StepOperands>& operands, const StepScalars& s);
  // Before a step plan over these layers (of one context) changes anything: allocates every piece
  // of device memory its commits, its inverse update (layers with factors[i], batched or per
  // layer) and its fused steps with these operand kinds will use — factor arrays, the scratch and
  // staging regions — so that a step short of device memory fails here, with nothing changed.
  // Throws BatchLayerError naming a layer of another context.
  static void reserveStep(const std::vector<CudaLayer*>& layers, const std::vector<bool>& factors,
                          const std::vector<StepOperands>& operands, double damping, NystromVariant variant);
  void exportState(LayerState& out) const;
  void importState(const LayerState& in);
  size_t stateBytes() const;

  // For the benchmarks: a statistics step on activations already on the device.
  bool sketchResident(const float* deviceX, int64_t rows, const ConvInput* conv);

 private:
  // The fused step's pieces of the scratch arena (operands staged from host memory, M = G U).
  struct StepLayout {
    size_t oW, oG, oB, oGb, oM, total;
  };
  StepLayout stepLayout(const StepOperands& o) const;
  // Floats of this layer's M = G U (fanOut x k).
  size_t mFloats() const { return static_cast<size_t>(spec_.fanOut) * static_cast<size_t>(k_); }
  // The device pointers of a step: operands in device memory as they are, the others in their
  // pieces of `base` (layout L; their copies are enqueued), M at scratchM.
  DeviceStep deviceStep(const StepOperands& o, char* base, const StepLayout& L, float* scratchM) const;
  // Whether this layer's step can join a batched launch (preconditionedMomentumStepBatch), given
  // whether it has factors by then (NYSACT_CUDA_STEP=per-layer is the caller's to check).
  bool joinsStepBatch(const StepOperands& o, bool factors) const;
  // The scratch pieces of a batched launch over these members (each preconditioned one its own M
  // = G U): their offsets, and the total bytes in *total.
  static std::vector<size_t> stepBatchPieces(const std::vector<CudaLayer*>& layers, const std::vector<size_t>& members,
                                             size_t* total);
  void requirePreconditioned(const char* what) const;
  void requirePending() const;
  // The pending-sketch candidate for this statistics step (device / host indices).
  void prepareSketch(const SketchInput& in);
  bool runSketch(const float* x, MemoryKind xMemory, int64_t rows, const ConvInput* conv);
  // The inputs of a rebuild; false (report filled) when there is nothing to factorise yet.
  bool factorInput(double damping, NystromVariant variant, NystromDeviceInput& in, FactorReport& report) const;
  // The bookkeeping after a rebuild whose U and coefficients (if ok) are already in place:
  // counters, inverse damping, and the fallbacks (previous factors kept, or P = I/ρ).
  FactorReport settleFactors(bool ok, FactorReport report, double damping);

  Context& ctx_;
  LayerSpec spec_;
  int64_t p_ = 0, k_ = 0;
  DeviceArray<float> ema_, sketch_, basis_, coefficients_, momentum_, biasMomentum_;
  std::vector<int32_t> indices_;
  double inverseDamping_ = 0.0, decayProduct_ = 1.0;
  int64_t emaSteps_ = 0, factorFallbacks_ = 0;
  bool hasFactors_ = false;
  // Transient: the statistics of the current step, before commitStatistics.  The candidate
  // buffers are filled first and swapped in only when the activations were finite, so a rejected
  // call leaves an earlier pending result intact (as on the CPU).
  DeviceArray<float> pendingCovariance_, pendingSketch_, candidateCovariance_, candidateSketch_;
  DeviceArray<int32_t> candidateIndicesDevice_;
  std::vector<int32_t> pendingIndices_, candidateIndices_;
  bool hasPending_ = false;
};

}  // namespace cuda
}  // namespace nysact
