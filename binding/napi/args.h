// Shared by the N-API glue files (addon.cpp, bench.cpp): coded JS errors, the translation of C++
// exceptions into them, and the checked readers of scalar arguments.  Messages name the argument
// and what was received.
#pragma once

#include <napi.h>

#include <cmath>
#include <new>
#include <sstream>
#include <string>

#include "../backend.h"

namespace nysact {
namespace napi_args {

inline constexpr const char* kInvalid = "ERR_NYSACT_INVALID_ARGUMENT";

inline Napi::Error withCode(Napi::Error error, const std::string& code) {
  error.Set("code", Napi::String::New(error.Env(), code));
  return error;
}
[[noreturn]] inline void throwType(Napi::Env env, const std::string& message) {
  throw withCode(Napi::TypeError::New(env, message), kInvalid);
}
[[noreturn]] inline void throwRange(Napi::Env env, const std::string& message) {
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

inline std::string describe(const Napi::Value& v) {
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

inline Napi::Value argument(const Napi::CallbackInfo& info, size_t i) {
  return i < info.Length() ? info[i] : info.Env().Undefined();
}

inline int64_t integerArg(const Napi::Value& v, const char* name, int64_t lo, int64_t hi) {
  if (!v.IsNumber()) throwType(v.Env(), std::string("Expected an integer for ") + name + " but received " + describe(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(std::floor(d) == d) || d < static_cast<double>(lo) || d > static_cast<double>(hi)) {
    std::ostringstream s;
    s << "Expected an integer in [" << lo << ", " << hi << "] for " << name << " but received " << describe(v);
    throwRange(v.Env(), s.str());
  }
  return static_cast<int64_t>(d);
}

inline double numberArg(const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) throwType(v.Env(), std::string("Expected a number for ") + name + " but received " + describe(v));
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) throwRange(v.Env(), std::string("Expected a finite number for ") + name + " but received " + describe(v));
  return d;
}

inline bool boolArg(const Napi::Value& v, const char* name) {
  if (!v.IsBoolean()) throwType(v.Env(), std::string("Expected a boolean for ") + name + " but received " + describe(v));
  return v.As<Napi::Boolean>().Value();
}

}  // namespace napi_args
}  // namespace nysact
