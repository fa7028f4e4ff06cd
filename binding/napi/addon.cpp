// N-API glue: the only file that includes napi.h (STYLE.md point 3).  Every argument is checked
// here again (the CLI and advanced users call the binding directly); every C++ exception becomes a
// JS error with a stable `code`.  Typed arrays are read and written in place, never copied.
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <cstring>
#include <limits>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../backend.h"
#include "../cuda_loader.h"
#include "args.h"

namespace nysact {

void registerBenchExports(Napi::Env env, Napi::Object exports);  // bench.cpp

namespace {

using namespace napi_args;  // binding/napi/args.h

constexpr const char* kBusy = "ERR_NYSACT_BUSY";

std::atomic<int64_t> gLiveLayers{0};
std::atomic<int64_t> gLiveBytes{0};
std::atomic<int64_t> gLiveTensors{0};
std::atomic<int64_t> gLiveTensorBytes{0};
std::atomic<int64_t> gLiveHostBuffers{0};
std::atomic<int64_t> gLiveHostBufferBytes{0};

[[noreturn]] void throwBusy(Napi::Env env, const std::string& message) {
  throw withCode(Napi::Error::New(env, message), kBusy);
}
[[noreturn]] void throwDisposed(Napi::Env env, const std::string& message) {
  throw withCode(Napi::Error::New(env, message), "ERR_NYSACT_DISPOSED");
}

// Type tags of constructed native objects: a cheap, exact check that a JS value is a live LayerWrap
// or TensorWrap (an object merely inheriting their prototype has no tag, and nothing else does).
constexpr napi_type_tag kLayerTag = {0x6e79736163744c61ULL, 0x7965725772617031ULL};
constexpr napi_type_tag kTensorTag = {0x6e79736163745465ULL, 0x6e736f7257726170ULL};

bool hasTypeTag(const Napi::Value& v, const napi_type_tag& tag) {
  if (!v.IsObject()) return false;
  bool tagged = false;
  return napi_check_object_type_tag(v.Env(), v, &tag, &tagged) == napi_ok && tagged;
}

void setTypeTag(const Napi::CallbackInfo& info, const napi_type_tag& tag) {
  if (napi_type_tag_object(info.Env(), info.This(), &tag) != napi_ok) {
    throw withCode(Napi::Error::New(info.Env(), "Could not tag a native object"), "ERR_NYSACT_NATIVE");
  }
}

// The backend of a name ('cpu' or 'cuda'; loading the CUDA library on first use).
Backend& backendNamed(Napi::Env env, const std::string& name) {
  if (name == "cpu") return cpuBackend();
  // Throws ERR_NYSACT_BACKEND_UNAVAILABLE with the reason when it cannot be used.
  if (name == "cuda") return cudaBackend();
  throw withCode(Napi::Error::New(env, "Backend '" + name + "' does not exist (expected 'cpu' or 'cuda')"),
                 "ERR_NYSACT_BACKEND_UNAVAILABLE");
}

template <typename T>
struct ArrayView {
  T* data = nullptr;
  size_t length = 0;
};

template <typename T>
ArrayView<T> typedArg(const Napi::Value& v, const char* name, napi_typedarray_type type, const char* typeName) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throwType(v.Env(), std::string("Expected a ") + typeName + " for " + name + " but received " + describe(v));
  }
  auto array = v.As<Napi::TypedArrayOf<T>>();
  ArrayView<T> view;
  view.length = array.ElementLength();
  view.data = view.length > 0 ? array.Data() : nullptr;
  if (view.length > 0 && view.data == nullptr) throwType(v.Env(), std::string(name) + " is detached");
  return view;
}

ArrayView<float> floatArg(const Napi::Value& v, const char* name) {
  return typedArg<float>(v, name, napi_float32_array, "Float32Array");
}

// Page-locked host buffers handed to JS (hostBuffer on the CUDA backend), by start address: a
// Float32Array lying inside one is passed to the CUDA backend as MemoryKind::PinnedHost.  Process
// wide, as the allocations are.
std::mutex gPinnedMutex;
std::map<uintptr_t, size_t> gPinned;

MemoryKind hostMemoryKind(const float* data, size_t length) {
  if (data == nullptr) return MemoryKind::Host;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + length * sizeof(float);
  std::lock_guard<std::mutex> lock(gPinnedMutex);
  auto it = gPinned.upper_bound(begin);
  if (it == gPinned.begin()) return MemoryKind::Host;
  --it;
  return end <= it->first + it->second ? MemoryKind::PinnedHost : MemoryKind::Host;
}

void requireLength(Napi::Env env, const char* name, size_t actual, int64_t expected) {
  if (static_cast<int64_t>(actual) != expected) {
    std::ostringstream s;
    s << "Expected " << name << " to have length " << expected << " but received length " << actual;
    throwRange(env, s.str());
  }
}

int64_t checkedProduct(Napi::Env env, const char* name, std::initializer_list<int64_t> factors) {
  int64_t total = 1;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(total, f, &total) || total > (int64_t{1} << 50)) {
      throwRange(env, std::string(name) + " is too large");
    }
  }
  return total;
}

Napi::Float32Array copyToFloat32(Napi::Env env, const std::vector<float>& v) {
  auto out = Napi::Float32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(out.Data(), v.data(), v.size() * sizeof(float));
  return out;
}

Napi::Int32Array copyToInt32(Napi::Env env, const std::vector<int32_t>& v) {
  auto out = Napi::Int32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(out.Data(), v.data(), v.size() * sizeof(int32_t));
  return out;
}

template <typename T>
std::vector<T> vectorField(const Napi::Object& o, const char* field, napi_typedarray_type type, const char* typeName) {
  const std::string name = std::string("state.") + field;
  auto view = typedArg<T>(o.Get(field), name.c_str(), type, typeName);
  return std::vector<T>(view.data, view.data + view.length);
}

LayerSpec parseSpec(const Napi::Value& value) {
  Napi::Env env = value.Env();
  if (!value.IsObject() || value.IsArray() || value.IsTypedArray()) {
    throwType(env, "Expected an object for spec but received " + describe(value));
  }
  Napi::Object o = value.As<Napi::Object>();
  auto integer = [&](const char* field, int64_t lo, int64_t hi) {
    const std::string name = std::string("spec.") + field;
    return integerArg(o.Get(field), name.c_str(), lo, hi);
  };
  LayerSpec s;
  s.kind = static_cast<LayerKind>(integer("kind", 0, 2));
  s.bias = boolArg(o.Get("bias"), "spec.bias");
  s.size = integer("size", 0, int64_t{1} << 40);
  s.seed = (static_cast<uint64_t>(integer("seedHi", 0, 0xffffffffLL)) << 32) |
           static_cast<uint64_t>(integer("seedLo", 0, 0xffffffffLL));
  s.layerKey = static_cast<uint32_t>(integer("layerKey", 0, 0xffffffffLL));
  if (s.kind == LayerKind::Plain) {
    if (s.bias) throwRange(env, "A plain parameter (spec.kind 2) cannot have spec.bias");
    validateLayerSpec(s);
    return s;
  }
  s.fanIn = integer("fanIn", 1, int64_t{1} << 31);
  s.fanOut = integer("fanOut", 1, int64_t{1} << 31);
  s.rank = integer("rank", 1, 1 << 16);
  s.sketch = static_cast<SketchKind>(integer("sketch", 0, 1));
  s.layout = static_cast<WeightLayout>(integer("layout", 0, 1));
  s.kernelH = static_cast<int32_t>(integer("kernelH", 1, 1 << 12));
  s.kernelW = static_cast<int32_t>(integer("kernelW", 1, 1 << 12));
  s.inChannels = static_cast<int32_t>(integer("inChannels", 0, 1 << 24));
  s.strideH = static_cast<int32_t>(integer("strideH", 1, 1 << 12));
  s.strideW = static_cast<int32_t>(integer("strideW", 1, 1 << 12));
  s.dilationH = static_cast<int32_t>(integer("dilationH", 1, 1 << 12));
  s.dilationW = static_cast<int32_t>(integer("dilationW", 1, 1 << 12));
  s.padding = static_cast<Padding>(integer("padding", 0, 1));
  validateLayerSpec(s);
  return s;
}

