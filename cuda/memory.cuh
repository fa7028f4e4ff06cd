// Caller memory (JS host buffers and tensors, cuda/nysact_cuda_api.h nysact_cuda_alloc): page-locked
// host or device allocations of the context's device, synchronous copies between any two kinds, and
// the one kernel this needs (a float fill; cudaMemset only writes bytes).
#pragma once

#include <cstdint>

#include "context.h"

namespace nysact {
namespace cuda {

// kind is MemoryKind::PinnedHost (cudaHostAlloc) or MemoryKind::Device (cudaMalloc); bytes > 0.
void* allocateCallerMemory(const Context& ctx, MemoryKind kind, size_t bytes);
void releaseCallerMemory(MemoryKind kind, void* memory) noexcept;

// cudaMemcpyAsync (cudaMemcpyDefault: unified addressing tells the direction) on the context's
// stream, then a synchronisation.
void copyCallerMemory(const Context& ctx, void* dst, const void* src, size_t bytes);

// dst[0..n) = value on the device, then a synchronisation (host kinds are filled by the caller).
void fillDevice(const Context& ctx, float* dst, int64_t n, float value);

}  // namespace cuda
}  // namespace nysact
