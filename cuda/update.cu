#include <cstdlib>

#include "launch.cuh"
#include "update.cuh"

namespace nysact {
namespace cuda {
namespace {

// binding/cpu/update.cpp UpdateScalars and applyUpdate, verbatim.
struct UpdateScalars {
  float lr, momentum, coupledDecay, shrink;
  int nesterov;
};

UpdateScalars updateScalars(const StepScalars& s) {
  UpdateScalars u;
  u.lr = static_cast<float>(s.lr);
  u.momentum = static_cast<float>(s.momentum);
  u.coupledDecay = static_cast<float>(s.decoupledWeightDecay ? 0.0 : s.weightDecay);
  u.shrink = static_cast<float>(s.decoupledWeightDecay ? 1.0 - s.lr * s.weightDecay : 1.0);
  u.nesterov = s.nesterov ? 1 : 0;
  return u;
}

// d = v + wd·θ; buf = μ·buf + d; θ ← θ − lr·(nesterov ? d + μ·buf : buf).
__device__ __forceinline__ void applyUpdate(const UpdateScalars& u, float v, float& theta, float& buf) {
  const float d = v + u.coupledDecay * theta;
  const float b = u.momentum * buf + d;
  buf = b;
  const float step = u.nesterov ? d + u.momentum * b : b;
  theta = u.shrink * theta - u.lr * step;
}

__global__ void momentumKernel(int64_t n, float* __restrict__ weight, const float* __restrict__ grad,
                               float* __restrict__ momentum, UpdateScalars u) {
  NYSACT_GRID_STRIDE(i, n) {
    float theta = weight[i], buf = momentum[i];
    applyUpdate(u, grad[i], theta, buf);
    weight[i] = theta;
    momentum[i] = buf;
  }
}

// Which of `count` consecutive ranges of work items holds `item`: the last i with first[i] <= item
// (first[0] == 0, ascending).
__device__ __forceinline__ int ownerOf(const int64_t* first, int count, int64_t item) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (first[mid] <= item) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Many plain parameters' momentum steps in one launch (a multi-tensor kernel: a model's norm scales
// and shifts are many small tensors, each a launch of its own otherwise).  Tensor i owns chunks
// [firstChunk[i], firstChunk[i+1]) of kMomentumChunk elements; each element gets momentumKernel's
// arithmetic, so the results are bit-identical to one launch per tensor.
constexpr int kMomentumTensors = 96;         // about 4 KB of parameters
constexpr int64_t kMomentumChunk = 4 * 256;  // elements per block iteration: 4 per thread
struct MomentumBatch {
  int32_t count;
  int64_t firstChunk[kMomentumTensors + 1];
  int64_t n[kMomentumTensors];
  float* weight[kMomentumTensors];
  const float* grad[kMomentumTensors];
  float* momentum[kMomentumTensors];
  UpdateScalars u;
};

// __grid_constant__ (here and below): the descriptors are read where the launch put them, with
// no per-thread copy of the parameter (one could be made for a parameter whose element is chosen at
// run time).
__global__ void momentumBatchKernel(__grid_constant__ const MomentumBatch batch) {
  const int64_t chunks = batch.firstChunk[batch.count];
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    const int lo = ownerOf(batch.firstChunk, batch.count, chunk);
    const int64_t begin = (chunk - batch.firstChunk[lo]) * kMomentumChunk;
    const int64_t end = begin + kMomentumChunk < batch.n[lo] ? begin + kMomentumChunk : batch.n[lo];
    float* __restrict__ weight = batch.weight[lo];
    const float* __restrict__ grad = batch.grad[lo];
    float* __restrict__ momentum = batch.momentum[lo];
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      float theta = weight[i], buf = momentum[i];
      applyUpdate(batch.u, grad[i], theta, buf);
      weight[i] = theta;
      momentum[i] = buf;
    }
  }
}

// The update grid is rowsA x colsB with colsB the contiguous direction of the weight in memory:
//   InOut (weight p0 x q):  a = i over p (U rows), b = j over q (M rows); bias = row a == p0.
//   OutIn (weight q x p0):  a = j over q (M rows), b = i over p (U rows); bias = column b == p0.
// Tile 64 (a) x 128 (b), 256 threads as 8 x 32: a warp covers 32 consecutive b (128-byte
// transactions); each thread holds 8 x 4 accumulators.  The k dimension is staged through shared
// memory in chunks of kChunk, with c folded into the B-side factor.
constexpr int kTileA = 64, kTileB = 128, kChunk = 16, kThreadsA = 8, kThreadsB = 32;
constexpr int kPerThreadA = kTileA / kThreadsA, kPerThreadB = kTileB / kThreadsB;

struct FusedArgs {
  int64_t rowsA, colsB, k;
  int64_t p0;
  const float* factorA;  // rowsA x k row-major
  const float* factorB;  // colsB x k row-major
  const float* coefficients;
  float inverseDamping;
  float* weight;
  float* bias;
  const float* gradWeight;
  const float* gradBias;
  float* momentum;
  float* biasMomentum;
  UpdateScalars u;
};

// The staging tiles of one block.
struct FusedShared {
  float a[kChunk][kTileA + 1];  // +1: the staging stores (kk fastest) avoid bank conflicts
  float b[kChunk][kTileB + 1];
};

// One 64 x 128 tile of one layer's update, by the whole block (every thread calls it with the same
// tile: it synchronises the block).
template <bool kOutIn>
__device__ __forceinline__ void fusedTile(const FusedArgs& f, int64_t tile, FusedShared& sh) {
  const int tx = threadIdx.x % kThreadsB, ty = threadIdx.x / kThreadsB;
  const int64_t tilesB = (f.colsB + kTileB - 1) / kTileB;
  const int64_t a0 = (tile / tilesB) * kTileA, b0 = (tile % tilesB) * kTileB;
  float acc[kPerThreadA][kPerThreadB];
#pragma unroll
  for (int u = 0; u < kPerThreadA; ++u)
#pragma unroll
    for (int v = 0; v < kPerThreadB; ++v) acc[u][v] = 0.0f;

  for (int64_t k0 = 0; k0 < f.k; k0 += kChunk) {
    // Stage factor rows: consecutive threads read consecutive k of one row.  M's rows get the bias
    // gradient's rank-one term here, M[j, l] += gb[j]·U[p0, l] (U's last row belongs to the bias),
    // instead of in a separate cuBLAS call per layer.
    for (int e = threadIdx.x; e < kTileA * kChunk; e += blockDim.x) {
      const int row = e / kChunk, kk = e % kChunk;
      const int64_t a = a0 + row, kg = k0 + kk;
      float value = 0.0f;
      if (a < f.rowsA && kg < f.k) {
        value = f.factorA[a * f.k + kg];
        if (kOutIn && f.gradBias != nullptr) value += f.gradBias[a] * f.factorB[f.p0 * f.k + kg];
      }
      sh.a[kk][row] = value;
    }
    for (int e = threadIdx.x; e < kTileB * kChunk; e += blockDim.x) {
      const int row = e / kChunk, kk = e % kChunk;
      const int64_t b = b0 + row, kg = k0 + kk;
      float value = 0.0f;
      if (b < f.colsB && kg < f.k) {
        value = f.factorB[b * f.k + kg];
        if (!kOutIn && f.gradBias != nullptr) value += f.gradBias[b] * f.factorA[f.p0 * f.k + kg];
        value *= f.coefficients[kg];
      }
      sh.b[kk][row] = value;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kChunk; ++kk) {
      float ra[kPerThreadA], rb[kPerThreadB];
#pragma unroll
      for (int u = 0; u < kPerThreadA; ++u) ra[u] = sh.a[kk][ty + u * kThreadsA];
#pragma unroll
      for (int v = 0; v < kPerThreadB; ++v) rb[v] = sh.b[kk][tx + v * kThreadsB];
#pragma unroll
      for (int u = 0; u < kPerThreadA; ++u)
#pragma unroll
        for (int v = 0; v < kPerThreadB; ++v) acc[u][v] += ra[u] * rb[v];
    }
    __syncthreads();
  }

  // Epilogue: the optimizer, one read and one write of θ and the momentum buffer per element.
#pragma unroll
  for (int u = 0; u < kPerThreadA; ++u) {
    const int64_t a = a0 + ty + u * kThreadsA;
    if (a >= f.rowsA) continue;
#pragma unroll
    for (int v = 0; v < kPerThreadB; ++v) {
      const int64_t b = b0 + tx + v * kThreadsB;
      if (b >= f.colsB) continue;
      const bool isBias = kOutIn ? b == f.p0 : a == f.p0;
      const int64_t index = isBias ? (kOutIn ? a : b) : (kOutIn ? a * f.p0 + b : a * f.colsB + b);
      float* theta = isBias ? f.bias : f.weight;
      float* buffer = isBias ? f.biasMomentum : f.momentum;
      const float g = isBias ? f.gradBias[index] : f.gradWeight[index];
      float t = theta[index], m = buffer[index];
      applyUpdate(f.u, g * f.inverseDamping + acc[u][v], t, m);
      theta[index] = t;
      buffer[index] = m;
    }
  }
}

int64_t tilesOf(const FusedArgs& f) {
  return ((f.rowsA + kTileA - 1) / kTileA) * ((f.colsB + kTileB - 1) / kTileB);
}

unsigned int gridFor(int64_t tiles) {
  return static_cast<unsigned int>(tiles < (int64_t{1} << 30) ? tiles : (int64_t{1} << 30));
}

template <bool kOutIn>
__global__ void __launch_bounds__(kThreadsA* kThreadsB) fusedStepKernel(__grid_constant__ const FusedArgs f) {
  __shared__ FusedShared sh;
  const int64_t tiles = ((f.rowsA + kTileA - 1) / kTileA) * ((f.colsB + kTileB - 1) / kTileB);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) fusedTile<kOutIn>(f, tile, sh);
}