struct InstanceData;

// [lr, momentum, weightDecay, nesterov, decoupled] from a Float64Array, checked (defined below).
StepScalars parseScalars(const Napi::Value& v);

class LayerWrap : public Napi::ObjectWrap<LayerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeLayer",
                       {
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::SketchDense>>("sketchCovarianceDense"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::SketchConv>>("sketchCovarianceConv"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::HasPending>>("hasPendingStatistics"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::DiscardPending>>("discardPendingStatistics"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::ReadPending>>("readPendingCovariance"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::WritePending>>("writePendingCovariance"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::Commit>>("commitStatistics"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::Factors>>("nystromFactors"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::Step>>("preconditionedMomentumStep"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::Export>>("exportState"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::Import>>("importState"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::StateBytes>>("stateBytes"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::Dispose>>("dispose"),
                           InstanceMethod<&LayerWrap::Call<&LayerWrap::Disposed>>("isDisposed"),
                       });
  }

  LayerWrap(const Napi::CallbackInfo& info);
  ~LayerWrap() override { Release(); }
  void Construct(const Napi::CallbackInfo& info);

  // Frees the native state; idempotent.  Called by dispose(), the finalizer and the env cleanup hook.
  void Release();

 private:
  template <Napi::Value (LayerWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value Call(const Napi::CallbackInfo& info) {
    return translateErrors(info.Env(), [&] { return (this->*Method)(info); });
  }

  Layer& layer(Napi::Env env) {
    if (!layer_) throwDisposed(env, "This NysAct layer has been disposed");
    if (busy_) throwBusy(env, "This NysAct layer is in use by an asynchronous step: wait for its promise");
    return *layer_;
  }

 public:
  // For step plans (main thread only): the layer if usable now, its backend, the in-use mark that
  // an asynchronous step holds until it settles.
  Layer& planLayer(Napi::Env env) { return layer(env); }
  Backend& backend() const { return *backend_; }
  void setBusy(bool busy) { busy_ = busy; }
  void updateBytes() {
    const int64_t now = layer_ ? static_cast<int64_t>(layer_->stateBytes()) : 0;
    gLiveBytes += now - bytes_;
    bytes_ = now;
  }

 private:

  // Null/undefined → Philox; Float32Array (gaussian) or Int32Array (subcolumns) → caller's sketch.
  SketchInput sketchArg(const Napi::Value& v, std::vector<int32_t>& checkedIndices) {
    Napi::Env env = v.Env();
    SketchInput in;
    if (v.IsUndefined() || v.IsNull()) return in;
    const LayerSpec& s = layer_->spec();
    if (s.fullCovariance()) throwType(env, "sketch must be null for a full-covariance layer (rank >= p)");
    const int64_t p = s.p(), r = s.r();
    if (s.sketch == SketchKind::Gaussian) {
      auto m = floatArg(v, "sketch");
      requireLength(env, "sketch", m.length, p * r);
      for (size_t i = 0; i < m.length; ++i)
        if (!std::isfinite(m.data[i])) throwRange(env, "sketch must hold finite values");
      in.matrix = m.data;
    } else {
      auto idx = typedArg<int32_t>(v, "sketch", napi_int32_array, "Int32Array");
      requireLength(env, "sketch", idx.length, r);
      std::set<int32_t> seen;
      for (size_t i = 0; i < idx.length; ++i) {
        if (idx.data[i] < 0 || idx.data[i] >= p || !seen.insert(idx.data[i]).second) {
          throwRange(env, "sketch must hold distinct column indices in [0, p)");
        }
      }
      checkedIndices.assign(idx.data, idx.data + idx.length);
      in.indices = checkedIndices.data();
    }
    return in;
  }

  // x: a Float32Array (ordinary host memory, or page-locked from hostBuffer) or a native tensor of
  // the layer's backend (defined after TensorWrap).
  struct Activations {
    const float* data = nullptr;
    size_t length = 0;
    MemoryKind memory = MemoryKind::Host;
  };
  Activations activationsArg(const Napi::Value& v);
  Napi::Value SketchDense(const Napi::CallbackInfo& info);
  Napi::Value SketchConv(const Napi::CallbackInfo& info);

  Napi::Value HasPending(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), layer(info.Env()).hasPendingStatistics());
  }
  Napi::Value DiscardPending(const Napi::CallbackInfo& info) {
    layer(info.Env()).discardPendingStatistics();
    return info.Env().Undefined();
  }
  Napi::Value ReadPending(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    auto out = Napi::Float32Array::New(env, static_cast<size_t>(l.spec().p() * l.spec().r()));
    l.readPendingCovariance(out.Data());
    return out;
  }
  Napi::Value WritePending(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    auto c = floatArg(argument(info, 0), "covariance");
    requireLength(env, "covariance", c.length, l.spec().p() * l.spec().r());
    for (size_t i = 0; i < c.length; ++i)
      if (!std::isfinite(c.data[i])) throwRange(env, "covariance must hold finite values");
    l.writePendingCovariance(c.data);
    return env.Undefined();
  }
  Napi::Value Commit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    const double beta = numberArg(argument(info, 0), "statDecay");
    if (beta < 0.0 || beta >= 1.0) throwRange(env, "Expected statDecay in [0, 1)");
    l.commitStatistics(beta);
    updateBytes();
    return env.Undefined();
  }
  Napi::Value Factors(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    const double damping = numberArg(argument(info, 0), "damping");
    if (!(damping > 0.0)) throwRange(env, "Expected a positive damping");
    const auto variant = static_cast<NystromVariant>(integerArg(argument(info, 1), "variant", 0, 1));
    const FactorReport report = l.nystromFactors(damping, variant);
    updateBytes();
    Napi::Object out = Napi::Object::New(env);
    out.Set("status", static_cast<int32_t>(report.status));
    out.Set("shift", report.shift);
    out.Set("attempts", report.attempts);
    out.Set("detail", report.detail);
    return out;
  }
  Napi::Value Step(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    const LayerSpec& s = l.spec();
    auto weight = floatArg(argument(info, 0), "weight");
    auto grad = floatArg(argument(info, 2), "gradWeight");
    requireLength(env, "weight", weight.length, s.weightSize());
    requireLength(env, "gradWeight", grad.length, s.weightSize());
    ArrayView<float> bias, gradBias;
    if (s.bias) {
      bias = floatArg(argument(info, 1), "bias");
      gradBias = floatArg(argument(info, 3), "gradBias");
      requireLength(env, "bias", bias.length, s.fanOut);
      requireLength(env, "gradBias", gradBias.length, s.fanOut);
    } else {
      if (!argument(info, 1).IsNull() || !argument(info, 3).IsNull()) {
        throwType(env, "bias and gradBias must be null for a layer without bias");
      }
    }
    const StepScalars st = parseScalars(argument(info, 4));
    l.preconditionedMomentumStep(hostOperands(weight.data, bias.data, grad.data, gradBias.data), st);
    backend_->synchronize();
    return env.Undefined();
  }
  Napi::Value Export(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    LayerState st;
    layer(env).exportState(st);
    Napi::Object o = Napi::Object::New(env);
    o.Set("ema", copyToFloat32(env, st.ema));
    o.Set("sketch", copyToFloat32(env, st.sketch));
    o.Set("indices", copyToInt32(env, st.indices));
    o.Set("basis", copyToFloat32(env, st.basis));
    o.Set("coefficients", copyToFloat32(env, st.coefficients));
    o.Set("inverseDamping", st.inverseDamping);
    o.Set("decayProduct", st.decayProduct);
    o.Set("momentum", copyToFloat32(env, st.momentum));
    o.Set("biasMomentum", copyToFloat32(env, st.biasMomentum));
    o.Set("emaSteps", static_cast<double>(st.emaSteps));
    o.Set("hasFactors", st.hasFactors);
    o.Set("factorFallbacks", static_cast<double>(st.factorFallbacks));
    return o;
  }
  Napi::Value Import(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    const Napi::Value v = argument(info, 0);
    if (!v.IsObject() || v.IsArray() || v.IsTypedArray()) throwType(env, "Expected an object for state but received " + describe(v));
    Napi::Object o = v.As<Napi::Object>();
    LayerState st;
    st.ema = vectorField<float>(o, "ema", napi_float32_array, "Float32Array");
    st.sketch = vectorField<float>(o, "sketch", napi_float32_array, "Float32Array");
    st.indices = vectorField<int32_t>(o, "indices", napi_int32_array, "Int32Array");
    st.basis = vectorField<float>(o, "basis", napi_float32_array, "Float32Array");
    st.coefficients = vectorField<float>(o, "coefficients", napi_float32_array, "Float32Array");
    st.momentum = vectorField<float>(o, "momentum", napi_float32_array, "Float32Array");
    st.biasMomentum = vectorField<float>(o, "biasMomentum", napi_float32_array, "Float32Array");
    st.inverseDamping = numberArg(o.Get("inverseDamping"), "state.inverseDamping");
    st.decayProduct = numberArg(o.Get("decayProduct"), "state.decayProduct");
    st.emaSteps = integerArg(o.Get("emaSteps"), "state.emaSteps", 0, int64_t{1} << 52);
    st.hasFactors = boolArg(o.Get("hasFactors"), "state.hasFactors");
    st.factorFallbacks = integerArg(o.Get("factorFallbacks"), "state.factorFallbacks", 0, int64_t{1} << 52);
    l.importState(st);
    updateBytes();
    return env.Undefined();
  }
  Napi::Value StateBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>(layer(info.Env()).stateBytes()));
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !layer_); }

  std::unique_ptr<Layer> layer_;
  Backend* backend_ = nullptr;
  bool busy_ = false;  // held by an asynchronous step (main-thread flag)
  int64_t bytes_ = 0;
  InstanceData* instance_ = nullptr;
};

// Per-environment data (main thread or worker): the live layers, so that the cleanup hook frees
// native memory when the environment exits.
class TensorWrap;

struct InstanceData {
  std::set<LayerWrap*> live;
  std::set<TensorWrap*> tensors;
  // Asynchronous steps running on a pool thread.  The cleanup hook sets tearingDown and waits until
  // none runs; a step that starts afterwards does nothing.  So no native layer or tensor is freed
  // while a pool thread uses it.
  std::mutex executionMutex;
  std::condition_variable executionDone;
  int executing = 0;
  bool tearingDown = false;
};

LayerWrap::LayerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LayerWrap>(info) {
  translateErrors(info.Env(), [&] {
    Construct(info);
    setTypeTag(info, kLayerTag);
  });
}

void LayerWrap::Construct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const LayerSpec spec = parseSpec(argument(info, 0));
  const Napi::Value backend = argument(info, 1);
  if (!backend.IsString()) throwType(env, "Expected a string for backend but received " + describe(backend));
  // Loads nysact_cuda.so on first use of 'cuda' (binding/cuda_loader.h).
  backend_ = &backendNamed(env, backend.As<Napi::String>().Utf8Value());
  layer_ = backend_->createLayer(spec);
  gLiveLayers += 1;
  updateBytes();
  instance_ = env.GetInstanceData<InstanceData>();
  if (instance_ != nullptr) instance_->live.insert(this);
}

void LayerWrap::Release() {
  if (!layer_) return;
  layer_.reset();
  gLiveLayers -= 1;
  updateBytes();
  if (instance_ != nullptr) instance_->live.erase(this);
}

Napi::Value LayerWrap::Dispose(const Napi::CallbackInfo& info) {
  if (busy_) throwBusy(info.Env(), "Cannot dispose a NysAct layer in use by an asynchronous step: wait for its promise");
  Release();
  return info.Env().Undefined();
}

// A backend-owned array of floats (JS DeviceTensor): device memory on CUDA, 64-byte aligned host
// memory on the CPU.  Read and written only through its methods (synchronous copies), or used in
// place as a step operand.
class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeTensor",
                       {
                           InstanceMethod<&TensorWrap::Call<&TensorWrap::Upload>>("upload"),
                           InstanceMethod<&TensorWrap::Call<&TensorWrap::Download>>("download"),
                           InstanceMethod<&TensorWrap::Call<&TensorWrap::Fill>>("fill"),
                           InstanceMethod<&TensorWrap::Call<&TensorWrap::Dispose>>("dispose"),
                           InstanceMethod<&TensorWrap::Call<&TensorWrap::Disposed>>("isDisposed"),
                           InstanceMethod<&TensorWrap::Call<&TensorWrap::Length>>("length"),
                           InstanceMethod<&TensorWrap::Call<&TensorWrap::BackendName>>("backend"),
                       });
  }

  TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {
    translateErrors(info.Env(), [&] {
      Construct(info);
      setTypeTag(info, kTensorTag);
    });
  }
  ~TensorWrap() override { Release(); }

  // Frees the memory; idempotent (dispose(), the finalizer, the env cleanup hook).
  void Release() {
    if (data_ == nullptr) return;
    backend_->release(kind_, data_);
    data_ = nullptr;
    gLiveTensors -= 1;
    gLiveTensorBytes -= static_cast<int64_t>(length_ * sizeof(float));
    if (instance_ != nullptr) instance_->tensors.erase(this);
  }

  // For step plans: the memory if usable now.
  float* planData(Napi::Env env, const std::string& name) {
    if (data_ == nullptr) throwDisposed(env, name + " is a disposed tensor");
    if (inUse_ > 0) throwBusy(env, name + " is in use by an asynchronous step");
    return data_;
  }
  Backend& backend() const { return *backend_; }
  MemoryKind kind() const { return kind_; }
  size_t length() const { return length_; }
  void acquire() { inUse_ += 1; }
  void releaseUse() { inUse_ -= 1; }

 private:
  template <Napi::Value (TensorWrap::*Method)(const Napi::CallbackInfo&)>
  Napi::Value Call(const Napi::CallbackInfo& info) {
    return translateErrors(info.Env(), [&] { return (this->*Method)(info); });
  }

  void Construct(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const int64_t length = integerArg(argument(info, 0), "length", 1, (int64_t{1} << 32) - 1);
    const Napi::Value name = argument(info, 1);
    if (!name.IsString()) throwType(env, "Expected a string for backend but received " + describe(name));
    backendName_ = name.As<Napi::String>().Utf8Value();
    backend_ = &backendNamed(env, backendName_);
    kind_ = backendName_ == "cuda" ? MemoryKind::Device : MemoryKind::Host;
    length_ = static_cast<size_t>(length);
    data_ = static_cast<float*>(backend_->allocate(kind_, length_ * sizeof(float)));
    gLiveTensors += 1;
    gLiveTensorBytes += static_cast<int64_t>(length_ * sizeof(float));
    instance_ = env.GetInstanceData<InstanceData>();
    if (instance_ != nullptr) instance_->tensors.insert(this);
  }

  float* usable(Napi::Env env) {
    if (data_ == nullptr) throwDisposed(env, "This tensor has been disposed");
    if (inUse_ > 0) throwBusy(env, "This tensor is in use by an asynchronous step: wait for its promise");
    return data_;
  }

  // [offset, offset + count) must lie in the tensor.
  size_t rangeArg(const Napi::Value& v, size_t count, const char* what) {
    const int64_t offset = integerArg(v, "offset", 0, static_cast<int64_t>(length_));
    if (static_cast<size_t>(offset) + count > length_) {
      std::ostringstream s;
      s << what << " of " << count << " elements at offset " << offset << " does not fit a tensor of length " << length_;
      throwRange(v.Env(), s.str());
    }
    return static_cast<size_t>(offset);
  }

  Napi::Value Upload(const Napi::CallbackInfo& info) {
    float* data = usable(info.Env());
    auto src = floatArg(argument(info, 0), "src");
    const size_t offset = rangeArg(argument(info, 1), src.length, "src");
    backend_->copy(data + offset, kind_, src.data, hostMemoryKind(src.data, src.length), src.length * sizeof(float));
    return info.Env().Undefined();
  }
  Napi::Value Download(const Napi::CallbackInfo& info) {
    float* data = usable(info.Env());
    auto dst = floatArg(argument(info, 0), "dst");
    const size_t offset = rangeArg(argument(info, 1), dst.length, "dst");
    backend_->copy(dst.data, hostMemoryKind(dst.data, dst.length), data + offset, kind_, dst.length * sizeof(float));
    return info.Env().Undefined();
  }
  Napi::Value Fill(const Napi::CallbackInfo& info) {
    float* data = usable(info.Env());
    const Napi::Value v = argument(info, 0);
    if (!v.IsNumber()) throwType(info.Env(), "Expected a number for value but received " + describe(v));
    backend_->fill(data, kind_, static_cast<float>(v.As<Napi::Number>().DoubleValue()), length_);
    return info.Env().Undefined();
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (inUse_ > 0) throwBusy(info.Env(), "Cannot dispose a tensor in use by an asynchronous step: wait for its promise");
    Release();
    return info.Env().Undefined();
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), data_ == nullptr); }
  Napi::Value Length(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(length_)); }
  Napi::Value BackendName(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), backendName_); }

  Backend* backend_ = nullptr;
  std::string backendName_;
  MemoryKind kind_ = MemoryKind::Host;
  float* data_ = nullptr;
  size_t length_ = 0;
  int inUse_ = 0;  // asynchronous steps holding it (main-thread counter)
  InstanceData* instance_ = nullptr;
};

