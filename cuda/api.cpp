// The C ABI of nysact_cuda.so (cuda/nysact_cuda_api.h): every entry point catches everything and
// reports through the caller's nysact_cuda_error; nothing C++ crosses the boundary.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "bench.cuh"
#include "context.h"
#include "layer.h"
#include "memory.cuh"
#include "sketch.cuh"
#include "nysact_cuda_api.h"

struct nysact_cuda_layer {
  std::unique_ptr<nysact::cuda::CudaLayer> layer;
};

namespace nysact {
namespace cuda {
namespace {

void copyText(char* dst, size_t cap, const std::string& text) {
  const size_t n = std::min(cap - 1, text.size());
  std::memcpy(dst, text.data(), n);
  dst[n] = '\0';
}

void fail(nysact_cuda_error* error, const std::string& code, const std::string& message) {
  if (error == nullptr) return;
  copyText(error->code, sizeof(error->code), code);
  copyText(error->message, sizeof(error->message), message);
}

template <typename F>
int32_t guarded(nysact_cuda_error* error, F&& f) {
  try {
    f();
    return NYSACT_CUDA_OK;
  } catch (const Error& e) {
    fail(error, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    fail(error, kNativeCode, "Out of host memory in the CUDA backend");
  } catch (const std::exception& e) {
    fail(error, kNativeCode, std::string("CUDA backend: ") + e.what());
  } catch (...) {
    fail(error, kNativeCode, "CUDA backend: unknown failure");
  }
  return NYSACT_CUDA_FAILED;
}

void requireStruct(uint32_t actual, size_t expected, const char* what) {
  if (actual != expected) {
    std::ostringstream s;
    s << what << ".struct_size is " << actual << ", expected " << expected
      << " (the addon and nysact_cuda.so come from different builds)";
    throw Error("ERR_NYSACT_BACKEND_UNAVAILABLE", s.str());
  }
}

CudaLayer& layerOf(nysact_cuda_layer* handle) {
  if (handle == nullptr || !handle->layer) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null CUDA layer handle");
  return *handle->layer;
}

// Runs f on the layer with its device current and its context locked.
template <typename F>
int32_t onLayer(nysact_cuda_layer* handle, nysact_cuda_error* error, F&& f) {
  return guarded(error, [&] {
    CudaLayer& layer = layerOf(handle);
    std::lock_guard<std::mutex> lock(layer.context().mutex());
    layer.context().activate();
    f(layer);
  });
}

// Runs f on the default device's context, locked and current.
template <typename F>
int32_t onDefaultContext(nysact_cuda_error* error, F&& f) {
  return guarded(error, [&] {
    Context& ctx = contextForDefaultDevice();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    ctx.activate();
    f(ctx);
  });
}

MemoryKind memoryKind(int32_t memory) {
  if (memory != NYSACT_CUDA_MEMORY_HOST && memory != NYSACT_CUDA_MEMORY_PINNED && memory != NYSACT_CUDA_MEMORY_DEVICE) {
    throw Error("ERR_NYSACT_INVALID_ARGUMENT", "unknown memory kind " + std::to_string(memory));
  }
  return static_cast<MemoryKind>(memory);
}

// The C operands of a step (struct size checked), pointers and memory kinds.
StepOperands toOperands(const nysact_cuda_step_operands& c) {
  requireStruct(c.struct_size, sizeof(nysact_cuda_step_operands), "nysact_cuda_step_operands");
  StepOperands o;
  o.weight = c.weight;
  o.bias = c.bias;
  o.gradWeight = c.grad_weight;
  o.gradBias = c.grad_bias;
  o.weightMemory = memoryKind(c.weight_memory);
  o.biasMemory = memoryKind(c.bias_memory);
  o.gradWeightMemory = memoryKind(c.grad_weight_memory);
  o.gradBiasMemory = memoryKind(c.grad_bias_memory);
  return o;
}

LayerSpec toSpec(const nysact_cuda_layer_spec& c) {
  requireStruct(c.struct_size, sizeof(nysact_cuda_layer_spec), "nysact_cuda_layer_spec");
  LayerSpec s;
  s.kind = static_cast<LayerKind>(c.kind);
  s.sketch = static_cast<SketchKind>(c.sketch);
  s.layout = static_cast<WeightLayout>(c.layout);
  s.padding = static_cast<Padding>(c.padding);
  s.bias = c.bias != 0;
  s.fanIn = c.fan_in;
  s.fanOut = c.fan_out;
  s.rank = c.rank;
  s.size = c.size;
  s.kernelH = c.kernel_h;
  s.kernelW = c.kernel_w;
  s.inChannels = c.in_channels;
  s.strideH = c.stride_h;
  s.strideW = c.stride_w;
  s.dilationH = c.dilation_h;
  s.dilationW = c.dilation_w;
  s.seed = c.seed;
  s.layerKey = c.layer_key;
  return s;
}

SketchInput toSketch(const float* matrix, const int32_t* indices) {
  SketchInput in;
  in.matrix = matrix;
  in.indices = indices;
  return in;
}

template <typename T>
std::vector<T> fromArray(const T* data, int64_t length, const char* field) {
  if (length < 0 || (length > 0 && data == nullptr)) {
    throw Error("ERR_NYSACT_STATE", std::string("state.") + field + " has a negative length or a null array");
  }
  return std::vector<T>(data, data + length);
}

template <typename T>
void toArray(const std::vector<T>& v, T* data, int64_t length, const char* field) {
  if (length != static_cast<int64_t>(v.size()) || (length > 0 && data == nullptr)) {
    std::ostringstream s;
    s << "export buffer state." << field << " holds " << length << " elements, expected " << v.size();
    throw Error("ERR_NYSACT_INVALID_ARGUMENT", s.str());
  }
  if (!v.empty()) std::memcpy(data, v.data(), v.size() * sizeof(T));
}

std::string versionText(int v) {
  std::ostringstream s;
  s << v / 1000 << "." << (v % 1000) / 10;
  return s.str();
}

// A layer's step operands, checked against its spec.
StepOperands stepOperands(const CudaLayer& l, const nysact_cuda_step_operands* operands) {
  if (operands == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null step operands");
  const StepOperands o = toOperands(*operands);
  const bool bias = l.spec().bias;
  if (o.weight == nullptr || o.gradWeight == nullptr || (o.bias == nullptr) == bias || (o.gradBias == nullptr) == bias) {
    throw Error("ERR_NYSACT_INVALID_ARGUMENT", "step operands: weight and gradient needed; bias and its gradient iff the layer has a bias");
  }
  return o;
}

StepScalars stepScalars(const nysact_cuda_step_scalars* scalars) {
  if (scalars == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null step scalars");
  requireStruct(scalars->struct_size, sizeof(nysact_cuda_step_scalars), "nysact_cuda_step_scalars");
  StepScalars s;
  s.lr = scalars->lr;
  s.momentum = scalars->momentum;
  s.weightDecay = scalars->weight_decay;
  s.nesterov = scalars->nesterov != 0;
  s.decoupledWeightDecay = scalars->decoupled_weight_decay != 0;
  return s;
}

// The frame of a batch entry point (the layers of one device, and a failure pinned on one of
// them): `arrays` says whether the per-layer arrays are present; `collect(i, layer)` converts
// layer i's inputs (its errors name layer i); `run(layers)` runs under the device context's lock
// (a BatchLayerError names its layer).  *failed_layer: that layer's index on failure, else -1.
template <typename Collect, typename Run>
int32_t onBatch(nysact_cuda_layer* const* handles, int64_t count, bool arrays, const char* what,
                int64_t* failedLayer, nysact_cuda_error* error, Collect&& collect, Run&& run) {
  if (failedLayer != nullptr) *failedLayer = -1;
  int64_t failed = -1;
  const int32_t status = guarded(error, [&] {
    if (count < 0 || (count > 0 && (handles == nullptr || !arrays))) {
      throw Error("ERR_NYSACT_INVALID_ARGUMENT", std::string("null layers or ") + what);
    }
    std::vector<CudaLayer*> layers(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      failed = i;
      layers[static_cast<size_t>(i)] = &layerOf(handles[i]);
      collect(static_cast<size_t>(i), *layers[static_cast<size_t>(i)]);
    }
    failed = -1;
    if (count == 0) return;
    Context& ctx = layers.front()->context();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    ctx.activate();
    try {
      run(layers);
    } catch (const BatchLayerError& e) {
      failed = static_cast<int64_t>(e.index());
      throw;
    }
  });
  if (status != NYSACT_CUDA_OK && failedLayer != nullptr) *failedLayer = failed;
  return status;
}

}  // namespace
}  // namespace cuda
}  // namespace nysact

using namespace nysact;
using namespace nysact::cuda;

extern "C" {

int32_t nysact_cuda_abi_version(void) { return NYSACT_CUDA_ABI_VERSION; }

int32_t nysact_cuda_probe(nysact_cuda_device_info* info, nysact_cuda_error* error) {
  return guarded(error, [&] {
    if (info == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null device info");
    requireStruct(info->struct_size, sizeof(nysact_cuda_device_info), "nysact_cuda_device_info");
    const uint32_t size = info->struct_size;
    std::memset(info, 0, sizeof(*info));
    info->struct_size = size;
    info->device = -1;
    (void)cudaRuntimeGetVersion(&info->runtime_version);
    (void)cudaDriverGetVersion(&info->driver_version);
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    (void)cudaGetLastError();
    if (status != cudaSuccess) {
      std::ostringstream s;
      s << "cudaGetDeviceCount failed: " << cudaGetErrorString(status) << " (" << cudaGetErrorName(status) << ")";
      if (info->driver_version == 0) {
        s << "; no NVIDIA driver was found (libcuda.so.1 is not loadable): install the NVIDIA driver (>= 580 for CUDA "
          << versionText(info->runtime_version) << ")";
      } else if (info->driver_version < info->runtime_version) {
        s << "; the NVIDIA driver supports CUDA " << versionText(info->driver_version) << " but this build needs CUDA "
          << versionText(info->runtime_version) << ": update the driver";
      }
      throw Error("ERR_NYSACT_BACKEND_UNAVAILABLE", s.str());
    }
    info->device_count = count;
    if (count == 0) throw Error("ERR_NYSACT_BACKEND_UNAVAILABLE", "no CUDA device is present");
    int device = 0;
    if (const char* v = std::getenv("NYSACT_CUDA_DEVICE")) device = std::atoi(v);
    if (device < 0 || device >= count) {
      std::ostringstream s;
      s << "NYSACT_CUDA_DEVICE=" << device << " but " << count << " CUDA device(s) are present";
      throw Error("ERR_NYSACT_BACKEND_UNAVAILABLE", s.str());
    }
    cudaDeviceProp prop{};
    NYSACT_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    info->device = device;
    info->major = prop.major;
    info->minor = prop.minor;
    info->multiprocessors = prop.multiProcessorCount;
    info->total_memory = prop.totalGlobalMem;
    copyText(info->name, sizeof(info->name), prop.name);
    if (prop.major < 8) {
      std::ostringstream s;
      s << prop.name << " has compute capability " << prop.major << "." << prop.minor
        << "; the CUDA backend is built for 8.0 and newer (sm_80, sm_90 and compute_90 PTX)";
      throw Error("ERR_NYSACT_BACKEND_UNAVAILABLE", s.str());
    }
  });
}

int32_t nysact_cuda_layer_create(const nysact_cuda_layer_spec* spec, nysact_cuda_layer** out, nysact_cuda_error* error) {
  return guarded(error, [&] {
    if (spec == nullptr || out == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null spec or output handle");
    *out = nullptr;
    const LayerSpec s = toSpec(*spec);
    Context& ctx = contextForDefaultDevice();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    ctx.activate();
    auto handle = std::make_unique<nysact_cuda_layer>();
    handle->layer = std::make_unique<CudaLayer>(ctx, s);
    *out = handle.release();
  });
}

void nysact_cuda_layer_destroy(nysact_cuda_layer* handle) {
  if (handle == nullptr) return;
  try {
    if (handle->layer) {
      Context& ctx = handle->layer->context();
      std::lock_guard<std::mutex> lock(ctx.mutex());
      (void)cudaSetDevice(ctx.device());
      handle->layer.reset();
    }
  } catch (...) {
    // Freeing never reports: cudaFree failures mean the context is already broken.
  }
  delete handle;
}

int32_t nysact_cuda_sketch_dense(nysact_cuda_layer* handle, const float* x, int32_t x_memory, int64_t rows,
                                 const float* sketch_matrix, const int32_t* sketch_indices, int32_t* accepted,
                                 nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) {
    const MemoryKind kind = memoryKind(x_memory);
    *accepted = l.sketchCovarianceDense(x, rows, toSketch(sketch_matrix, sketch_indices), kind) ? 1 : 0;
  });
}

int32_t nysact_cuda_sketch_conv(nysact_cuda_layer* handle, const float* x, int32_t x_memory, int64_t batch,
                                int64_t height, int64_t width, const float* sketch_matrix,
                                const int32_t* sketch_indices, int32_t* accepted, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) {
    const MemoryKind kind = memoryKind(x_memory);
    ConvInput in;
    in.batch = batch;
    in.height = height;
    in.width = width;
    *accepted = l.sketchCovarianceConv(x, in, toSketch(sketch_matrix, sketch_indices), kind) ? 1 : 0;
  });
}

int32_t nysact_cuda_has_pending(nysact_cuda_layer* handle, int32_t* out, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) { *out = l.hasPendingStatistics() ? 1 : 0; });
}