// Many layers' updates in one launch, passed by value (a kernel parameter: no upload, so nothing
// to synchronise with): layer i owns tiles [firstTile[i], firstTile[i] + its tile count).  The
// arithmetic of each tile is fusedStepKernel's, so the results are those of one launch per layer,
// bit for bit.
constexpr int kBatchLayers = 48;  // 48 descriptors: about 7 KB of parameters (the limit is 32 KB)
struct FusedBatch {
  int32_t count;
  int32_t outIn[kBatchLayers];
  int64_t firstTile[kBatchLayers + 1];
  FusedArgs layers[kBatchLayers];
};

__global__ void __launch_bounds__(kThreadsA* kThreadsB) fusedStepBatchKernel(__grid_constant__ const FusedBatch batch) {
  __shared__ FusedShared sh;
  __shared__ FusedArgs current;  // the tile's layer, read by the whole block from shared memory
  const int64_t tiles = batch.firstTile[batch.count];
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int lo = ownerOf(batch.firstTile, batch.count, tile);
    const int64_t local = tile - batch.firstTile[lo];
    if (threadIdx.x == 0) current = batch.layers[lo];
    __syncthreads();
    if (batch.outIn[lo]) {
      fusedTile<true>(current, local, sh);
    } else {
      fusedTile<false>(current, local, sh);
    }
    __syncthreads();  // every thread is done with `current` before thread 0 replaces it
  }
}