// Activations of an observe() call: a Float32Array, or a native tensor of the layer's backend that
// is neither disposed nor held by an asynchronous step (checked before anything changes).
LayerWrap::Activations LayerWrap::activationsArg(const Napi::Value& v) {
  Napi::Env env = v.Env();
  Activations a;
  if (hasTypeTag(v, kTensorTag)) {
    TensorWrap* t = TensorWrap::Unwrap(v.As<Napi::Object>());
    a.data = t->planData(env, "x");
    if (&t->backend() != backend_) throwRange(env, "x is a tensor of another backend than its layer's");
    a.length = t->length();
    a.memory = t->kind();
    return a;
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throwType(env, "Expected a Float32Array or a native tensor for x but received " + describe(v));
  }
  const auto x = floatArg(v, "x");
  a.data = x.data;
  a.length = x.length;
  // Page-locked buffers matter only to a backend with a device (as in step plans).
  a.memory = backend_ == &cpuBackend() ? MemoryKind::Host : hostMemoryKind(x.data, x.length);
  return a;
}

Napi::Value LayerWrap::SketchDense(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Layer& l = layer(env);
  if (l.spec().kind != LayerKind::Dense) throwType(env, "sketchCovarianceDense needs a dense layer");
  const Activations x = activationsArg(argument(info, 0));
  const int64_t rows = integerArg(argument(info, 1), "rows", 1, int64_t{1} << 40);
  requireLength(env, "x", x.length, checkedProduct(env, "rows * fanIn", {rows, l.spec().fanIn}));
  std::vector<int32_t> indices;
  const SketchInput sketch = sketchArg(argument(info, 2), indices);
  const bool ok = l.sketchCovarianceDense(x.data, rows, sketch, x.memory);
  updateBytes();
  return Napi::Boolean::New(env, ok);
}

