#include "cuda_loader.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

namespace nysact {
namespace {

constexpr const char* kUnavailable = "ERR_NYSACT_BACKEND_UNAVAILABLE";
constexpr const char* kLibraryName = "nysact_cuda.so";
// What to install when the CUDA libraries are missing at run time (the versions CI builds against).
constexpr const char* kRuntimeFix =
    "the CUDA backend needs the NVIDIA driver (>= 580) and the CUDA 13 cuBLAS / cuSOLVER libraries at run "
    "time: `pip install nvidia-cublas==13.0.2.14 nvidia-cusolver==12.0.4.66 nvidia-cusparse==12.6.3.3 "
    "nvidia-nvjitlink==13.0.88` (the build records that site-packages directory as its RPATH), or put the "
    "directory holding libcublas.so.13 and libcusolver.so.12 on LD_LIBRARY_PATH";

std::mutex gMutex;
std::string gDirectory;
std::atomic<bool> gAttempted{false};
CudaBackendStatus gStatus;
CudaApi gApi{};
bool gApiReady = false;

std::string moduleDirectory() {
  if (!gDirectory.empty()) return gDirectory;
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&cudaBackendStatus), &info) != 0 && info.dli_fname != nullptr) {
    std::string path = info.dli_fname;
    const size_t slash = path.rfind('/');
    if (slash != std::string::npos) return path.substr(0, slash);
  }
  return ".";
}

bool fileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

template <typename T>
bool resolve(void* handle, const char* name, T& out, std::string& missing) {
  void* symbol = dlsym(handle, name);
  if (symbol == nullptr) {
    if (!missing.empty()) missing += ", ";
    missing += name;
    return false;
  }
  out = reinterpret_cast<T>(symbol);
  return true;
}

std::string describeDevice(const nysact_cuda_device_info& d) {
  std::ostringstream s;
  s.precision(4);
  s << d.name << " (compute capability " << d.major << "." << d.minor << ", " << d.multiprocessors
    << " multiprocessors, " << static_cast<double>(d.total_memory) / (1024.0 * 1024.0 * 1024.0) << " GiB; device "
    << d.device << " of " << d.device_count << ")";
  return s.str();
}

