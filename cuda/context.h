// One context per device (STYLE.md point 5): the stream every kernel and library call of the
// backend runs on, the cuBLAS and cuSOLVER handles bound to it, a growable scratch arena, and the
// lock that serialises the entry points.  Every status — CUDA runtime, cuBLAS, cuSOLVER, and
// cuSOLVER's device-side `info` — goes through one of the checks below and becomes a
// nysact::Error (never an abort); the C ABI layer (api.cpp) turns that into an error struct.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "../binding/backend.h"

namespace nysact {
namespace cuda {

inline constexpr const char* kNativeCode = "ERR_NYSACT_NATIVE";

[[noreturn]] void throwCuda(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void throwCublas(cublasStatus_t status, const char* call, const char* file, int line);
[[noreturn]] void throwCusolver(cusolverStatus_t status, const char* call, const char* file, int line);
const char* cusolverStatusName(cusolverStatus_t status);

#define NYSACT_CUDA_CHECK(call)                                                        \
  do {                                                                                 \
    const cudaError_t nysactStatus_ = (call);                                          \
    if (nysactStatus_ != cudaSuccess) ::nysact::cuda::throwCuda(nysactStatus_, #call, __FILE__, __LINE__); \
  } while (0)
#define NYSACT_CUBLAS_CHECK(call)                                                      \
  do {                                                                                 \
    const cublasStatus_t nysactStatus_ = (call);                                       \
    if (nysactStatus_ != CUBLAS_STATUS_SUCCESS) ::nysact::cuda::throwCublas(nysactStatus_, #call, __FILE__, __LINE__); \
  } while (0)
#define NYSACT_CUSOLVER_CHECK(call)                                                    \
  do {                                                                                 \
    const cusolverStatus_t nysactStatus_ = (call);                                     \
    if (nysactStatus_ != CUSOLVER_STATUS_SUCCESS) ::nysact::cuda::throwCusolver(nysactStatus_, #call, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: launch-configuration errors surface here, execution errors at the next
// synchronisation (Context::synchronize).
#define NYSACT_CUDA_CHECK_LAUNCH() NYSACT_CUDA_CHECK(cudaGetLastError())

// Owning device allocation (cudaMalloc; never managed memory).  Frees on destruction; a failing
// cudaFree in a destructor is ignored (the context is then already broken and reported elsewhere).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { allocate(bytes); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr, o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      ptr_ = o.ptr_, bytes_ = o.bytes_;
      o.ptr_ = nullptr, o.bytes_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  void allocate(size_t bytes);  // replaces the contents (not preserved)
  void release() noexcept;
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
  }
  bool empty() const { return ptr_ == nullptr; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Typed view of a device array with its element count.
template <typename T>
class DeviceArray {
 public:
  void resize(size_t n) {
    if (n != n_) {
      if (n == 0) {
        buffer_.release();
      } else {
        buffer_.allocate(n * sizeof(T));
      }
      n_ = n;
    }
  }
  void clear() { buffer_.release(), n_ = 0; }
  void swap(DeviceArray& o) noexcept {
    buffer_.swap(o.buffer_);
    std::swap(n_, o.n_);
  }
  T* data() const { return buffer_.as<T>(); }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  size_t bytes() const { return n_ * sizeof(T); }

 private:
  DeviceBuffer buffer_;
  size_t n_ = 0;
};

// Carves aligned pieces out of the context's scratch arena for the duration of one operation.
class ScratchPlan {
 public:
  template <typename T>
  size_t add(size_t count) {
    const size_t offset = total_;
    total_ += (count * sizeof(T) + 255) / 256 * 256;
    return offset;
  }
  size_t total() const { return total_; }

 private:
  size_t total_ = 0;
};

class Context {
 public:
  explicit Context(int device);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  cusolverDnHandle_t cusolver() const { return cusolver_; }
  std::mutex& mutex() { return mutex_; }
  const cudaDeviceProp& properties() const { return properties_; }

  // Makes this context's device current on the calling thread (each entry point calls it).
  void activate() const;
  // A scratch region of at least `bytes`, valid until the next call to scratch().  Growing it
  // synchronises the stream first, so no queued kernel still reads the old region.
  char* scratch(size_t bytes);
  // A second region, for inputs staged on the device while scratch() is in use (the conv input).
  char* staging(size_t bytes);
  size_t scratchBytes() const { return scratch_.bytes() + staging_.bytes(); }
  // Waits for the stream and turns any asynchronous execution error into a nysact::Error.
  void synchronize() const;
  // Device-side `info` of a cuSOLVER call (synchronises).
  int readInfo(const int* deviceInfo) const;
  // Device-side non-finite flag (int, 0 = all finite), reset with resetFlag before the check kernels.
  int* flag() const { return flag_.as<int>(); }
  void resetFlag() const;
  bool readFlag() const;

  // Patch / row tiles of the statistics step are at most this many bytes (NYSACT_CUDA_TILE_BYTES).
  size_t tileBytes() const { return tileBytes_; }

 private:
  int device_;
  cudaDeviceProp properties_{};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cusolverDnHandle_t cusolver_ = nullptr;
  DeviceBuffer scratch_;
  DeviceBuffer staging_;
  DeviceBuffer flag_;
  size_t tileBytes_;
  std::mutex mutex_;
};

// The context of the device layers are created on: NYSACT_CUDA_DEVICE (default 0).  Created on
// first use and never destroyed: destroying handles during static destruction can run after the
// CUDA runtime has unloaded.
Context& contextForDefaultDevice();

// Copies between host and device on the context's stream (pageable host memory).
void copyToDevice(const Context& ctx, void* device, const void* host, size_t bytes);
void copyToHost(const Context& ctx, void* host, const void* device, size_t bytes);

// Dimension guard for the 32-bit cuBLAS / cuSOLVER interfaces.
int toInt(int64_t value, const char* what);

}  // namespace cuda
}  // namespace nysact