Napi::Value LayerWrap::SketchConv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Layer& l = layer(env);
  if (l.spec().kind != LayerKind::Conv2d) throwType(env, "sketchCovarianceConv needs a conv2d layer");
  const Activations x = activationsArg(argument(info, 0));
  ConvInput in;
  in.batch = integerArg(argument(info, 1), "batch", 1, int64_t{1} << 31);
  in.height = integerArg(argument(info, 2), "height", 1, int64_t{1} << 31);
  in.width = integerArg(argument(info, 3), "width", 1, int64_t{1} << 31);
  requireLength(env, "x", x.length,
                checkedProduct(env, "batch * height * width * inChannels", {in.batch, in.height, in.width, l.spec().inChannels}));
  const ConvGeometry g = convGeometry(l.spec(), in.height, in.width);
  if (g.outH < 1 || g.outW < 1) throwRange(env, "The conv input is smaller than the dilated kernel: no output positions");
  std::vector<int32_t> indices;
  const SketchInput sketch = sketchArg(argument(info, 4), indices);
  const bool ok = l.sketchCovarianceConv(x.data, in, sketch, x.memory);
  updateBytes();
  return Napi::Boolean::New(env, ok);
}

// ---- host buffers ---------------------------------------------------------------------------------

struct HostBuffer {
  Backend* backend;
  MemoryKind kind;
  size_t bytes;
};

void finalizeHostBuffer(napi_env, void* data, void* hint) {
  auto* buffer = static_cast<HostBuffer*>(hint);
  if (buffer->kind == MemoryKind::PinnedHost) {
    std::lock_guard<std::mutex> lock(gPinnedMutex);
    gPinned.erase(reinterpret_cast<uintptr_t>(data));
  }
  buffer->backend->release(buffer->kind, data);
  gLiveHostBuffers -= 1;
  gLiveHostBufferBytes -= static_cast<int64_t>(buffer->bytes);
  delete buffer;
}

