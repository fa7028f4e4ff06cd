// N-API glue: the only file that includes napi.h (STYLE.md point 3).  Every argument is checked
// here again (the CLI and advanced users call the binding directly); every C++ exception becomes a
// JS error with a stable `code`.  Typed arrays are read and written in place, never copied.
#include <napi.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <set>
#include <sstream>
#include <string>

#include "../backend.h"
#include "../cuda_loader.h"

namespace nysact {

void registerBenchExports(Napi::Env env, Napi::Object exports);  // bench.cpp

namespace {

constexpr const char* kInvalid = "ERR_NYSACT_INVALID_ARGUMENT";

std::atomic<int64_t> gLiveLayers{0};
std::atomic<int64_t> gLiveBytes{0};

Napi::Error withCode(Napi::Error error, const std::string& code) {
  error.Set("code", Napi::String::New(error.Env(), code));
  return error;
}
[[noreturn]] void throwType(Napi::Env env, const std::string& message) {
  throw withCode(Napi::TypeError::New(env, message), kInvalid);
}
[[noreturn]] void throwRange(Napi::Env env, const std::string& message) {
  throw withCode(Napi::RangeError::New(env, message), kInvalid);
}

// Runs f, turning backend exceptions (nysact::Error, std::bad_alloc, others) into coded JS errors;
// node-addon-api itself only translates Napi::Error.
template <typename F>
auto translateErrors(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw withCode(Napi::Error::New(env, e.what()), e.code());
  } catch (const std::bad_alloc&) {
    throw withCode(Napi::RangeError::New(env, "Out of memory in the native backend"), "ERR_NYSACT_NATIVE");
  } catch (const std::exception& e) {
    throw withCode(Napi::Error::New(env, e.what()), "ERR_NYSACT_NATIVE");
  }
}

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? "true" : "false";
  if (v.IsNumber()) {
    std::ostringstream s;
    s << v.As<Napi::Number>().DoubleValue();
    return s.str();
  }
  if (v.IsString()) return "a string";
  if (v.IsTypedArray()) {
    switch (v.As<Napi::TypedArray>().TypedArrayType()) {
      case napi_float32_array: return "a Float32Array";
      case napi_float64_array: return "a Float64Array";
      case napi_int32_array: return "an Int32Array";
      default: return "another typed array";
    }
  }
  if (v.IsArray()) return "an Array";
  if (v.IsFunction()) return "a function";
  if (v.IsObject()) return "an object";
  return "a value of another type";
}

Napi::Value argument(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() ? info[i] : info.Env().Undefined();
}

int64_t integerArg(const Napi::Value& v, const char* name, int64_t lo, int64_t hi) {
  if (!v.IsNumber()) throwType(v.Env(), std::string("Expected an integer for ") + name + " but received " + describe(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(std::floor(d) == d) || d < static_cast<double>(lo) || d > static_cast<double>(hi)) {
    std::ostringstream s;
    s << "Expected an integer in [" << lo << ", " << hi << "] for " << name << " but received " << describe(v);
    throwRange(v.Env(), s.str());
  }
  return static_cast<int64_t>(d);
}

double numberArg(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throwType(v.Env(), std::string("Expected a number for ") + name + " but received " + describe(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throwRange(v.Env(), std::string("Expected a finite number for ") + name + " but received " + describe(v));
  return d;
}

bool boolArg(const Napi::Value& v, const char* name) {
  if (!v.IsBoolean()) throwType(v.Env(), std::string("Expected a boolean for ") + name + " but received " + describe(v));
  return v.As<Napi::Boolean>().Value();
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
    if (!layer_) throw withCode(Napi::Error::New(env, "This NysAct layer has been disposed"), "ERR_NYSACT_DISPOSED");
    return *layer_;
  }

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

  void updateBytes() {
    const int64_t now = layer_ ? static_cast<int64_t>(layer_->stateBytes()) : 0;
    gLiveBytes += now - bytes_;
    bytes_ = now;
  }

  Napi::Value SketchDense(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    if (l.spec().kind != LayerKind::Dense) throwType(env, "sketchCovarianceDense needs a dense layer");
    auto x = floatArg(argument(info, 0), "x");
    const int64_t rows = integerArg(argument(info, 1), "rows", 1, int64_t{1} << 40);
    requireLength(env, "x", x.length, checkedProduct(env, "rows * fanIn", {rows, l.spec().fanIn}));
    std::vector<int32_t> indices;
    const SketchInput sketch = sketchArg(argument(info, 2), indices);
    const bool ok = l.sketchCovarianceDense(x.data, rows, sketch);
    updateBytes();
    return Napi::Boolean::New(env, ok);
  }

  Napi::Value SketchConv(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Layer& l = layer(env);
    if (l.spec().kind != LayerKind::Conv2d) throwType(env, "sketchCovarianceConv needs a conv2d layer");
    auto x = floatArg(argument(info, 0), "x");
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
    const bool ok = l.sketchCovarianceConv(x.data, in, sketch);
    updateBytes();
    return Napi::Boolean::New(env, ok);
  }

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
    auto scalars = typedArg<double>(argument(info, 4), "scalars", napi_float64_array, "Float64Array");
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
    l.preconditionedMomentumStep(weight.data, bias.data, grad.data, gradBias.data, st);
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
  int64_t bytes_ = 0;
  InstanceData* instance_ = nullptr;
};

// Per-environment data (main thread or worker): the live layers, so that the cleanup hook frees
// native memory when the environment exits.
struct InstanceData {
  std::set<LayerWrap*> live;
};

LayerWrap::LayerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LayerWrap>(info) {
  translateErrors(info.Env(), [&] { Construct(info); });
}

void LayerWrap::Construct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const LayerSpec spec = parseSpec(argument(info, 0));
  const Napi::Value backend = argument(info, 1);
  if (!backend.IsString()) throwType(env, "Expected a string for backend but received " + describe(backend));
  const std::string name = backend.As<Napi::String>().Utf8Value();
  if (name == "cpu") {
    layer_ = cpuBackend().createLayer(spec);
  } else if (name == "cuda") {
    // Loads nysact_cuda.so on first use (binding/cuda_loader.h); throws ERR_NYSACT_BACKEND_UNAVAILABLE
    // with the reason when it cannot be used.
    layer_ = cudaBackend().createLayer(spec);
  } else {
    throw withCode(Napi::Error::New(env, "Backend '" + name + "' does not exist (expected 'cpu' or 'cuda')"),
                   "ERR_NYSACT_BACKEND_UNAVAILABLE");
  }
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
  Release();
  return info.Env().Undefined();
}

Napi::Value AllFinite(const Napi::CallbackInfo& info) {
  auto x = floatArg(argument(info, 0), "x");
  return Napi::Boolean::New(info.Env(), cpuBackend().allFinite(x.data, x.length));
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
        while (!d->live.empty()) (*d->live.begin())->Release();
      },
      data);
  Napi::Function layer = LayerWrap::Define(env);
  exports.Set("Layer", layer);
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
  exports.Set("cudaLoadAttempted", Napi::Function::New<translate<CudaLoadAttempted>>(env, "cudaLoadAttempted"));
  registerBenchExports(env, exports);
  return exports;
}

}  // namespace nysact

static Napi::Object InitNysAct(Napi::Env env, Napi::Object exports) { return nysact::Init(env, exports); }

NODE_API_MODULE(nysact, InitNysAct)