int32_t nysact_cuda_discard_pending(nysact_cuda_layer* handle, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) { l.discardPendingStatistics(); });
}

int32_t nysact_cuda_read_pending(nysact_cuda_layer* handle, float* out, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) { l.readPendingCovariance(out); });
}

int32_t nysact_cuda_write_pending(nysact_cuda_layer* handle, const float* in, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) { l.writePendingCovariance(in); });
}

int32_t nysact_cuda_commit(nysact_cuda_layer* handle, double stat_decay, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) { l.commitStatistics(stat_decay); });
}

int32_t nysact_cuda_nystrom_factors(nysact_cuda_layer* handle, double damping, int32_t variant,
                                    nysact_cuda_factor_report* report, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) {
    if (report == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null factor report");
    requireStruct(report->struct_size, sizeof(nysact_cuda_factor_report), "nysact_cuda_factor_report");
    const FactorReport r = l.nystromFactors(damping, static_cast<NystromVariant>(variant));
    report->status = static_cast<int32_t>(r.status);
    report->attempts = r.attempts;
    report->shift = r.shift;
    copyText(report->detail, sizeof(report->detail), r.detail);
  });
}

int32_t nysact_cuda_nystrom_factors_batch(nysact_cuda_layer* const* handles, int64_t count, double damping,
                                          int32_t variant, nysact_cuda_factor_report* reports, int64_t* failed_layer,
                                          nysact_cuda_error* error) {
  return onBatch(
      handles, count, reports != nullptr, "reports", failed_layer, error,
      [&](size_t i, CudaLayer&) {
        requireStruct(reports[i].struct_size, sizeof(nysact_cuda_factor_report), "nysact_cuda_factor_report");
      },
      [&](const std::vector<CudaLayer*>& layers) {
        const std::vector<FactorReport> out =
            CudaLayer::nystromFactorsBatch(layers, damping, static_cast<NystromVariant>(variant));
        for (size_t i = 0; i < out.size(); ++i) {
          reports[i].status = static_cast<int32_t>(out[i].status);
          reports[i].attempts = out[i].attempts;
          reports[i].shift = out[i].shift;
          copyText(reports[i].detail, sizeof(reports[i].detail), out[i].detail);
        }
      });
}