// M (q x k row-major, i.e. column-major k x q with leading dimension k) = G U_top, and the fused
// kernel's arguments (the kernel adds the bias term gb ⊗ U_bias as it stages M).
FusedArgs prepareStep(const Context& ctx, const LayerSpec& spec, const DeviceStep& d, const StepScalars& s) {
  const int64_t p0 = spec.fanIn, q = spec.fanOut, k = d.k;
  const int ki = toInt(k, "rank"), qi = toInt(q, "fanOut"), p0i = toInt(p0, "fanIn");
  const float one = 1.0f, zero = 0.0f;
  if (spec.layout == WeightLayout::InOut) {
    // G' is p0 x q row-major: column-major q x p0, so op T gives the p0 x q operand.
    NYSACT_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, ki, qi, p0i, &one, d.basis, ki,
                                    d.gradWeight, qi, &zero, d.scratchM, ki));
  } else {
    // G is q x p0 row-major: column-major p0 x q.
    NYSACT_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, ki, qi, p0i, &one, d.basis, ki,
                                    d.gradWeight, p0i, &zero, d.scratchM, ki));
  }

  FusedArgs f{};
  const bool outIn = spec.layout == WeightLayout::OutIn;
  f.rowsA = outIn ? q : spec.p();
  f.colsB = outIn ? spec.p() : q;
  f.k = k;
  f.p0 = p0;
  f.factorA = outIn ? d.scratchM : d.basis;
  f.factorB = outIn ? d.basis : d.scratchM;
  f.coefficients = d.coefficients;
  f.inverseDamping = d.inverseDamping;
  f.weight = d.weight;
  f.bias = d.bias;
  f.gradWeight = d.gradWeight;
  f.gradBias = d.gradBias;
  f.momentum = d.momentum;
  f.biasMomentum = d.biasMomentum;
  f.u = updateScalars(s);
  return f;
}

}  // namespace