void load() {
  CudaBackendStatus& st = gStatus;
  const char* override = std::getenv("NYSACT_CUDA_LIBRARY");
  st.library = override != nullptr && *override != '\0' ? override : moduleDirectory() + "/" + kLibraryName;
  if (!fileExists(st.library)) {
    st.reason = "this build has no CUDA backend: " + st.library +
                " does not exist (it is built when CMake finds nvcc and the cuBLAS/cuSOLVER headers and "
                "libraries, e.g. the pip wheels nvidia-cublas and nvidia-cusolver; rebuild with `npm run build` "
                "after installing them, see README 'CUDA backend')";
    return;
  }
  (void)dlerror();
  void* handle = dlopen(st.library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* e = dlerror();
    const std::string text = e != nullptr ? e : "unknown dlopen error";
    st.reason = "could not load " + st.library + ": " + text;
    if (text.find("libcu") != std::string::npos || text.find("libnvJitLink") != std::string::npos) {
      st.reason += "; ";
      st.reason += kRuntimeFix;
    }
    return;
  }
  // Never dlclose()d: layers and the library's device contexts live until the process exits.
  CudaApi api{};
  std::string missing;
  resolve(handle, "nysact_cuda_abi_version", api.abiVersion, missing);
  resolve(handle, "nysact_cuda_probe", api.probe, missing);
  resolve(handle, "nysact_cuda_layer_create", api.layerCreate, missing);
  resolve(handle, "nysact_cuda_layer_destroy", api.layerDestroy, missing);
  resolve(handle, "nysact_cuda_sketch_dense", api.sketchDense, missing);
  resolve(handle, "nysact_cuda_sketch_conv", api.sketchConv, missing);
  resolve(handle, "nysact_cuda_has_pending", api.hasPending, missing);
  resolve(handle, "nysact_cuda_discard_pending", api.discardPending, missing);
  resolve(handle, "nysact_cuda_read_pending", api.readPending, missing);
  resolve(handle, "nysact_cuda_write_pending", api.writePending, missing);
  resolve(handle, "nysact_cuda_commit", api.commit, missing);
  resolve(handle, "nysact_cuda_nystrom_factors", api.nystromFactors, missing);
  resolve(handle, "nysact_cuda_nystrom_factors_batch", api.nystromFactorsBatch, missing);
  resolve(handle, "nysact_cuda_step", api.step, missing);
  resolve(handle, "nysact_cuda_reserve_step", api.reserveStep, missing);
  resolve(handle, "nysact_cuda_step_batch", api.stepBatch, missing);
  resolve(handle, "nysact_cuda_synchronize", api.synchronize, missing);
  resolve(handle, "nysact_cuda_alloc", api.alloc, missing);
  resolve(handle, "nysact_cuda_free", api.free, missing);
  resolve(handle, "nysact_cuda_copy", api.copy, missing);
  resolve(handle, "nysact_cuda_fill", api.fill, missing);
  resolve(handle, "nysact_cuda_all_finite", api.allFinite, missing);
  resolve(handle, "nysact_cuda_state_lengths", api.stateLengths, missing);
  resolve(handle, "nysact_cuda_export_state", api.exportState, missing);
  resolve(handle, "nysact_cuda_import_state", api.importState, missing);
  resolve(handle, "nysact_cuda_state_bytes", api.stateBytes, missing);
  resolve(handle, "nysact_cuda_bench_copy", api.benchCopy, missing);
  resolve(handle, "nysact_cuda_bench_sgemm", api.benchSgemm, missing);
  resolve(handle, "nysact_cuda_bench_fused_update", api.benchFusedUpdate, missing);
  resolve(handle, "nysact_cuda_bench_sketch", api.benchSketch, missing);
  if (!missing.empty()) {
    st.reason = st.library + " lacks the entry points " + missing + " (a stale or foreign build: rebuild it)";
    return;
  }
  const int32_t abi = api.abiVersion();
  if (abi != NYSACT_CUDA_ABI_VERSION) {
    std::ostringstream s;
    s << st.library << " implements CUDA backend interface " << abi << ", this addon needs "
      << NYSACT_CUDA_ABI_VERSION << " (a stale build: rebuild both with `npm run build`)";
    st.reason = s.str();
    return;
  }
  nysact_cuda_device_info info{};
  info.struct_size = sizeof(info);
  nysact_cuda_error error{};
  if (api.probe(&info, &error) != NYSACT_CUDA_OK) {
    st.reason = std::string("no usable CUDA device: ") + error.message;
    return;
  }
  st.device = describeDevice(info);
  st.available = true;
  gApi = api;
  gApiReady = true;
}

FactorReport toReport(const nysact_cuda_factor_report& r) {
  FactorReport report;
  report.status = static_cast<FactorStatus>(r.status);
  report.shift = r.shift;
  report.attempts = r.attempts;
  report.detail = r.detail;
  return report;
}

// The C ABI's scalars and operands of a step.
nysact_cuda_step_scalars toCudaScalars(const StepScalars& s) {
  nysact_cuda_step_scalars c{};
  c.struct_size = sizeof(c);
  c.lr = s.lr;
  c.momentum = s.momentum;
  c.weight_decay = s.weightDecay;
  c.nesterov = s.nesterov ? 1 : 0;
  c.decoupled_weight_decay = s.decoupledWeightDecay ? 1 : 0;
  return c;
}

nysact_cuda_step_operands toCudaOperands(const StepOperands& o) {
  nysact_cuda_step_operands ops{};
  ops.struct_size = sizeof(ops);
  ops.weight = o.weight;
  ops.bias = o.bias;
  ops.grad_weight = o.gradWeight;
  ops.grad_bias = o.gradBias;
  ops.weight_memory = static_cast<int32_t>(o.weightMemory);
  ops.bias_memory = static_cast<int32_t>(o.biasMemory);
  ops.grad_weight_memory = static_cast<int32_t>(o.gradWeightMemory);
  ops.grad_bias_memory = static_cast<int32_t>(o.gradBiasMemory);
  return ops;
}

class CudaLayerAdapter final : public Layer {
 public:
  CudaLayerAdapter(const CudaApi& api, const LayerSpec& spec) : api_(api), spec_(spec) {
    const nysact_cuda_layer_spec c = toCudaSpec(spec);
    nysact_cuda_error error{};
    checkCuda(api_.layerCreate(&c, &handle_, &error), error);
  }
  ~CudaLayerAdapter() override { api_.layerDestroy(handle_); }

  const LayerSpec& spec() const override { return spec_; }

