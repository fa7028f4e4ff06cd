// N-API glue for the benchmark exports (machine probes and dense reference kernels of
// binding/cpu/bench_kernels.h), registered by addon.cpp.  Same rules as addon.cpp: every argument
// checked here, every C++ exception turned into a JS error with a stable `code`, typed arrays used
// in place.
#include <napi.h>

#include <cmath>
#include <new>
#include <sstream>
#include <string>

#include "../backend.h"
#include "../cpu/bench_kernels.h"
#include "args.h"

namespace nysact {
namespace {

using namespace napi_args;  // binding/napi/args.h

int64_t product(Napi::Env env, const std::string& name, std::initializer_list<int64_t> factors) {
  int64_t total = 1;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(total, f, &total) || total > (int64_t{1} << 40)) throwRange(env, name + " is too large");
  }
  return total;
}

// A Float32Array of exactly `length` elements (length 0 allowed), used in place.
float* floatsArg(const Napi::Value& v, const std::string& name, int64_t length) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throwType(v.Env(), "Expected a Float32Array for " + name);
  }
  auto array = v.As<Napi::Float32Array>();
  if (static_cast<int64_t>(array.ElementLength()) != length) {
    std::ostringstream s;
    s << "Expected " << name << " to have length " << length << " but received length " << array.ElementLength();
    throwRange(v.Env(), s.str());
  }
  if (length > 0 && array.Data() == nullptr) throwType(v.Env(), name + " is detached");
  return array.Data();
}

Napi::Float64Array toFloat64(Napi::Env env, const std::vector<double>& v) {
  auto out = Napi::Float64Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i];
  return out;
}

template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
Napi::Value translated(const Napi::CallbackInfo& info) {
  return translateErrors(info.Env(), [&] { return Fn(info); });
}

// probeSgemm(n, repeats) -> Float64Array of seconds per n x n x n product.
Napi::Value ProbeSgemm(const Napi::CallbackInfo& info) {
  const int64_t n = integerArg(argument(info, 0), "n", 16, 16384);
  const int repeats = static_cast<int>(integerArg(argument(info, 1), "repeats", 1, 1000));
  return toFloat64(info.Env(), cpu::probeSgemm(n, repeats));
}

// probeCopy(bytes, repeats) -> Float64Array of seconds per copy.
Napi::Value ProbeCopy(const Napi::CallbackInfo& info) {
  const int64_t bytes = integerArg(argument(info, 0), "bytes", int64_t{1} << 16, int64_t{1} << 34);
  const int repeats = static_cast<int>(integerArg(argument(info, 1), "repeats", 1, 1000));
  return toFloat64(info.Env(), cpu::probeCopy(static_cast<size_t>(bytes), repeats));
}

// referenceDenseSketch(x, rows, fanIn, bias, sketch, r, out)
Napi::Value ReferenceDenseSketch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = integerArg(argument(info, 1), "rows", 1, int64_t{1} << 31);
  const int64_t p0 = integerArg(argument(info, 2), "fanIn", 1, int64_t{1} << 31);
  const bool bias = boolArg(argument(info, 3), "bias");
  const int64_t r = integerArg(argument(info, 5), "r", 1, 1 << 16);
  const int64_t p = p0 + (bias ? 1 : 0);
  const float* x = floatsArg(argument(info, 0), "x", product(env, "rows * fanIn", {rows, p0}));
  const float* sketch = floatsArg(argument(info, 4), "sketch", product(env, "p * r", {p, r}));
  float* out = floatsArg(argument(info, 6), "out", p * r);
  product(env, "rows * p", {rows, p});
  cpu::referenceDenseSketch(x, rows, p0, bias, sketch, r, out);
  return env.Undefined();
}

