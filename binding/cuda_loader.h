// Host-side adapter of the CUDA backend (STYLE.md point 4, ggml-style loadable backend).
//
// nysact_cuda.so is dlopen()ed on demand — the first time something asks for the CUDA backend or
// its availability, never when only the CPU is used — from NYSACT_CUDA_LIBRARY if set, else from
// the directory of the module this code is linked into (the .node addon, found with dladdr, or a
// directory set by the embedding program).  Its plain C ABI (cuda/nysact_cuda_api.h) is wrapped
// here as nysact::Backend / nysact::Layer; failures become nysact::Error with the library's stable
// codes.  A missing library, missing CUDA libraries, no driver or no device only make the backend
// unavailable, with a reason that says what is missing and how to fix it.
#pragma once

#include <string>

#include "../cuda/nysact_cuda_api.h"
#include "backend.h"

namespace nysact {

struct CudaBackendStatus {
  bool available = false;
  std::string reason;   // why not, and the fix; empty when available
  std::string library;  // the path loaded or tried
  std::string device;   // e.g. "NVIDIA H200 (compute capability 9.0, 132 multiprocessors, 139.8 GiB)"
};

// Loads and probes the library on first call (thread-safe); the outcome is kept for the process.
const CudaBackendStatus& cudaBackendStatus();

// The CUDA backend; throws Error("ERR_NYSACT_BACKEND_UNAVAILABLE", reason) when unavailable.
Backend& cudaBackend();

// Whether this process has tried to load the library (tests: the CPU path must never do it).
bool cudaLoadAttempted();

// The directory to look in instead of the module's own (call before the first use; a program such
// as bench/driver.cpp passes its executable's directory).
void setCudaLibraryDirectory(const std::string& directory);

// The C entry points, for the benchmarks; null unless the backend is available.
struct CudaApi {
  decltype(&nysact_cuda_abi_version) abiVersion;
  decltype(&nysact_cuda_probe) probe;
  decltype(&nysact_cuda_layer_create) layerCreate;
  decltype(&nysact_cuda_layer_destroy) layerDestroy;
  decltype(&nysact_cuda_sketch_dense) sketchDense;
  decltype(&nysact_cuda_sketch_conv) sketchConv;
  decltype(&nysact_cuda_has_pending) hasPending;
  decltype(&nysact_cuda_discard_pending) discardPending;
  decltype(&nysact_cuda_read_pending) readPending;
  decltype(&nysact_cuda_write_pending) writePending;
  decltype(&nysact_cuda_commit) commit;
  decltype(&nysact_cuda_nystrom_factors) nystromFactors;
  decltype(&nysact_cuda_nystrom_factors_batch) nystromFactorsBatch;
  decltype(&nysact_cuda_step) step;
  decltype(&nysact_cuda_reserve_step) reserveStep;
  decltype(&nysact_cuda_step_batch) stepBatch;
  decltype(&nysact_cuda_synchronize) synchronize;
  decltype(&nysact_cuda_alloc) alloc;
  decltype(&nysact_cuda_free) free;
  decltype(&nysact_cuda_copy) copy;
  decltype(&nysact_cuda_fill) fill;
  decltype(&nysact_cuda_all_finite) allFinite;
  decltype(&nysact_cuda_state_lengths) stateLengths;
  decltype(&nysact_cuda_export_state) exportState;
  decltype(&nysact_cuda_import_state) importState;
  decltype(&nysact_cuda_state_bytes) stateBytes;
  decltype(&nysact_cuda_bench_copy) benchCopy;
  decltype(&nysact_cuda_bench_sgemm) benchSgemm;
  decltype(&nysact_cuda_bench_fused_update) benchFusedUpdate;
  decltype(&nysact_cuda_bench_sketch) benchSketch;
};
const CudaApi* cudaApi();

// The C spec of a LayerSpec (also used by the benchmarks).
nysact_cuda_layer_spec toCudaSpec(const LayerSpec& spec);

// Throws Error(error.code, error.message) when status is not NYSACT_CUDA_OK.
void checkCuda(int32_t status, const nysact_cuda_error& error);

}  // namespace nysact