// hostBuffer(length, backend): a Float32Array over an external ArrayBuffer of backend memory,
// freed by the ArrayBuffer's finalizer.  CPU: 64-byte aligned; CUDA: page-locked (cudaHostAlloc).
Napi::Value HostBufferFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t length = integerArg(argument(info, 0), "length", 1, (int64_t{1} << 32) - 1);
  const Napi::Value name = argument(info, 1);
  if (!name.IsString()) throwType(env, "Expected a string for backend but received " + describe(name));
  const std::string backendName = name.As<Napi::String>().Utf8Value();
  Backend& backend = backendNamed(env, backendName);
  const MemoryKind kind = backendName == "cuda" ? MemoryKind::PinnedHost : MemoryKind::Host;
  const size_t bytes = static_cast<size_t>(length) * sizeof(float);
  void* memory = backend.allocate(kind, bytes);
  auto* hint = new (std::nothrow) HostBuffer{&backend, kind, bytes};
  if (hint == nullptr) {
    backend.release(kind, memory);
    throw std::bad_alloc();
  }
  napi_value arrayBuffer = nullptr;
  // NYSACT_TEST_NO_EXTERNAL_BUFFERS=1 behaves as a runtime that forbids external buffers (tests).
  const char* forbid = std::getenv("NYSACT_TEST_NO_EXTERNAL_BUFFERS");
  const napi_status status = forbid != nullptr && std::strcmp(forbid, "1") == 0
                                 ? napi_no_external_buffers_allowed
                                 : napi_create_external_arraybuffer(env, memory, bytes, finalizeHostBuffer, hint, &arrayBuffer);
  if (status != napi_ok) {
    backend.release(kind, memory);
    delete hint;
    if (status == napi_no_external_buffers_allowed) {
      throw withCode(Napi::Error::New(env, "This JavaScript runtime does not allow external ArrayBuffers (napi_no_external_buffers_allowed, "
                                           "e.g. Electron's memory cage), so native host buffers cannot be handed out; use an ordinary "
                                           "Float32Array instead: step() reads it in place, without a copy"),
                     "ERR_NYSACT_UNSUPPORTED");
    }
    throw withCode(Napi::Error::New(env, "Could not create an external ArrayBuffer (napi status " + std::to_string(status) + ")"),
                   "ERR_NYSACT_NATIVE");
  }
  gLiveHostBuffers += 1;
  gLiveHostBufferBytes += static_cast<int64_t>(bytes);
  if (kind == MemoryKind::PinnedHost) {
    std::lock_guard<std::mutex> lock(gPinnedMutex);
    gPinned[reinterpret_cast<uintptr_t>(memory)] = bytes;
  }
  return Napi::Float32Array::New(env, static_cast<size_t>(length), Napi::ArrayBuffer(env, arrayBuffer), 0);
}

// The largest power of two (at most 4096) dividing the address of x's first element (tests).
Napi::Value ByteAlignment(const Napi::CallbackInfo& info) {
  auto x = floatArg(argument(info, 0), "x");
  const uintptr_t address = reinterpret_cast<uintptr_t>(x.data);
  uintptr_t alignment = 1;
  while (alignment < 4096 && address != 0 && address % (alignment * 2) == 0) alignment *= 2;
  if (address == 0) alignment = 4096;
  return Napi::Number::New(info.Env(), static_cast<double>(alignment));
}

// ---- step plans -----------------------------------------------------------------------------------

// One optimizer step over many layers (SPEC §1): commit the statistics of every layer, rebuild the
// factors of every layer that needs it with one Backend::nystromFactorsBatch per backend, run the
// fused updates in order, then one synchronisation per backend.  Parsed and checked on the main
// thread; run there (stepPlan) or on a pool thread (stepPlanAsync).
struct PlanEntry {
  LayerWrap* wrap = nullptr;
  Layer* layer = nullptr;
  StepOperands operands;
  bool commit = false, factors = false;
};

struct StepPlan {
  std::vector<PlanEntry> entries;
  std::vector<Backend*> backends;  // distinct, in first-use order
  std::vector<TensorWrap*> tensors;  // distinct
  std::vector<Napi::Value> held;     // the JS objects the plan points into
  double statDecay = 0.0, damping = 1.0;
  NystromVariant variant = NystromVariant::Reference;
  StepScalars scalars;
};

struct PlanOutcome {
  std::vector<FactorReport> reports;  // per entry; meaningful where entries[i].factors
  std::string code, message;
  int64_t failedEntry = -1;  // the entry that threw; -1: none, or the final synchronisation
  bool failed = false;
};

Napi::Array arrayField(const Napi::Object& o, const char* field) {
  const Napi::Value v = o.Get(field);
  if (!v.IsArray()) throwType(o.Env(), std::string("Expected an Array for plan.") + field + " but received " + describe(v));
  return v.As<Napi::Array>();
}

StepScalars parseScalars(const Napi::Value& v) {
  Napi::Env env = v.Env();
  auto scalars = typedArg<double>(v, "scalars", napi_float64_array, "Float64Array");
  requireLength(env, "scalars", scalars.length, 5);
  for (size_t i = 0; i < 5; ++i)
    if (!std::isfinite(scalars.data[i])) throwRange(env, "scalars must be finite");
  StepScalars st;
  st.lr = scalars.data[0];
  st.momentum = scalars.data[1];
  st.weightDecay = scalars.data[2];
  st.nesterov = scalars.data[3] != 0.0;
  st.decoupledWeightDecay = scalars.data[4] != 0.0;
  if (st.lr < 0.0 || st.momentum < 0.0 || st.momentum >= 1.0 || st.weightDecay < 0.0) {
    throwRange(env, "scalars out of range: need lr >= 0, momentum in [0, 1), weightDecay >= 0");
  }
  return st;
}

class PlanParser {
 public:
  explicit PlanParser(Napi::Env env) : env_(env) {}