// referenceIm2colSketch(x, conv, sketch, r, out); conv = {batch, height, width, kernelH, kernelW,
// inChannels, strideH, strideW, dilationH, dilationW, padding (0 valid, 1 same), bias}.
Napi::Value ReferenceIm2colSketch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Value cv = argument(info, 1);
  if (!cv.IsObject() || cv.IsArray() || cv.IsTypedArray()) throwType(env, "Expected an object for conv");
  const Napi::Object c = cv.As<Napi::Object>();
  auto field = [&](const char* name, int64_t lo, int64_t hi) {
    return integerArg(c.Get(name), (std::string("conv.") + name).c_str(), lo, hi);
  };
  ConvInput in;
  in.batch = field("batch", 1, int64_t{1} << 31);
  in.height = field("height", 1, 1 << 20);
  in.width = field("width", 1, 1 << 20);
  LayerSpec spec;
  spec.kind = LayerKind::Conv2d;
  spec.kernelH = static_cast<int32_t>(field("kernelH", 1, 1 << 12));
  spec.kernelW = static_cast<int32_t>(field("kernelW", 1, 1 << 12));
  spec.inChannels = static_cast<int32_t>(field("inChannels", 1, 1 << 24));
  spec.strideH = static_cast<int32_t>(field("strideH", 1, 1 << 12));
  spec.strideW = static_cast<int32_t>(field("strideW", 1, 1 << 12));
  spec.dilationH = static_cast<int32_t>(field("dilationH", 1, 1 << 12));
  spec.dilationW = static_cast<int32_t>(field("dilationW", 1, 1 << 12));
  spec.padding = static_cast<Padding>(field("padding", 0, 1));
  spec.bias = boolArg(c.Get("bias"), "conv.bias");
  spec.fanIn = product(env, "kernelH * kernelW * inChannels", {spec.kernelH, spec.kernelW, spec.inChannels});
  spec.fanOut = 1;
  spec.rank = integerArg(argument(info, 3), "r", 1, 1 << 16);
  validateLayerSpec(spec);
  const int64_t p = spec.p(), r = spec.rank;
  const ConvGeometry g = convGeometry(spec, in.height, in.width);
  if (g.outH < 1 || g.outW < 1) throwRange(env, "The conv input is smaller than the dilated kernel: no output positions");
  product(env, "patch matrix size", {in.batch, g.outH, g.outW, p});
  const float* x = floatsArg(argument(info, 0), "x", product(env, "batch * height * width * inChannels",
                                                        {in.batch, in.height, in.width, spec.inChannels}));
  const float* sketch = floatsArg(argument(info, 2), "sketch", product(env, "p * r", {p, r}));
  float* out = floatsArg(argument(info, 4), "out", p * r);
  cpu::referenceIm2colSketch(x, spec, in, sketch, r, out);
  return env.Undefined();
}

// referenceDensePreconditioner(basis, coefficients, p, k, inverseDamping, out)
Napi::Value ReferenceDensePreconditioner(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t p = integerArg(argument(info, 2), "p", 1, 1 << 20);
  const int64_t k = integerArg(argument(info, 3), "k", 1, p);
  const double inverseDamping = numberArg(argument(info, 4), "inverseDamping");
  const float* basis = floatsArg(argument(info, 0), "basis", product(env, "p * k", {p, k}));
  const float* coefficients = floatsArg(argument(info, 1), "coefficients", k);
  float* out = floatsArg(argument(info, 5), "out", product(env, "p * p", {p, p}));
  cpu::referenceDensePreconditioner(basis, coefficients, p, k, inverseDamping, out);
  return env.Undefined();
}

// referenceDenseStep(preconditioner, p, q, weight, grad, momentum, scalars = [lr, momentum, weightDecay])
Napi::Value ReferenceDenseStep(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t p = integerArg(argument(info, 1), "p", 1, 1 << 20);
  const int64_t q = integerArg(argument(info, 2), "q", 1, int64_t{1} << 31);
  const float* pm = floatsArg(argument(info, 0), "preconditioner", product(env, "p * p", {p, p}));
  const int64_t n = product(env, "p * q", {p, q});
  float* weight = floatsArg(argument(info, 3), "weight", n);
  const float* grad = floatsArg(argument(info, 4), "grad", n);
  float* momentum = floatsArg(argument(info, 5), "momentum", n);
  const Napi::Value sv = argument(info, 6);
  if (!sv.IsTypedArray() || sv.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      sv.As<Napi::Float64Array>().ElementLength() != 3) {
    throwType(env, "Expected a Float64Array of length 3 for scalars");
  }
  auto sc = sv.As<Napi::Float64Array>();
  StepScalars s;
  s.lr = sc[0];
  s.momentum = sc[1];
  s.weightDecay = sc[2];
  if (!std::isfinite(s.lr) || !std::isfinite(s.momentum) || !std::isfinite(s.weightDecay)) {
    throwRange(env, "scalars must be finite");
  }
  cpu::referenceDenseStep(pm, p, q, weight, grad, momentum, s);
  return env.Undefined();
}

}  // namespace

void registerBenchExports(Napi::Env env, Napi::Object exports) {
  exports.Set("probeSgemm", Napi::Function::New<translated<ProbeSgemm>>(env, "probeSgemm"));
  exports.Set("probeCopy", Napi::Function::New<translated<ProbeCopy>>(env, "probeCopy"));
  exports.Set("referenceDenseSketch", Napi::Function::New<translated<ReferenceDenseSketch>>(env, "referenceDenseSketch"));
  exports.Set("referenceIm2colSketch",
              Napi::Function::New<translated<ReferenceIm2colSketch>>(env, "referenceIm2colSketch"));
  exports.Set("referenceDensePreconditioner",
              Napi::Function::New<translated<ReferenceDensePreconditioner>>(env, "referenceDensePreconditioner"));
  exports.Set("referenceDenseStep", Napi::Function::New<translated<ReferenceDenseStep>>(env, "referenceDenseStep"));
}

}  // namespace nysact