  bool sketchCovarianceDense(const float* x, int64_t rows, const SketchInput& sketch,
                             MemoryKind xMemory = MemoryKind::Host) override {
    int32_t accepted = 0;
    nysact_cuda_error error{};
    checkCuda(api_.sketchDense(handle_, x, static_cast<int32_t>(xMemory), rows, sketch.matrix, sketch.indices, &accepted,
                               &error),
              error);
    return accepted != 0;
  }
  bool sketchCovarianceConv(const float* x, const ConvInput& input, const SketchInput& sketch,
                            MemoryKind xMemory = MemoryKind::Host) override {
    int32_t accepted = 0;
    nysact_cuda_error error{};
    checkCuda(api_.sketchConv(handle_, x, static_cast<int32_t>(xMemory), input.batch, input.height, input.width,
                              sketch.matrix, sketch.indices, &accepted, &error),
              error);
    return accepted != 0;
  }
  bool hasPendingStatistics() const override {
    int32_t out = 0;
    nysact_cuda_error error{};
    checkCuda(api_.hasPending(handle_, &out, &error), error);
    return out != 0;
  }
  void discardPendingStatistics() override {
    nysact_cuda_error error{};
    checkCuda(api_.discardPending(handle_, &error), error);
  }
  void readPendingCovariance(float* out) const override {
    nysact_cuda_error error{};
    checkCuda(api_.readPending(handle_, out, &error), error);
  }
  void writePendingCovariance(const float* in) override {
    nysact_cuda_error error{};
    checkCuda(api_.writePending(handle_, in, &error), error);
  }
  void commitStatistics(double statDecay) override {
    nysact_cuda_error error{};
    checkCuda(api_.commit(handle_, statDecay, &error), error);
  }
  FactorReport nystromFactors(double damping, NystromVariant variant) override {
    nysact_cuda_factor_report r{};
    r.struct_size = sizeof(r);
    nysact_cuda_error error{};
    checkCuda(api_.nystromFactors(handle_, damping, static_cast<int32_t>(variant), &r, &error), error);
    return toReport(r);
  }
  nysact_cuda_layer* handle() const { return handle_; }
  void preconditionedMomentumStep(const StepOperands& o, const StepScalars& s) override {
    const nysact_cuda_step_operands ops = toCudaOperands(o);
    const nysact_cuda_step_scalars c = toCudaScalars(s);
    nysact_cuda_error error{};
    checkCuda(api_.step(handle_, &ops, &c, &error), error);
  }
  void exportState(LayerState& out) const override {
    nysact_cuda_state c{};
    c.struct_size = sizeof(c);
    nysact_cuda_error error{};
    checkCuda(api_.stateLengths(handle_, &c, &error), error);
    out.ema.resize(static_cast<size_t>(c.ema_length));
    out.sketch.resize(static_cast<size_t>(c.sketch_length));
    out.indices.resize(static_cast<size_t>(c.indices_length));
    out.basis.resize(static_cast<size_t>(c.basis_length));
    out.coefficients.resize(static_cast<size_t>(c.coefficients_length));
    out.momentum.resize(static_cast<size_t>(c.momentum_length));
    out.biasMomentum.resize(static_cast<size_t>(c.bias_momentum_length));
    c.ema = out.ema.data();
    c.sketch = out.sketch.data();
    c.indices = out.indices.data();
    c.basis = out.basis.data();
    c.coefficients = out.coefficients.data();
    c.momentum = out.momentum.data();
    c.bias_momentum = out.biasMomentum.data();
    checkCuda(api_.exportState(handle_, &c, &error), error);
    out.inverseDamping = c.inverse_damping;
    out.decayProduct = c.decay_product;
    out.emaSteps = c.ema_steps;
    out.hasFactors = c.has_factors != 0;
    out.factorFallbacks = c.factor_fallbacks;
  }
  void importState(const LayerState& in) override {
    nysact_cuda_state c{};
    c.struct_size = sizeof(c);
    // The C ABI takes mutable pointers for symmetry with export; import only reads them.
    c.ema = const_cast<float*>(in.ema.data());
    c.ema_length = static_cast<int64_t>(in.ema.size());
    c.sketch = const_cast<float*>(in.sketch.data());
    c.sketch_length = static_cast<int64_t>(in.sketch.size());
    c.indices = const_cast<int32_t*>(in.indices.data());
    c.indices_length = static_cast<int64_t>(in.indices.size());
    c.basis = const_cast<float*>(in.basis.data());
    c.basis_length = static_cast<int64_t>(in.basis.size());
    c.coefficients = const_cast<float*>(in.coefficients.data());
    c.coefficients_length = static_cast<int64_t>(in.coefficients.size());
    c.momentum = const_cast<float*>(in.momentum.data());
    c.momentum_length = static_cast<int64_t>(in.momentum.size());
    c.bias_momentum = const_cast<float*>(in.biasMomentum.data());
    c.bias_momentum_length = static_cast<int64_t>(in.biasMomentum.size());
    c.inverse_damping = in.inverseDamping;
    c.decay_product = in.decayProduct;
    c.ema_steps = in.emaSteps;
    c.has_factors = in.hasFactors ? 1 : 0;
    c.factor_fallbacks = in.factorFallbacks;
    nysact_cuda_error error{};
    checkCuda(api_.importState(handle_, &c, &error), error);
  }
  size_t stateBytes() const override {
    uint64_t bytes = 0;
    nysact_cuda_error error{};
    checkCuda(api_.stateBytes(handle_, &bytes, &error), error);
    return static_cast<size_t>(bytes);
  }

