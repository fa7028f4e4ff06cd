#include <algorithm>
#include <vector>

#include "bench.cuh"
#include "launch.cuh"
#include "update.cuh"

namespace nysact {
namespace cuda {
namespace {

// Uniform in [-scale, scale) from a 64-bit mix of (seed, index): any fixed random data will do.
__global__ void fillRandomKernel(float* x, int64_t n, uint64_t seed, float scale) {
  NYSACT_GRID_STRIDE(i, n) {
    uint64_t z = seed + static_cast<uint64_t>(i) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = scale * (static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

void fillRandom(const Context& ctx, float* x, int64_t n, uint64_t seed, float scale = 1.0f) {
  NYSACT_LAUNCH(fillRandomKernel, blocksFor(n), kThreads, ctx.stream())(x, n, seed, scale);
  NYSACT_CUDA_CHECK_LAUNCH();
}

class Events {
 public:
  Events() {
    NYSACT_CUDA_CHECK(cudaEventCreate(&start_));
    const cudaError_t status = cudaEventCreate(&stop_);
    if (status != cudaSuccess) {
      (void)cudaEventDestroy(start_);
      NYSACT_CUDA_CHECK(status);
    }
  }
  ~Events() {
    (void)cudaEventDestroy(start_);
    (void)cudaEventDestroy(stop_);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;

  // Median of `repeats` timed runs of f after one untimed run.
  template <typename F>
  double median(const Context& ctx, int repeats, F&& f) {
    f();
    ctx.synchronize();
    std::vector<double> times;
    for (int i = 0; i < std::max(1, repeats); ++i) {
      NYSACT_CUDA_CHECK(cudaEventRecord(start_, ctx.stream()));
      f();
      NYSACT_CUDA_CHECK(cudaEventRecord(stop_, ctx.stream()));
      NYSACT_CUDA_CHECK(cudaEventSynchronize(stop_));
      float ms = 0.0f;
      NYSACT_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
      times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
  }

 private:
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
};

}  // namespace

double benchCopy(Context& ctx, uint64_t bytes, int repeats) {
  DeviceBuffer a(bytes), b(bytes);
  fillRandom(ctx, a.as<float>(), static_cast<int64_t>(bytes / sizeof(float)), 1);
  Events events;
  return events.median(ctx, repeats, [&] {
    NYSACT_CUDA_CHECK(cudaMemcpyAsync(b.as<char>(), a.as<char>(), bytes, cudaMemcpyDeviceToDevice, ctx.stream()));
  });
}

double benchSgemm(Context& ctx, int64_t m, int64_t n, int64_t k, int repeats) {
  DeviceBuffer a(static_cast<size_t>(m * k) * sizeof(float)), b(static_cast<size_t>(k * n) * sizeof(float)),
      c(static_cast<size_t>(m * n) * sizeof(float));
  fillRandom(ctx, a.as<float>(), m * k, 2);
  fillRandom(ctx, b.as<float>(), k * n, 3);
  const int mi = toInt(m, "m"), ni = toInt(n, "n"), ki = toInt(k, "k");
  const float one = 1.0f, zero = 0.0f;
  Events events;
  return events.median(ctx, repeats, [&] {
    NYSACT_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, mi, ni, ki, &one, a.as<float>(), mi,
                                    b.as<float>(), ki, &zero, c.as<float>(), mi));
  });
}

double benchFusedUpdate(Context& ctx, int64_t p, int64_t q, int64_t r, WeightLayout layout, int repeats) {
  LayerSpec spec;
  spec.kind = LayerKind::Dense;
  spec.fanIn = p;
  spec.fanOut = q;
  spec.rank = r;
  spec.layout = layout;
  const int64_t k = spec.r();
  DeviceBuffer basis(static_cast<size_t>(p * k) * sizeof(float)), coefficients(static_cast<size_t>(k) * sizeof(float)),
      weight(static_cast<size_t>(p * q) * sizeof(float)), grad(static_cast<size_t>(p * q) * sizeof(float)),
      momentum(static_cast<size_t>(p * q) * sizeof(float)), m(static_cast<size_t>(q * k) * sizeof(float));
  fillRandom(ctx, basis.as<float>(), p * k, 4, 0.1f);
  fillRandom(ctx, coefficients.as<float>(), k, 5, 0.5f);
  fillRandom(ctx, weight.as<float>(), p * q, 6);
  fillRandom(ctx, grad.as<float>(), p * q, 7, 1e-3f);
  fillRandom(ctx, momentum.as<float>(), p * q, 8, 1e-3f);
  DeviceStep d;
  d.basis = basis.as<float>();
  d.coefficients = coefficients.as<float>();
  d.k = k;
  d.inverseDamping = 1.0f;
  d.weight = weight.as<float>();
  d.gradWeight = grad.as<float>();
  d.momentum = momentum.as<float>();
  d.scratchM = m.as<float>();
  StepScalars s;
  s.lr = 1e-3;
  s.momentum = 0.9;
  s.weightDecay = 5e-4;
  Events events;
  return events.median(ctx, repeats, [&] { preconditionedMomentumStep(ctx, spec, d, s); });
}

double benchSketch(Context& ctx, CudaLayer& layer, int64_t batch, int64_t height, int64_t width, int repeats) {
  const LayerSpec& spec = layer.spec();
  const bool conv = spec.kind == LayerKind::Conv2d;
  const int64_t n = conv ? batch * height * width * spec.inChannels : batch * spec.fanIn;
  DeviceBuffer x(static_cast<size_t>(n) * sizeof(float));
  fillRandom(ctx, x.as<float>(), n, 9);
  ConvInput in;
  in.batch = batch;
  in.height = height;
  in.width = width;
  Events events;
  return events.median(ctx, repeats, [&] {
    if (!layer.sketchResident(x.as<float>(), batch, conv ? &in : nullptr)) {
      throw Error(kNativeCode, "benchmark activations were reported non-finite");
    }
  });
}

}  // namespace cuda
}  // namespace nysact