int32_t nysact_cuda_reserve_step(nysact_cuda_layer* const* handles, const int32_t* factors,
                                 const nysact_cuda_step_operands* operands, int64_t count, double damping,
                                 int32_t variant, int64_t* failed_layer, nysact_cuda_error* error) {
  std::vector<bool> rebuild;
  std::vector<StepOperands> kinds;
  return onBatch(
      handles, count, factors != nullptr && operands != nullptr, "factor flags or operands", failed_layer, error,
      [&](size_t i, CudaLayer&) {
        rebuild.push_back(factors[i] != 0);
        kinds.push_back(toOperands(operands[i]));  // only the memory kinds are read
      },
      [&](const std::vector<CudaLayer*>& layers) {
        CudaLayer::reserveStep(layers, rebuild, kinds, damping, static_cast<NystromVariant>(variant));
      });
}

int32_t nysact_cuda_step(nysact_cuda_layer* handle, const nysact_cuda_step_operands* operands,
                         const nysact_cuda_step_scalars* scalars, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) {
    const StepOperands o = stepOperands(l, operands);
    l.preconditionedMomentumStep(o, stepScalars(scalars));
  });
}

int32_t nysact_cuda_step_batch(nysact_cuda_layer* const* handles, const nysact_cuda_step_operands* operands,
                               int64_t count, const nysact_cuda_step_scalars* scalars, int64_t* failed_layer,
                               nysact_cuda_error* error) {
  std::vector<StepOperands> ops;
  return onBatch(
      handles, count, operands != nullptr, "operands", failed_layer, error,
      [&](size_t i, CudaLayer& layer) { ops.push_back(stepOperands(layer, &operands[i])); },
      [&](const std::vector<CudaLayer*>& layers) {
        CudaLayer::preconditionedMomentumStepBatch(layers, ops, stepScalars(scalars));
      });
}