void preconditionedMomentumStep(const Context& ctx, const LayerSpec& spec, const DeviceStep& d, const StepScalars& s) {
  const FusedArgs f = prepareStep(ctx, spec, d, s);
  const unsigned int blocks = gridFor(tilesOf(f));
  if (spec.layout == WeightLayout::OutIn) {
    NYSACT_LAUNCH(fusedStepKernel<true>, blocks, kThreadsA * kThreadsB, ctx.stream())(f);
  } else {
    NYSACT_LAUNCH(fusedStepKernel<false>, blocks, kThreadsA * kThreadsB, ctx.stream())(f);
  }
  NYSACT_CUDA_CHECK_LAUNCH();
}

namespace {

// The bytes of gradient one batched launch may cover (NYSACT_CUDA_STEP_BATCH_BYTES, else half the
// L2 cache).  The M products of a launch's layers read their G first, then the fused kernel reads
// each G again: while the launch's gradients fit in L2 that second read is served from the cache,
// so G costs one pass of device memory, as with one launch per layer (product, then kernel).
size_t stepBatchBudget(const Context& ctx) {
  if (const char* v = std::getenv("NYSACT_CUDA_STEP_BATCH_BYTES")) {
    const long long parsed = std::atoll(v);
    if (parsed > 0) return static_cast<size_t>(parsed);
  }
  const int l2 = ctx.properties().l2CacheSize;
  return l2 > 0 ? static_cast<size_t>(l2) / 2 : size_t{8} << 20;
}

}  // namespace

void preconditionedMomentumStepBatch(const Context& ctx, const std::vector<const LayerSpec*>& specs,
                                     const std::vector<DeviceStep>& steps, const StepScalars& s) {
  const size_t budget = stepBatchBudget(ctx);
  size_t gradientBytes = 0;  // of the layers in `batch`
  FusedBatch batch{};
  auto launch = [&] {
    if (batch.count == 0) return;
    NYSACT_LAUNCH(fusedStepBatchKernel, gridFor(batch.firstTile[batch.count]), kThreadsA * kThreadsB, ctx.stream())(batch);
    NYSACT_CUDA_CHECK_LAUNCH();
    batch.count = 0;
    gradientBytes = 0;
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    const size_t bytes = static_cast<size_t>(specs[i]->p() * specs[i]->fanOut) * sizeof(float);
    if (batch.count > 0 && gradientBytes + bytes > budget) launch();
    gradientBytes += bytes;
    FusedArgs f;
    try {
      f = prepareStep(ctx, *specs[i], steps[i], s);
    } catch (const Error& e) {
      throw BatchLayerError(i, e);
    }
    const int c = batch.count;
    batch.layers[c] = f;
    batch.outIn[c] = specs[i]->layout == WeightLayout::OutIn ? 1 : 0;
    batch.firstTile[c + 1] = batch.firstTile[c] + tilesOf(f);  // firstTile[0] stays 0
    batch.count = c + 1;
    if (batch.count == kBatchLayers) launch();
  }
  launch();
}

void momentumStep(const Context& ctx, int64_t n, float* weight, const float* grad, float* momentum,
                  const StepScalars& s) {
  NYSACT_LAUNCH(momentumKernel, blocksFor(n), kThreads, ctx.stream())(n, weight, grad, momentum, updateScalars(s));
  NYSACT_CUDA_CHECK_LAUNCH();
}

void momentumStepBatch(const Context& ctx, const std::vector<DeviceMomentum>& tensors, const StepScalars& s) {
  MomentumBatch batch{};
  batch.u = updateScalars(s);
  auto launch = [&] {
    if (batch.count == 0) return;
    const int64_t chunks = batch.firstChunk[batch.count];
    const unsigned int blocks = static_cast<unsigned int>(chunks < (int64_t{1} << 30) ? chunks : (int64_t{1} << 30));
    NYSACT_LAUNCH(momentumBatchKernel, blocks, kThreads, ctx.stream())(batch);
    NYSACT_CUDA_CHECK_LAUNCH();
    batch.count = 0;
  };
  for (const DeviceMomentum& t : tensors) {
    if (t.n <= 0) continue;
    const int c = batch.count;
    batch.n[c] = t.n;
    batch.weight[c] = t.weight;
    batch.grad[c] = t.grad;
    batch.momentum[c] = t.momentum;
    batch.firstChunk[c + 1] = batch.firstChunk[c] + (t.n + kMomentumChunk - 1) / kMomentumChunk;  // [0] stays 0
    batch.count = c + 1;
    if (batch.count == kMomentumTensors) launch();
  }
  launch();
}

}  // namespace cuda
}  // namespace nysact