  StepPlan parse(const Napi::Value& value) {
    if (!value.IsObject() || value.IsArray() || value.IsTypedArray()) throwType(env_, "Expected an object for plan but received " + describe(value));
    Napi::Object o = value.As<Napi::Object>();
    StepPlan plan;
    const Napi::Array layers = arrayField(o, "layers"), weights = arrayField(o, "weights"), biases = arrayField(o, "biases"),
                      grads = arrayField(o, "grads"), biasGrads = arrayField(o, "biasGrads");
    const uint32_t n = layers.Length();
    if (weights.Length() != n || biases.Length() != n || grads.Length() != n || biasGrads.Length() != n) {
      throwRange(env_, "plan.layers, weights, biases, grads and biasGrads must have the same length");
    }
    const bool statistics = boolArg(o.Get("statistics"), "plan.statistics");
    const bool inverse = boolArg(o.Get("inverse"), "plan.inverse");
    plan.statDecay = numberArg(o.Get("statDecay"), "plan.statDecay");
    if (plan.statDecay < 0.0 || plan.statDecay >= 1.0) throwRange(env_, "Expected plan.statDecay in [0, 1)");
    plan.damping = numberArg(o.Get("damping"), "plan.damping");
    if (!(plan.damping > 0.0)) throwRange(env_, "Expected a positive plan.damping");
    plan.variant = static_cast<NystromVariant>(integerArg(o.Get("variant"), "plan.variant", 0, 1));
    plan.scalars = parseScalars(o.Get("scalars"));
    plan.entries.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
      // Names are built only for messages: a plan is parsed on every step.
      auto where = [i] { return "plan.layers[" + std::to_string(i) + "]"; };
      const Napi::Value lv = layers.Get(i);
      if (!hasTypeTag(lv, kLayerTag)) {
        throwType(env_, "Expected a native layer for " + where() + " but received " + describe(lv));
      }
      PlanEntry e;
      e.wrap = LayerWrap::Unwrap(lv.As<Napi::Object>());
      e.layer = &e.wrap->planLayer(env_);
      for (const PlanEntry& earlier : plan.entries) {
        if (earlier.wrap == e.wrap) throwRange(env_, where() + " appears twice in the plan");
      }
      plan.held.push_back(lv);
      const LayerSpec& spec = e.layer->spec();
      Backend& backend = e.wrap->backend();
      const int64_t size = spec.weightSize();
      e.operands.weight = operand(plan, weights.Get(i), "weights", i, size, backend, e.operands.weightMemory);
      e.operands.gradWeight = operand(plan, grads.Get(i), "grads", i, size, backend, e.operands.gradWeightMemory);
      if (spec.bias) {
        e.operands.bias = operand(plan, biases.Get(i), "biases", i, spec.fanOut, backend, e.operands.biasMemory);
        e.operands.gradBias = operand(plan, biasGrads.Get(i), "biasGrads", i, spec.fanOut, backend, e.operands.gradBiasMemory);
      } else if (!biases.Get(i).IsNull() || !biasGrads.Get(i).IsNull()) {
        throwType(env_, "bias and gradBias must be null for a layer without bias (" + where() + ")");
      }
      const bool preconditioned = spec.kind != LayerKind::Plain;
      e.commit = statistics && preconditioned;
      e.factors = inverse && preconditioned;
      if (e.commit && !e.layer->hasPendingStatistics()) throwRange(env_, where() + " has no pending statistics to commit");
      if (std::find(plan.backends.begin(), plan.backends.end(), &backend) == plan.backends.end()) plan.backends.push_back(&backend);
      plan.entries.push_back(e);
      const float* arrays[] = {e.operands.weight, e.operands.bias, e.operands.gradWeight, e.operands.gradBias};
      const char* fields[] = {"weights", "biases", "grads", "biasGrads"};
      const int64_t lengths[] = {size, spec.fanOut, size, spec.fanOut};
      for (int f = 0; f < 4; ++f) {
        if (arrays[f] != nullptr && lengths[f] > 0) {
          ranges_.push_back({reinterpret_cast<uintptr_t>(arrays[f]),
                             reinterpret_cast<uintptr_t>(arrays[f]) + static_cast<uintptr_t>(lengths[f]) * sizeof(float),
                             fields[f], i, f < 2});
        }
      }
    }
    requireNoWrittenOverlap();
    return plan;
  }

 private:
  // An operand's memory: [begin, end) bytes, and whether the step writes it (weights, biases).
  struct Range {
    uintptr_t begin, end;
    const char* field;
    uint32_t entry;
    bool written;
  };

  // A step writes weights and biases in place, and may update many layers at once (CUDA's batched
  // launches): an array it writes must share no memory with any other operand of the plan, or the
  // result would depend on the order of the updates.  (Read-only operands may be shared.)
  void requireNoWrittenOverlap() {
    std::sort(ranges_.begin(), ranges_.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
    for (size_t i = 0; i < ranges_.size(); ++i) {
      for (size_t j = i + 1; j < ranges_.size() && ranges_[j].begin < ranges_[i].end; ++j) {
        if (!ranges_[i].written && !ranges_[j].written) continue;
        const Range& a = ranges_[i].written ? ranges_[i] : ranges_[j];
        const Range& b = ranges_[i].written ? ranges_[j] : ranges_[i];
        throwRange(env_, "plan." + std::string(a.field) + "[" + std::to_string(a.entry) + "] shares memory with plan." +
                             b.field + "[" + std::to_string(b.entry) +
                             "]: a step writes weights and biases in place, so they must not overlap any other array of the step");
      }
    }
  }

  std::vector<Range> ranges_;
  float* operand(StepPlan& plan, const Napi::Value& v, const char* field, uint32_t i, int64_t expected, Backend& backend,
                 MemoryKind& kind) {
    auto name = [field, i] { return std::string("plan.") + field + "[" + std::to_string(i) + "]"; };
    if (v.IsTypedArray()) {
      auto array = v.As<Napi::TypedArray>();
      if (array.TypedArrayType() != napi_float32_array) {
        throwType(env_, "Expected a Float32Array or a native tensor for " + name() + " but received " + describe(v));
      }
      auto floats = v.As<Napi::Float32Array>();
      const size_t length = floats.ElementLength();
      float* data = length > 0 ? floats.Data() : nullptr;
      if (length > 0 && data == nullptr) throwType(env_, name() + " is detached");
      if (static_cast<int64_t>(length) != expected) requireLength(env_, name().c_str(), length, expected);
      // Page-locked buffers matter only to a backend with a device.
      kind = &backend == &cpuBackend() ? MemoryKind::Host : hostMemoryKind(data, length);
      plan.held.push_back(v);
      return data;
    }
    if (!hasTypeTag(v, kTensorTag)) {
      throwType(env_, "Expected a Float32Array or a native tensor for " + name() + " but received " + describe(v));
    }
    TensorWrap* t = TensorWrap::Unwrap(v.As<Napi::Object>());
    float* data = t->planData(env_, name());
    if (static_cast<int64_t>(t->length()) != expected) requireLength(env_, name().c_str(), t->length(), expected);
    if (&t->backend() != &backend) throwRange(env_, name() + " is a tensor of another backend than its layer's");
    kind = t->kind();
    if (std::find(plan.tensors.begin(), plan.tensors.end(), t) == plan.tensors.end()) plan.tensors.push_back(t);
    plan.held.push_back(v);
    return data;
  }

  Napi::Env env_;
};