int32_t nysact_cuda_synchronize(nysact_cuda_error* error) {
  return onDefaultContext(error, [&](Context& ctx) { ctx.synchronize(); });
}

int32_t nysact_cuda_alloc(int32_t memory, uint64_t bytes, void** out, nysact_cuda_error* error) {
  return onDefaultContext(error, [&](Context& ctx) {
    if (out == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null output pointer");
    *out = nullptr;
    *out = allocateCallerMemory(ctx, memoryKind(memory), static_cast<size_t>(bytes));
  });
}

void nysact_cuda_free(int32_t memory, void* pointer) {
  if (pointer == nullptr) return;
  try {
    Context& ctx = contextForDefaultDevice();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    (void)cudaSetDevice(ctx.device());
    releaseCallerMemory(memoryKind(memory), pointer);
  } catch (...) {
    // Freeing never reports (see nysact_cuda_layer_destroy).
  }
}

int32_t nysact_cuda_copy(void* dst, int32_t dst_memory, const void* src, int32_t src_memory, uint64_t bytes,
                         nysact_cuda_error* error) {
  return onDefaultContext(error, [&](Context& ctx) {
    (void)memoryKind(dst_memory);
    (void)memoryKind(src_memory);
    if (bytes > 0 && (dst == nullptr || src == nullptr)) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null copy pointer");
    copyCallerMemory(ctx, dst, src, static_cast<size_t>(bytes));
  });
}

int32_t nysact_cuda_fill(float* dst, int32_t memory, float value, uint64_t count, nysact_cuda_error* error) {
  return onDefaultContext(error, [&](Context& ctx) {
    if (count > 0 && dst == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null fill pointer");
    if (memoryKind(memory) == MemoryKind::Device) {
      fillDevice(ctx, dst, static_cast<int64_t>(count), value);
    } else {
      std::fill(dst, dst + count, value);
    }
  });
}

int32_t nysact_cuda_all_finite(const float* x, int32_t memory, uint64_t count, int32_t* all_finite,
                               nysact_cuda_error* error) {
  return onDefaultContext(error, [&](Context& ctx) {
    if (all_finite == nullptr || (count > 0 && x == nullptr)) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null pointer");
    if (memoryKind(memory) == MemoryKind::Device) {
      ctx.resetFlag();
      if (count > 0) launchFiniteCheck(ctx, x, static_cast<int64_t>(count));
      *all_finite = ctx.readFlag() ? 0 : 1;
    } else {
      bool ok = true;
      for (uint64_t i = 0; i < count && ok; ++i) ok = std::isfinite(x[i]);
      *all_finite = ok ? 1 : 0;
    }
  });
}

int32_t nysact_cuda_state_lengths(nysact_cuda_layer* handle, nysact_cuda_state* state, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) {
    if (state == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null state");
    requireStruct(state->struct_size, sizeof(nysact_cuda_state), "nysact_cuda_state");
    LayerState st;
    l.exportState(st);
    state->ema_length = static_cast<int64_t>(st.ema.size());
    state->sketch_length = static_cast<int64_t>(st.sketch.size());
    state->indices_length = static_cast<int64_t>(st.indices.size());
    state->basis_length = static_cast<int64_t>(st.basis.size());
    state->coefficients_length = static_cast<int64_t>(st.coefficients.size());
    state->momentum_length = static_cast<int64_t>(st.momentum.size());
    state->bias_momentum_length = static_cast<int64_t>(st.biasMomentum.size());
  });
}

int32_t nysact_cuda_export_state(nysact_cuda_layer* handle, nysact_cuda_state* state, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) {
    if (state == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null state");
    requireStruct(state->struct_size, sizeof(nysact_cuda_state), "nysact_cuda_state");
    LayerState st;
    l.exportState(st);
    toArray(st.ema, state->ema, state->ema_length, "ema");
    toArray(st.sketch, state->sketch, state->sketch_length, "sketch");
    toArray(st.indices, state->indices, state->indices_length, "indices");
    toArray(st.basis, state->basis, state->basis_length, "basis");
    toArray(st.coefficients, state->coefficients, state->coefficients_length, "coefficients");
    toArray(st.momentum, state->momentum, state->momentum_length, "momentum");
    toArray(st.biasMomentum, state->bias_momentum, state->bias_momentum_length, "biasMomentum");
    state->inverse_damping = st.inverseDamping;
    state->decay_product = st.decayProduct;
    state->ema_steps = st.emaSteps;
    state->has_factors = st.hasFactors ? 1 : 0;
    state->factor_fallbacks = st.factorFallbacks;
  });
}

