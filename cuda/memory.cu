#include "launch.cuh"
#include "memory.cuh"

#include <sstream>

namespace nysact {
namespace cuda {
namespace {

__global__ void fillKernel(float* __restrict__ dst, int64_t n, float value) {
  NYSACT_GRID_STRIDE(i, n) { dst[i] = value; }
}

}  // namespace

void* allocateCallerMemory(const Context& ctx, MemoryKind kind, size_t bytes) {
  if (bytes == 0) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "Cannot allocate 0 bytes");
  void* memory = nullptr;
  cudaError_t status;
  const char* what;
  if (kind == MemoryKind::PinnedHost) {
    // Portable: usable from every context; not write-combined (JS reads it back).
    status = cudaHostAlloc(&memory, bytes, cudaHostAllocPortable);
    what = "page-locked host";
  } else if (kind == MemoryKind::Device) {
    status = cudaMalloc(&memory, bytes);
    what = "device";
  } else {
    throw Error("ERR_NYSACT_INVALID_ARGUMENT", "The CUDA backend allocates only page-locked host or device memory");
  }
  (void)ctx;
  if (status != cudaSuccess) {
    (void)cudaGetLastError();
    std::ostringstream s;
    s << "CUDA could not allocate " << bytes << " bytes of " << what << " memory: " << cudaGetErrorString(status)
      << " (" << cudaGetErrorName(status) << ")";
    throw Error(kNativeCode, s.str());
  }
  return memory;
}

void releaseCallerMemory(MemoryKind kind, void* memory) noexcept {
  if (memory == nullptr) return;
  if (kind == MemoryKind::PinnedHost) {
    (void)cudaFreeHost(memory);
  } else if (kind == MemoryKind::Device) {
    (void)cudaFree(memory);
  }
  (void)cudaGetLastError();
}

void copyCallerMemory(const Context& ctx, void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  NYSACT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, ctx.stream()));
  ctx.synchronize();
}

void fillDevice(const Context& ctx, float* dst, int64_t n, float value) {
  if (n <= 0) return;
  NYSACT_LAUNCH(fillKernel, blocksFor(n), kThreads, ctx.stream())(dst, n, value);
  NYSACT_CUDA_CHECK_LAUNCH();
  ctx.synchronize();
}

}  // namespace cuda
}  // namespace nysact