// Runs a parsed plan (any thread).  On failure: every backend is synchronised (best effort), so that
// no queued copy still writes the caller's arrays, and the outcome names the failing entry.
void runPlan(const StepPlan& plan, PlanOutcome& out) {
  out.reports.assign(plan.entries.size(), FactorReport{});
  auto fail = [&](const std::string& code, const std::string& message) {
    out.failed = true;
    out.code = code;
    out.message = message;
  };
  // The plan's entries on one backend (only those that rebuild factors, with `rebuilding`).
  struct Group {
    std::vector<Layer*> layers;
    std::vector<bool> factors;
    std::vector<StepOperands> operands;
    std::vector<size_t> entries;
  };
  auto groupOf = [&](Backend* backend, bool rebuilding) {
    Group g;
    for (size_t i = 0; i < plan.entries.size(); ++i) {
      const PlanEntry& e = plan.entries[i];
      if (&e.wrap->backend() != backend || (rebuilding && !e.factors)) continue;
      g.layers.push_back(e.layer);
      g.factors.push_back(e.factors);
      g.operands.push_back(e.operands);
      g.entries.push_back(i);
    }
    return g;
  };
  // Runs a backend's batch call over a group, naming the plan entry a BatchLayerError points at.
  auto onGroup = [&](const Group& g, const std::function<void()>& call) {
    out.failedEntry = static_cast<int64_t>(g.entries.front());
    try {
      call();
    } catch (const BatchLayerError& e) {
      if (e.index() < g.entries.size()) out.failedEntry = static_cast<int64_t>(g.entries[e.index()]);
      throw;
    }
  };
  try {
    // First every backend allocates what the whole step will use (CUDA: factor arrays, scratch and
    // staging regions), so that a step short of memory fails before it changes anything.
    for (Backend* backend : plan.backends) {
      const Group g = groupOf(backend, false);
      if (g.layers.empty()) continue;
      onGroup(g, [&] { backend->reserveStep(g.layers, g.factors, g.operands, plan.damping, plan.variant); });
    }
    for (size_t i = 0; i < plan.entries.size(); ++i) {
      out.failedEntry = static_cast<int64_t>(i);
      const PlanEntry& e = plan.entries[i];
      if (e.commit) e.layer->commitStatistics(plan.statDecay);
    }
    // One batched rebuild per backend over all of its entries that rebuild factors (the CUDA
    // backend batches their r x r problems; a layer's factors depend on that layer alone, so the
    // results are those of the per-layer calls).
    for (Backend* backend : plan.backends) {
      const Group g = groupOf(backend, true);
      if (g.layers.empty()) continue;
      std::vector<FactorReport> reports;
      onGroup(g, [&] { reports = backend->nystromFactorsBatch(g.layers, plan.damping, plan.variant); });
      if (reports.size() != g.layers.size()) throw Error("ERR_NYSACT_NATIVE", "nystromFactorsBatch returned too few reports");
      for (size_t j = 0; j < g.entries.size(); ++j) out.reports[g.entries[j]] = std::move(reports[j]);
    }
    // The updates: one batch per backend (CUDA shares kernel launches across layers; the results
    // are those of the per-layer calls).
    for (Backend* backend : plan.backends) {
      const Group g = groupOf(backend, false);
      if (g.layers.empty()) continue;
      onGroup(g, [&] { backend->preconditionedMomentumStepBatch(g.layers, g.operands, plan.scalars); });
    }
    out.failedEntry = -1;
    for (Backend* b : plan.backends) b->synchronize();
    return;
  } catch (const Error& e) {
    fail(e.code(), e.what());
  } catch (const std::bad_alloc&) {
    fail("ERR_NYSACT_NATIVE", "Out of memory in the native backend");
  } catch (const std::exception& e) {
    fail("ERR_NYSACT_NATIVE", e.what());
  } catch (...) {
    fail("ERR_NYSACT_NATIVE", "unknown native failure");
  }
  for (Backend* b : plan.backends) {
    try {
      b->synchronize();
    } catch (...) {
      // The first error is the one reported.
    }
  }
}

// The factor reports per entry (null where none was rebuilt); an empty array when no entry rebuilt.
Napi::Value planResult(Napi::Env env, const StepPlan& plan, const PlanOutcome& out) {
  bool any = false;
  for (const PlanEntry& e : plan.entries) any = any || e.factors;
  if (!any) return Napi::Array::New(env, 0);
  Napi::Array reports = Napi::Array::New(env, plan.entries.size());
  for (size_t i = 0; i < plan.entries.size(); ++i) {
    if (!plan.entries[i].factors) {
      reports.Set(static_cast<uint32_t>(i), env.Null());
      continue;
    }
    const FactorReport& r = out.reports[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("status", static_cast<int32_t>(r.status));
    o.Set("shift", r.shift);
    o.Set("attempts", r.attempts);
    o.Set("detail", r.detail);
    reports.Set(static_cast<uint32_t>(i), o);
  }
  return reports;
}

Napi::Error planError(Napi::Env env, const PlanOutcome& out) {
  Napi::Error error = withCode(Napi::Error::New(env, out.message), out.code.empty() ? "ERR_NYSACT_NATIVE" : out.code);
  error.Set("layerIndex", Napi::Number::New(env, static_cast<double>(out.failedEntry)));
  return error;
}

// Byte counts change only where statistics were committed or factors rebuilt.
void refreshBytes(const StepPlan& plan) {
  for (const PlanEntry& e : plan.entries) {
    if (!e.commit && !e.factors) continue;
    try {
      e.wrap->updateBytes();
    } catch (...) {
      // A broken device context: the byte count stays as it was.
    }
  }
}

// stepPlan(plan): the whole step on the calling (main) thread.  Returns the factor reports (null
// for entries without a rebuild); throws with `layerIndex` naming the failing entry.
Napi::Value StepPlanFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  StepPlan plan = PlanParser(env).parse(argument(info, 0));
  PlanOutcome out;
  runPlan(plan, out);
  refreshBytes(plan);
  if (out.failed) throw planError(env, out);
  return planResult(env, plan, out);
}

// The same on a libuv pool thread.  From queueing until it settles, the plan's layers and tensors
// are marked in use (their methods throw ERR_NYSACT_BUSY) and every JS object it points into is
// referenced, so none is collected; JS must not write the arrays meanwhile.  On CUDA the pool
// thread enqueues the work and synchronises the stream.
class StepPlanWorker : public Napi::AsyncWorker {
 public:
  StepPlanWorker(Napi::Env env, StepPlan plan, InstanceData* instance)
      : Napi::AsyncWorker(env, "nysact:stepAsync"),
        deferred_(Napi::Promise::Deferred::New(env)),
        plan_(std::move(plan)),
        instance_(instance),
        threads_(cpuThreads()) {
    for (const Napi::Value& v : plan_.held) references_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    plan_.held.clear();
    for (PlanEntry& e : plan_.entries) e.wrap->setBusy(true);
    for (TensorWrap* t : plan_.tensors) t->acquire();
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    {
      std::lock_guard<std::mutex> lock(instance_->executionMutex);
      if (instance_->tearingDown) {
        outcome_.failed = true;
        outcome_.code = "ERR_NYSACT_DISPOSED";
        outcome_.message = "The JavaScript environment is shutting down; the step was not run";
        SetError(outcome_.message);
        return;
      }
      instance_->executing += 1;
    }
    // The thread count set through setThreads() is per thread in OpenMP: carry it over.
    setCpuThreads(threads_);
    runPlan(plan_, outcome_);
    {
      std::lock_guard<std::mutex> lock(instance_->executionMutex);
      instance_->executing -= 1;
    }
    instance_->executionDone.notify_all();
    if (outcome_.failed) SetError(outcome_.message);
  }

  void OnOK() override {
    Napi::Env env = Env();
    settle();
    deferred_.Resolve(planResult(env, plan_, outcome_));
  }

  void OnError(const Napi::Error&) override {
    Napi::Env env = Env();
    settle();
    deferred_.Reject(planError(env, outcome_).Value());
  }

 private:
  void settle() {
    for (PlanEntry& e : plan_.entries) e.wrap->setBusy(false);
    for (TensorWrap* t : plan_.tensors) t->releaseUse();
    refreshBytes(plan_);
  }

  Napi::Promise::Deferred deferred_;
  StepPlan plan_;
  InstanceData* instance_;
  int threads_;
  PlanOutcome outcome_;
  std::vector<Napi::ObjectReference> references_;
};

Napi::Value StepPlanAsyncFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  InstanceData* instance = env.GetInstanceData<InstanceData>();
  if (instance == nullptr) throw withCode(Napi::Error::New(env, "The addon's instance data is missing"), "ERR_NYSACT_NATIVE");
  StepPlan plan = PlanParser(env).parse(argument(info, 0));
  auto* worker = new StepPlanWorker(env, std::move(plan), instance);
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