int32_t nysact_cuda_import_state(nysact_cuda_layer* handle, const nysact_cuda_state* state, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) {
    if (state == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null state");
    requireStruct(state->struct_size, sizeof(nysact_cuda_state), "nysact_cuda_state");
    LayerState st;
    st.ema = fromArray(state->ema, state->ema_length, "ema");
    st.sketch = fromArray(state->sketch, state->sketch_length, "sketch");
    st.indices = fromArray(state->indices, state->indices_length, "indices");
    st.basis = fromArray(state->basis, state->basis_length, "basis");
    st.coefficients = fromArray(state->coefficients, state->coefficients_length, "coefficients");
    st.momentum = fromArray(state->momentum, state->momentum_length, "momentum");
    st.biasMomentum = fromArray(state->bias_momentum, state->bias_momentum_length, "biasMomentum");
    st.inverseDamping = state->inverse_damping;
    st.decayProduct = state->decay_product;
    st.emaSteps = state->ema_steps;
    st.hasFactors = state->has_factors != 0;
    st.factorFallbacks = state->factor_fallbacks;
    l.importState(st);
  });
}

int32_t nysact_cuda_state_bytes(nysact_cuda_layer* handle, uint64_t* bytes, nysact_cuda_error* error) {
  return onLayer(handle, error, [&](CudaLayer& l) { *bytes = static_cast<uint64_t>(l.stateBytes()); });
}

