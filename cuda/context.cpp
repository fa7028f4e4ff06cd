#include "context.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>

namespace nysact {
namespace cuda {
namespace {

std::string where(const char* call, const char* file, int line) {
  std::ostringstream s;
  const char* base = file;
  for (const char* c = file; *c; ++c)
    if (*c == '/') base = c + 1;
  s << call << " (" << base << ":" << line << ")";
  return s.str();
}

size_t tileBytesFromEnvironment() {
  // 64 MiB: several times larger than a good GEMM tile needs, small beside any GPU's memory.
  size_t bytes = size_t{64} << 20;
  if (const char* v = std::getenv("NYSACT_CUDA_TILE_BYTES")) {
    const long long parsed = std::atoll(v);
    if (parsed >= 4096) bytes = static_cast<size_t>(parsed);  // small values: tests of the tile loop
  }
  return bytes;
}

}  // namespace

void throwCuda(cudaError_t status, const char* call, const char* file, int line) {
  std::ostringstream s;
  s << "CUDA error in " << where(call, file, line) << ": " << cudaGetErrorString(status) << " ("
    << cudaGetErrorName(status) << ")";
  if (status == cudaErrorMemoryAllocation) s << "; the GPU is out of memory";
  // Clear a non-sticky error so later calls are not blamed for it.
  (void)cudaGetLastError();
  throw Error(kNativeCode, s.str());
}

void throwCublas(cublasStatus_t status, const char* call, const char* file, int line) {
  std::ostringstream s;
  s << "cuBLAS error in " << where(call, file, line) << ": " << cublasGetStatusName(status) << " ("
    << cublasGetStatusString(status) << ")";
  throw Error(kNativeCode, s.str());
}

const char* cusolverStatusName(cusolverStatus_t status) {
  switch (status) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    case CUSOLVER_STATUS_INVALID_WORKSPACE: return "CUSOLVER_STATUS_INVALID_WORKSPACE";
    default: return "CUSOLVER_STATUS_(other)";
  }
}

void throwCusolver(cusolverStatus_t status, const char* call, const char* file, int line) {
  std::ostringstream s;
  s << "cuSOLVER error in " << where(call, file, line) << ": " << cusolverStatusName(status) << " ("
    << static_cast<int>(status) << ")";
  throw Error(kNativeCode, s.str());
}

void DeviceBuffer::allocate(size_t bytes) {
  release();
  if (bytes == 0) return;
  const cudaError_t status = cudaMalloc(&ptr_, bytes);
  if (status != cudaSuccess) {
    ptr_ = nullptr;
    (void)cudaGetLastError();
    std::ostringstream s;
    s << "CUDA could not allocate " << bytes << " bytes of device memory: " << cudaGetErrorString(status);
    throw Error(kNativeCode, s.str());
  }
  bytes_ = bytes;
}

void DeviceBuffer::release() noexcept {
  if (ptr_ != nullptr) (void)cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

Context::Context(int device) : device_(device), tileBytes_(tileBytesFromEnvironment()) {
  NYSACT_CUDA_CHECK(cudaSetDevice(device_));
  NYSACT_CUDA_CHECK(cudaGetDeviceProperties(&properties_, device_));
  NYSACT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  try {
    NYSACT_CUBLAS_CHECK(cublasCreate(&cublas_));
    NYSACT_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    // Plain fp32 products (no TF32): the sketch must match the CPU backend to float rounding.
    NYSACT_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    NYSACT_CUBLAS_CHECK(cublasSetPointerMode(cublas_, CUBLAS_POINTER_MODE_HOST));
    NYSACT_CUSOLVER_CHECK(cusolverDnCreate(&cusolver_));
    NYSACT_CUSOLVER_CHECK(cusolverDnSetStream(cusolver_, stream_));
    flag_.allocate(256);
  } catch (...) {
    if (cusolver_ != nullptr) (void)cusolverDnDestroy(cusolver_);
    if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
    (void)cudaStreamDestroy(stream_);
    throw;
  }
}

Context::~Context() {
  (void)cudaSetDevice(device_);
  (void)cudaStreamSynchronize(stream_);
  scratch_.release();
  staging_.release();
  flag_.release();
  if (cusolver_ != nullptr) (void)cusolverDnDestroy(cusolver_);
  if (cublas_ != nullptr) (void)cublasDestroy(cublas_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

void Context::activate() const { NYSACT_CUDA_CHECK(cudaSetDevice(device_)); }

namespace {

char* grow(const Context& ctx, DeviceBuffer& buffer, size_t bytes) {
  if (bytes > buffer.bytes()) {
    ctx.synchronize();
    const size_t grown = std::max(bytes, buffer.bytes() + buffer.bytes() / 2);
    buffer.release();
    try {
      buffer.allocate(grown);
    } catch (const Error&) {
      buffer.allocate(bytes);
    }
  }
  return buffer.as<char>();
}

}  // namespace

char* Context::scratch(size_t bytes) { return grow(*this, scratch_, bytes); }
char* Context::staging(size_t bytes) { return grow(*this, staging_, bytes); }

void Context::synchronize() const { NYSACT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

int Context::readInfo(const int* deviceInfo) const {
  int info = 0;
  NYSACT_CUDA_CHECK(cudaMemcpyAsync(&info, deviceInfo, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return info;
}

void Context::resetFlag() const { NYSACT_CUDA_CHECK(cudaMemsetAsync(flag_.as<int>(), 0, sizeof(int), stream_)); }

bool Context::readFlag() const {
  int value = 0;
  NYSACT_CUDA_CHECK(cudaMemcpyAsync(&value, flag_.as<int>(), sizeof(int), cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return value != 0;
}

Context& contextForDefaultDevice() {
  static std::mutex registryMutex;
  static std::map<int, Context*>* registry = new std::map<int, Context*>();  // never destroyed
  int device = 0;
  if (const char* v = std::getenv("NYSACT_CUDA_DEVICE")) device = std::atoi(v);
  std::lock_guard<std::mutex> lock(registryMutex);
  auto it = registry->find(device);
  if (it != registry->end()) return *it->second;
  int count = 0;
  NYSACT_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (device < 0 || device >= count) {
    std::ostringstream s;
    s << "NYSACT_CUDA_DEVICE=" << device << " but " << count << " CUDA device(s) are present";
    throw Error("ERR_NYSACT_BACKEND_UNAVAILABLE", s.str());
  }
  auto* ctx = new Context(device);
  registry->emplace(device, ctx);
  return *ctx;
}

void copyToDevice(const Context& ctx, void* device, const void* host, size_t bytes) {
  if (bytes == 0) return;
  NYSACT_CUDA_CHECK(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, ctx.stream()));
}

void copyToHost(const Context& ctx, void* host, const void* device, size_t bytes) {
  if (bytes == 0) return;
  NYSACT_CUDA_CHECK(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, ctx.stream()));
}

int toInt(int64_t value, const char* what) {
  if (value < 0 || value > INT_MAX) {
    std::ostringstream s;
    s << what << " = " << value << " exceeds the 32-bit dimensions of the CUDA backend's cuBLAS/cuSOLVER calls";
    throw Error("ERR_NYSACT_INVALID_ARGUMENT", s.str());
  }
  return static_cast<int>(value);
}

}  // namespace cuda
}  // namespace nysact
