/* The C ABI of the CUDA backend library nysact_cuda.so (STYLE.md point 4).
 *
 * The addon links libstdc++ statically and so does this library: no C++ exception, std::string or
 * std::vector crosses the boundary.  Every entry point returns NYSACT_CUDA_OK or NYSACT_CUDA_FAILED
 * and, on failure, fills the caller's nysact_cuda_error (a stable nysact error code and a message).
 * Layers are opaque handles.  The host adapter (binding/cuda_loader.cpp) dlopen()s the library,
 * checks nysact_cuda_abi_version() == NYSACT_CUDA_ABI_VERSION and every struct_size, then wraps the
 * handles as nysact::Layer.
 *
 * Array arguments are in host memory, in the layouts of binding/backend.h, except where a memory kind
 * says otherwise (nysact_cuda_step_operands, nysact_cuda_sketch_dense / _conv, nysact_cuda_copy,
 * nysact_cuda_fill, nysact_cuda_all_finite): then NYSACT_CUDA_MEMORY_PINNED means page-locked host memory from
 * nysact_cuda_alloc, NYSACT_CUDA_MEMORY_DEVICE device memory from nysact_cuda_alloc (or any device
 * pointer of the library's device).
 * The entry points of one process are serialised by a per-device lock inside the library. */
#ifndef NYSACT_CUDA_API_H
#define NYSACT_CUDA_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define NYSACT_CUDA_ABI_VERSION 6

#if defined(NYSACT_CUDA_BUILDING_LIBRARY)
#define NYSACT_CUDA_EXPORT __attribute__((visibility("default")))
#else
#define NYSACT_CUDA_EXPORT
#endif

enum { NYSACT_CUDA_OK = 0, NYSACT_CUDA_FAILED = 1 };

/* Mirrors nysact::MemoryKind (binding/backend.h). */
enum { NYSACT_CUDA_MEMORY_HOST = 0, NYSACT_CUDA_MEMORY_PINNED = 1, NYSACT_CUDA_MEMORY_DEVICE = 2 };

typedef struct nysact_cuda_layer nysact_cuda_layer;

typedef struct nysact_cuda_error {
  char code[64];       /* e.g. "ERR_NYSACT_INVALID_ARGUMENT"; NUL-terminated */
  char message[1536];  /* NUL-terminated, truncated to fit */
} nysact_cuda_error;

/* The device the library would use, as found by nysact_cuda_probe. */
typedef struct nysact_cuda_device_info {
  uint32_t struct_size;
  int32_t device;
  int32_t device_count;
  int32_t major, minor;
  int32_t multiprocessors;
  int32_t runtime_version, driver_version;
  uint64_t total_memory;
  char name[256];
} nysact_cuda_device_info;

/* Mirrors nysact::LayerSpec (binding/backend.h) with fixed-width fields. */
typedef struct nysact_cuda_layer_spec {
  uint32_t struct_size;
  int32_t kind;     /* nysact::LayerKind */
  int32_t sketch;   /* nysact::SketchKind */
  int32_t layout;   /* nysact::WeightLayout */
  int32_t padding;  /* nysact::Padding */
  int32_t bias;     /* 0 or 1 */
  int64_t fan_in, fan_out, rank, size;
  int32_t kernel_h, kernel_w, in_channels;
  int32_t stride_h, stride_w, dilation_h, dilation_w;
  uint64_t seed;
  uint32_t layer_key;
} nysact_cuda_layer_spec;

typedef struct nysact_cuda_step_scalars {
  uint32_t struct_size;
  double lr, momentum, weight_decay;
  int32_t nesterov, decoupled_weight_decay;
} nysact_cuda_step_scalars;

/* The arrays of one fused step with their memory kinds; bias / grad_bias null iff the layer has no
 * bias.  Device operands are used in place (no copy); host and pinned operands are staged through
 * the context's scratch memory (pinned: truly asynchronous copies). */
typedef struct nysact_cuda_step_operands {
  uint32_t struct_size;
  float* weight;
  float* bias;
  const float* grad_weight;
  const float* grad_bias;
  int32_t weight_memory, bias_memory, grad_weight_memory, grad_bias_memory;
} nysact_cuda_step_operands;

typedef struct nysact_cuda_factor_report {
  uint32_t struct_size;
  int32_t status; /* nysact::FactorStatus */
  int32_t attempts;
  double shift;
  char detail[512];
} nysact_cuda_factor_report;