// ---- benchmarks (bench.cu) ----

int32_t nysact_cuda_bench_copy(uint64_t bytes, int32_t repeats, double* milliseconds, nysact_cuda_error* error) {
  return guarded(error, [&] {
    Context& ctx = contextForDefaultDevice();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    ctx.activate();
    *milliseconds = benchCopy(ctx, bytes, repeats);
  });
}

int32_t nysact_cuda_bench_sgemm(int64_t m, int64_t n, int64_t k, int32_t repeats, double* milliseconds,
                                nysact_cuda_error* error) {
  return guarded(error, [&] {
    Context& ctx = contextForDefaultDevice();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    ctx.activate();
    *milliseconds = benchSgemm(ctx, m, n, k, repeats);
  });
}

int32_t nysact_cuda_bench_fused_update(int64_t p, int64_t q, int64_t r, int32_t layout, int32_t repeats,
                                       double* milliseconds, nysact_cuda_error* error) {
  return guarded(error, [&] {
    Context& ctx = contextForDefaultDevice();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    ctx.activate();
    *milliseconds = benchFusedUpdate(ctx, p, q, r, static_cast<WeightLayout>(layout), repeats);
  });
}

int32_t nysact_cuda_bench_sketch(const nysact_cuda_layer_spec* spec, int64_t batch, int64_t height, int64_t width,
                                 int32_t repeats, double* milliseconds, nysact_cuda_error* error) {
  return guarded(error, [&] {
    if (spec == nullptr) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "null spec");
    const LayerSpec s = toSpec(*spec);
    Context& ctx = contextForDefaultDevice();
    std::lock_guard<std::mutex> lock(ctx.mutex());
    ctx.activate();
    CudaLayer layer(ctx, s);
    *milliseconds = benchSketch(ctx, layer, batch, height, width, repeats);
  });
}

}  // extern "C"