 private:
  const CudaApi& api_;
  LayerSpec spec_;
  nysact_cuda_layer* handle_ = nullptr;
};

class CudaBackend final : public Backend {
  // The CUDA handles of a batch of layers; a layer of another backend is an error naming it.
  static std::vector<nysact_cuda_layer*> handlesOf(const std::vector<Layer*>& layers, const char* what) {
    std::vector<nysact_cuda_layer*> handles;
    handles.reserve(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      const auto* adapter = dynamic_cast<const CudaLayerAdapter*>(layers[i]);
      if (adapter == nullptr) {
        throw BatchLayerError(i, Error("ERR_NYSACT_INVALID_ARGUMENT", std::string(what) + ": a layer of another backend"));
      }
      handles.push_back(adapter->handle());
    }
    return handles;
  }
  // checkCuda for a batch call: a failure the library pinned on one layer names it (BatchLayerError).
  static void checkBatch(int32_t status, const nysact_cuda_error& error, int64_t failed, size_t count) {
    if (status != NYSACT_CUDA_OK && failed >= 0 && static_cast<size_t>(failed) < count) {
      try {
        checkCuda(status, error);
      } catch (const Error& e) {
        throw BatchLayerError(static_cast<size_t>(failed), e);
      }
    }
    checkCuda(status, error);
  }

