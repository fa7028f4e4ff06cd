// The host emulation's internal interface, shared by its runtime (runtime.cpp), its cuBLAS /
// cuSOLVER (blas.cpp) and the kernel launcher (device.h).
//
// What the emulation is for: running the CUDA backend's own code — the C ABI, the context, the
// layers, the batched inverse update's orchestration, and every kernel's index arithmetic — on a
// machine without a GPU, so that the tests and the C++ driver can check it against the CPU backend.
// It is not a GPU: it says nothing about speed, about races between GPU threads, or about how
// cuBLAS and cuSOLVER round.  It is built only for tests (CMake option NYSACT_CUDA_EMULATION) and
// is never shipped.
//
// Stream semantics are emulated strictly, so that a missing synchronisation shows: every
// stream-ordered operation (kernel launches, cudaMemcpyAsync / cudaMemsetAsync, cuBLAS and cuSOLVER
// calls) is queued and runs only when the host synchronises (cudaStreamSynchronize, cudaMemcpy,
// cudaFree, cudaEventSynchronize, a device-to-pageable copy).  A host that reads a result before
// synchronising reads what was there before.  Device pointers handed to a copy, a memset, cuBLAS
// or cuSOLVER must lie inside a live cudaMalloc allocation (page-locked cudaHostAlloc memory where
// CUDA allows it); anything else is a device fault: the emulation prints what was wrong, and, as on
// a GPU, the error is sticky (cudaErrorIllegalAddress from every later call).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <string>

namespace nysact_emu {

// Queues `op` on `stream` (all streams share one queue: running them in one order is one of the
// orders CUDA allows).  Ops run on the host thread that synchronises.
void enqueue(cudaStream_t stream, std::function<void()> op);
// Runs everything queued (what cudaStreamSynchronize does); returns the sticky error, if any.
cudaError_t drain();

enum class Memory { Device, PinnedHost, Other };
// What [p, p + bytes) is: inside one live cudaMalloc allocation, inside one cudaHostAlloc block,
// or neither (pageable host memory, or out of bounds of an allocation).
Memory classify(const void* p, size_t bytes);
// Whether [p, p + bytes) is memory a device operation may touch (device or page-locked host).
inline bool deviceAccessible(const void* p, size_t bytes) { return bytes == 0 || classify(p, bytes) != Memory::Other; }

// A device fault: prints `what` to stderr and makes cudaErrorIllegalAddress sticky.
void fault(const std::string& what);
// The sticky error (cudaSuccess while none).
cudaError_t sticky();

// Records a launch error for cudaGetLastError (non-sticky, as on CUDA).
void setLastError(cudaError_t error);

// Fault injection, for tests of the backend's failure paths (read from the environment at every
// call, so a process can change it between calls):
//   NYSACT_CUDA_EMU_FAULTS=item[,item...]  with items
//     malloc>BYTES    cudaMalloc of more than BYTES fails with cudaErrorMemoryAllocation
//     syev[:N]        symmetric eigensolves (syevd, each matrix of XsyevBatched) report info = 1
//     potrf[:N]       Cholesky factorisations (potrf, each matrix of potrfBatched) report info = 1
//     gesvd[:N]       SVDs report info = 1
//   Without :N every call fails; with it the next N calls (matrices) do, counted from when the
//   variable last changed.
// Whether the next `name` operation fails (consuming one of its count).
bool injectFault(const char* name);
// The malloc> limit in bytes (SIZE_MAX when none).
size_t mallocLimit();

}  // namespace nysact_emu