// allFinite(x): x a Float32Array or a native tensor (scanned where it lives).
Napi::Value AllFinite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Value v = argument(info, 0);
  if (hasTypeTag(v, kTensorTag)) {
    TensorWrap* t = TensorWrap::Unwrap(v.As<Napi::Object>());
    float* data = t->planData(env, "x");
    return Napi::Boolean::New(env, t->backend().allFinite(data, t->length(), t->kind()));
  }
  auto x = floatArg(v, "x");
  return Napi::Boolean::New(env, cpuBackend().allFinite(x.data, x.length, MemoryKind::Host));
}

Napi::Value Threads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), cpuThreads()); }

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  setCpuThreads(static_cast<int>(integerArg(argument(info, 0), "threads", 1, 1024)));
  return info.Env().Undefined();
}

struct SketchArgs {
  uint64_t seed;
  uint32_t layerKey;
  uint64_t step;
  int64_t p, r;
};

SketchArgs sketchArgs(const Napi::CallbackInfo& info) {
  SketchArgs a;
  a.seed = (static_cast<uint64_t>(integerArg(argument(info, 0), "seedHi", 0, 0xffffffffLL)) << 32) |
           static_cast<uint64_t>(integerArg(argument(info, 1), "seedLo", 0, 0xffffffffLL));
  a.layerKey = static_cast<uint32_t>(integerArg(argument(info, 2), "layerKey", 0, 0xffffffffLL));
  a.step = static_cast<uint64_t>(integerArg(argument(info, 3), "statStep", 0, int64_t{1} << 52));
  a.p = integerArg(argument(info, 4), "p", 1, int64_t{1} << 31);
  a.r = integerArg(argument(info, 5), "r", 1, 1 << 16);
  if (a.r > a.p) throwRange(info.Env(), "Expected r <= p");
  checkedProduct(info.Env(), "p * r", {a.p, a.r});
  return a;
}

Napi::Value PhiloxGaussian(const Napi::CallbackInfo& info) {
  const SketchArgs a = sketchArgs(info);
  auto out = Napi::Float32Array::New(info.Env(), static_cast<size_t>(a.p * a.r));
  philoxGaussianSketch(a.seed, a.layerKey, a.step, a.p, a.r, out.Data());
  return out;
}

Napi::Value PhiloxSubcolumns(const Napi::CallbackInfo& info) {
  const SketchArgs a = sketchArgs(info);
  auto out = Napi::Int32Array::New(info.Env(), static_cast<size_t>(a.r));
  philoxSubcolumns(a.seed, a.layerKey, a.step, a.p, a.r, out.Data());
  return out;
}

Napi::Value ConvGeometryFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const LayerSpec spec = parseSpec(argument(info, 0));
  if (spec.kind != LayerKind::Conv2d) throwType(env, "convGeometry needs a conv2d spec (kind 1)");
  const int64_t h = integerArg(argument(info, 1), "height", 1, int64_t{1} << 31);
  const int64_t w = integerArg(argument(info, 2), "width", 1, int64_t{1} << 31);
  const ConvGeometry g = convGeometry(spec, h, w);
  Napi::Object o = Napi::Object::New(env);
  o.Set("outH", static_cast<double>(g.outH));
  o.Set("outW", static_cast<double>(g.outW));
  o.Set("padTop", static_cast<double>(g.padTop));
  o.Set("padLeft", static_cast<double>(g.padLeft));
  return o;
}

Napi::Value Backends(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array out = Napi::Array::New(env, 2);
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("name", "cpu");
  cpu.Set("available", true);
  cpu.Set("reason", "");
  cpu.Set("device", "");
  out.Set(0u, cpu);
  // Asking about CUDA loads and probes nysact_cuda.so (once per process).
  const CudaBackendStatus& status = cudaBackendStatus();
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("name", "cuda");
  cuda.Set("available", status.available);
  cuda.Set("reason", status.reason);
  cuda.Set("device", status.device);
  out.Set(1u, cuda);
  return out;
}

Napi::Value LiveObjects(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("layers", static_cast<double>(gLiveLayers.load()));
  o.Set("bytes", static_cast<double>(gLiveBytes.load()));
  o.Set("tensors", static_cast<double>(gLiveTensors.load()));
  o.Set("tensorBytes", static_cast<double>(gLiveTensorBytes.load()));
  o.Set("hostBuffers", static_cast<double>(gLiveHostBuffers.load()));
  o.Set("hostBufferBytes", static_cast<double>(gLiveHostBufferBytes.load()));
  return o;
}

// Whether this process has tried to load nysact_cuda.so (tests: the CPU path never does).
Napi::Value CudaLoadAttempted(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), cudaLoadAttempted());
}

template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
Napi::Value translate(const Napi::CallbackInfo& info) {
  return translateErrors(info.Env(), [&] { return Fn(info); });
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new InstanceData();
  env.SetInstanceData<InstanceData>(data);
  // Runs before InstanceData's finalizer when the environment exits: free every live layer.
  napi_add_env_cleanup_hook(
      env,
      [](void* arg) {
        auto* d = static_cast<InstanceData*>(arg);
        {
          // No pool thread may still use a layer or tensor freed below.
          std::unique_lock<std::mutex> lock(d->executionMutex);
          d->tearingDown = true;
          d->executionDone.wait(lock, [d] { return d->executing == 0; });
        }
        while (!d->live.empty()) (*d->live.begin())->Release();
        while (!d->tensors.empty()) (*d->tensors.begin())->Release();
      },
      data);
  Napi::Function layer = LayerWrap::Define(env);
  exports.Set("Layer", layer);
  exports.Set("Tensor", TensorWrap::Define(env));
  exports.Set("version", Napi::String::New(env, NYSACT_VERSION));
  exports.Set("interfaceVersion", Napi::Number::New(env, kBackendInterfaceVersion));
  exports.Set("allFinite", Napi::Function::New<translate<AllFinite>>(env, "allFinite"));
  exports.Set("threads", Napi::Function::New<translate<Threads>>(env, "threads"));
  exports.Set("setThreads", Napi::Function::New<translate<SetThreads>>(env, "setThreads"));
  exports.Set("philoxGaussianSketch", Napi::Function::New<translate<PhiloxGaussian>>(env, "philoxGaussianSketch"));
  exports.Set("philoxSubcolumns", Napi::Function::New<translate<PhiloxSubcolumns>>(env, "philoxSubcolumns"));
  exports.Set("convGeometry", Napi::Function::New<translate<ConvGeometryFn>>(env, "convGeometry"));
  exports.Set("backends", Napi::Function::New<translate<Backends>>(env, "backends"));
  exports.Set("liveObjects", Napi::Function::New<translate<LiveObjects>>(env, "liveObjects"));
  exports.Set("stepPlan", Napi::Function::New<translate<StepPlanFn>>(env, "stepPlan"));
  exports.Set("stepPlanAsync", Napi::Function::New<translate<StepPlanAsyncFn>>(env, "stepPlanAsync"));
  exports.Set("hostBuffer", Napi::Function::New<translate<HostBufferFn>>(env, "hostBuffer"));
  exports.Set("byteAlignment", Napi::Function::New<translate<ByteAlignment>>(env, "byteAlignment"));
  exports.Set("cudaLoadAttempted", Napi::Function::New<translate<CudaLoadAttempted>>(env, "cudaLoadAttempted"));
  registerBenchExports(env, exports);
  return exports;
}

}  // namespace nysact

static Napi::Object InitNysAct(Napi::Env env, Napi::Object exports) { return nysact::Init(env, exports); }

NODE_API_MODULE(nysact, InitNysAct)