 public:
  const char* name() const override { return "cuda"; }
  void reserveStep(const std::vector<Layer*>& layers, const std::vector<bool>& factors,
                   const std::vector<StepOperands>& operands, double damping, NystromVariant variant) override {
    const std::vector<nysact_cuda_layer*> handles = handlesOf(layers, "reserveStep");
    std::vector<int32_t> rebuild;
    std::vector<nysact_cuda_step_operands> ops;
    for (size_t i = 0; i < layers.size(); ++i) {
      rebuild.push_back(factors[i] ? 1 : 0);
      ops.push_back(toCudaOperands(operands[i]));
    }
    int64_t failed = -1;
    nysact_cuda_error error{};
    const int32_t status = cudaApi()->reserveStep(handles.data(), rebuild.data(), ops.data(),
                                                  static_cast<int64_t>(handles.size()), damping,
                                                  static_cast<int32_t>(variant), &failed, &error);
    checkBatch(status, error, failed, layers.size());
  }
  std::unique_ptr<Layer> createLayer(const LayerSpec& spec) override {
    return std::make_unique<CudaLayerAdapter>(*cudaApi(), spec);
  }
  void preconditionedMomentumStepBatch(const std::vector<Layer*>& layers, const std::vector<StepOperands>& operands,
                                       const StepScalars& scalars) override {
    const std::vector<nysact_cuda_layer*> handles = handlesOf(layers, "preconditionedMomentumStepBatch");
    std::vector<nysact_cuda_step_operands> ops;
    for (const StepOperands& o : operands) ops.push_back(toCudaOperands(o));
    const nysact_cuda_step_scalars c = toCudaScalars(scalars);
    int64_t failed = -1;
    nysact_cuda_error error{};
    const int32_t status = cudaApi()->stepBatch(handles.data(), ops.data(), static_cast<int64_t>(handles.size()), &c,
                                                &failed, &error);
    checkBatch(status, error, failed, layers.size());
  }
  std::vector<FactorReport> nystromFactorsBatch(const std::vector<Layer*>& layers, double damping,
                                                NystromVariant variant) override {
    const std::vector<nysact_cuda_layer*> handles = handlesOf(layers, "nystromFactorsBatch");
    std::vector<nysact_cuda_factor_report> c(layers.size());
    for (nysact_cuda_factor_report& r : c) r.struct_size = sizeof(r);
    int64_t failed = -1;
    nysact_cuda_error error{};
    const int32_t status = cudaApi()->nystromFactorsBatch(handles.data(), static_cast<int64_t>(handles.size()), damping,
                                                         static_cast<int32_t>(variant), c.data(), &failed, &error);
    checkBatch(status, error, failed, layers.size());
    std::vector<FactorReport> reports;
    reports.reserve(c.size());
    for (const nysact_cuda_factor_report& r : c) reports.push_back(toReport(r));
    return reports;
  }
  bool allFinite(const float* x, size_t n, MemoryKind kind) const override {
    if (kind != MemoryKind::Device) return cpuBackend().allFinite(x, n, MemoryKind::Host);
    int32_t finite = 0;
    nysact_cuda_error error{};
    checkCuda(cudaApi()->allFinite(x, static_cast<int32_t>(kind), n, &finite, &error), error);
    return finite != 0;
  }
  void synchronize() override {
    nysact_cuda_error error{};
    checkCuda(cudaApi()->synchronize(&error), error);
  }
  void* allocate(MemoryKind kind, size_t bytes) override {
    if (kind == MemoryKind::Host) return cpuBackend().allocate(kind, bytes);
    void* memory = nullptr;
    nysact_cuda_error error{};
    checkCuda(cudaApi()->alloc(static_cast<int32_t>(kind), bytes, &memory, &error), error);
    return memory;
  }
  void release(MemoryKind kind, void* memory) noexcept override {
    if (kind == MemoryKind::Host) {
      cpuBackend().release(kind, memory);
    } else if (const CudaApi* api = cudaApi()) {
      api->free(static_cast<int32_t>(kind), memory);
    }
  }
  void copy(void* dst, MemoryKind dstKind, const void* src, MemoryKind srcKind, size_t bytes) override {
    nysact_cuda_error error{};
    checkCuda(cudaApi()->copy(dst, static_cast<int32_t>(dstKind), src, static_cast<int32_t>(srcKind), bytes, &error),
              error);
  }
  void fill(float* dst, MemoryKind kind, float value, size_t count) override {
    nysact_cuda_error error{};
    checkCuda(cudaApi()->fill(dst, static_cast<int32_t>(kind), value, count, &error), error);
  }
};

}  // namespace

const CudaBackendStatus& cudaBackendStatus() {
  std::lock_guard<std::mutex> lock(gMutex);
  if (!gAttempted.exchange(true)) load();
  return gStatus;
}

Backend& cudaBackend() {
  const CudaBackendStatus& st = cudaBackendStatus();
  if (!st.available) throw Error(kUnavailable, "The CUDA backend is not available: " + st.reason);
  static CudaBackend backend;
  return backend;
}

bool cudaLoadAttempted() { return gAttempted.load(); }

void setCudaLibraryDirectory(const std::string& directory) {
  std::lock_guard<std::mutex> lock(gMutex);
  gDirectory = directory;
}

const CudaApi* cudaApi() {
  const CudaBackendStatus& st = cudaBackendStatus();
  return st.available && gApiReady ? &gApi : nullptr;
}

nysact_cuda_layer_spec toCudaSpec(const LayerSpec& s) {
  nysact_cuda_layer_spec c{};
  c.struct_size = sizeof(c);
  c.kind = static_cast<int32_t>(s.kind);
  c.sketch = static_cast<int32_t>(s.sketch);
  c.layout = static_cast<int32_t>(s.layout);
  c.padding = static_cast<int32_t>(s.padding);
  c.bias = s.bias ? 1 : 0;
  c.fan_in = s.fanIn;
  c.fan_out = s.fanOut;
  c.rank = s.rank;
  c.size = s.size;
  c.kernel_h = s.kernelH;
  c.kernel_w = s.kernelW;
  c.in_channels = s.inChannels;
  c.stride_h = s.strideH;
  c.stride_w = s.strideW;
  c.dilation_h = s.dilationH;
  c.dilation_w = s.dilationW;
  c.seed = s.seed;
  c.layer_key = s.layerKey;
  return c;
}

void checkCuda(int32_t status, const nysact_cuda_error& error) {
  if (status == NYSACT_CUDA_OK) return;
  const std::string code = error.code[0] != '\0' ? error.code : "ERR_NYSACT_NATIVE";
  throw Error(code, error.message[0] != '\0' ? error.message : "CUDA backend failure (no message)");
}

}  // namespace nysact