/* nysact::LayerState as caller-owned arrays.  nysact_cuda_state_lengths fills the *_length fields;
 * nysact_cuda_export_state then fills arrays of exactly those lengths. */
typedef struct nysact_cuda_state {
  uint32_t struct_size;
  float* ema;            int64_t ema_length;
  float* sketch;         int64_t sketch_length;
  int32_t* indices;      int64_t indices_length;
  float* basis;          int64_t basis_length;
  float* coefficients;   int64_t coefficients_length;
  float* momentum;       int64_t momentum_length;
  float* bias_momentum;  int64_t bias_momentum_length;
  double inverse_damping;
  double decay_product;
  int64_t ema_steps;
  int32_t has_factors;
  int64_t factor_fallbacks;
} nysact_cuda_state;

NYSACT_CUDA_EXPORT int32_t nysact_cuda_abi_version(void);

/* OK iff a usable device exists (compute capability >= 8.0); fills info either way, as far as known.
 * Never creates a context beyond the runtime's own initialisation. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_probe(nysact_cuda_device_info* info, nysact_cuda_error* error);

NYSACT_CUDA_EXPORT int32_t nysact_cuda_layer_create(const nysact_cuda_layer_spec* spec, nysact_cuda_layer** out,
                                                    nysact_cuda_error* error);
NYSACT_CUDA_EXPORT void nysact_cuda_layer_destroy(nysact_cuda_layer* layer);

/* x in memory of kind x_memory (NYSACT_CUDA_MEMORY_*): device activations are read in place (no
 * copy; the conv tile gather reads them directly), pinned ones are copied asynchronously on the
 * context stream, pageable ones through the runtime's staging.  sketch_matrix (p*r floats) or
 * sketch_indices (r ints) or both null (Philox); these two are host memory.  *accepted = 0 when the
 * activations hold a non-finite value (nothing stored; an earlier pending result stays). */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_sketch_dense(nysact_cuda_layer* layer, const float* x, int32_t x_memory,
                                                    int64_t rows, const float* sketch_matrix,
                                                    const int32_t* sketch_indices, int32_t* accepted,
                                                    nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_sketch_conv(nysact_cuda_layer* layer, const float* x, int32_t x_memory,
                                                   int64_t batch, int64_t height, int64_t width,
                                                   const float* sketch_matrix, const int32_t* sketch_indices,
                                                   int32_t* accepted, nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_has_pending(nysact_cuda_layer* layer, int32_t* out, nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_discard_pending(nysact_cuda_layer* layer, nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_read_pending(nysact_cuda_layer* layer, float* out, nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_write_pending(nysact_cuda_layer* layer, const float* in,
                                                     nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_commit(nysact_cuda_layer* layer, double stat_decay, nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_nystrom_factors(nysact_cuda_layer* layer, double damping, int32_t variant,
                                                       nysact_cuda_factor_report* report, nysact_cuda_error* error);
/* The factors of `count` layers of one device at once (an optimizer step's inverse update):
 * reports[i] is what nysact_cuda_nystrom_factors would report for layers[i] (each with its
 * struct_size set), and each layer ends as that call would leave it.  The r x r problems of
 * layers of equal rank are batched (cuda/nystrom.cu); NYSACT_CUDA_FACTORS=per-layer runs the
 * layers one by one instead.  On failure *failed_layer is the index of the layer it belongs to, or
 * -1 when it belongs to none. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_nystrom_factors_batch(nysact_cuda_layer* const* layers, int64_t count,
                                                             double damping, int32_t variant,
                                                             nysact_cuda_factor_report* reports, int64_t* failed_layer,
                                                             nysact_cuda_error* error);
/* Before an optimizer step over `count` layers of one device changes anything (ABI 5): allocates
 * every piece of device memory the step's commits, its inverse update (layers with factors[i] != 0,
 * batched as nysact_cuda_nystrom_factors_batch would run it, or per layer) and its fused steps
 * with operands[i]'s memory kinds (only the kinds are read) will use, so that a step short of
 * device memory fails here with nothing changed.  Changes no optimizer state.  On failure
 * *failed_layer is the index of the layer it belongs to, or -1. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_reserve_step(nysact_cuda_layer* const* layers, const int32_t* factors,
                                                    const nysact_cuda_step_operands* operands, int64_t count,
                                                    double damping, int32_t variant, int64_t* failed_layer,
                                                    nysact_cuda_error* error);
/* Enqueues the fused step on the context's stream and returns: the results in the operands (and
 * errors of the kernels' execution) are there after nysact_cuda_synchronize.  Pageable host
 * operands are read before it returns (the CUDA runtime stages them); writing them back is
 * complete on return (device-to-pageable copies are synchronous). */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_step(nysact_cuda_layer* layer, const nysact_cuda_step_operands* operands,
                                            const nysact_cuda_step_scalars* scalars, nysact_cuda_error* error);
/* nysact_cuda_step for `count` layers of one device (ABI 6), with the same results bit for bit:
 * layers whose operands all live on the device share fused-kernel launches, the rest step one by
 * one (NYSACT_CUDA_STEP=per-layer: all one by one).  On failure *failed_layer is the index of the
 * layer it belongs to, or -1; layers before it may have been updated (as when a caller's loop
 * over nysact_cuda_step stops part-way). */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_step_batch(nysact_cuda_layer* const* layers,
                                                  const nysact_cuda_step_operands* operands, int64_t count,
                                                  const nysact_cuda_step_scalars* scalars, int64_t* failed_layer,
                                                  nysact_cuda_error* error);
/* Waits for everything queued on the default device's context stream. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_synchronize(nysact_cuda_error* error);

/* Caller memory on the default device's context: NYSACT_CUDA_MEMORY_PINNED (cudaHostAlloc,
 * page-locked host memory) or NYSACT_CUDA_MEMORY_DEVICE (cudaMalloc).  bytes > 0. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_alloc(int32_t memory, uint64_t bytes, void** out, nysact_cuda_error* error);
/* Never fails; null is ignored.  memory as given to nysact_cuda_alloc. */
NYSACT_CUDA_EXPORT void nysact_cuda_free(int32_t memory, void* pointer);
/* Synchronous copy (cudaMemcpyAsync on the context stream, then a synchronisation). */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_copy(void* dst, int32_t dst_memory, const void* src, int32_t src_memory,
                                            uint64_t bytes, nysact_cuda_error* error);
/* Synchronous fill of `count` floats with `value`. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_fill(float* dst, int32_t memory, float value, uint64_t count,
                                            nysact_cuda_error* error);
/* *all_finite = 1 iff x[0..count) holds no NaN or infinity (synchronous). */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_all_finite(const float* x, int32_t memory, uint64_t count,
                                                  int32_t* all_finite, nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_state_lengths(nysact_cuda_layer* layer, nysact_cuda_state* state,
                                                     nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_export_state(nysact_cuda_layer* layer, nysact_cuda_state* state,
                                                    nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_import_state(nysact_cuda_layer* layer, const nysact_cuda_state* state,
                                                    nysact_cuda_error* error);
/* Bytes held by the layer: device memory plus host-side copies. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_state_bytes(nysact_cuda_layer* layer, uint64_t* bytes,
                                                   nysact_cuda_error* error);

/* Benchmark hooks for bench/driver.cpp: time (device events, milliseconds, median of `repeats`)
 * of a device-to-device copy of `bytes`, an SGEMM m x n x k, and the fused update of a layer whose
 * weights, gradients and factors are already resident (random data, `weight_elements` p*q). */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_bench_copy(uint64_t bytes, int32_t repeats, double* milliseconds,
                                                  nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_bench_sgemm(int64_t m, int64_t n, int64_t k, int32_t repeats,
                                                   double* milliseconds, nysact_cuda_error* error);
NYSACT_CUDA_EXPORT int32_t nysact_cuda_bench_fused_update(int64_t p, int64_t q, int64_t r, int32_t layout,
                                                          int32_t repeats, double* milliseconds,
                                                          nysact_cuda_error* error);
/* The device-side part of a statistics step on resident random activations (dense rows x p or conv
 * input batch x height x width x inChannels), excluding the host-to-device copy. */
NYSACT_CUDA_EXPORT int32_t nysact_cuda_bench_sketch(const nysact_cuda_layer_spec* spec, int64_t batch, int64_t height,
                                                    int64_t width, int32_t repeats, double* milliseconds,
                                                    nysact_cuda_error* error);

#ifdef __cplusplus
}
#endif

#endif /* NYSACT_CUDA_API_H */
