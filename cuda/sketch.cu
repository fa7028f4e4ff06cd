#include <algorithm>
#include <cstdint>

#include "launch.cuh"
#include "sketch.cuh"

namespace nysact {
namespace cuda {
namespace {

// Geometry of the implicit im2col (TensorFlow conv semantics, binding/common.cpp convGeometry).
struct PatchGeometry {
  int64_t height, width, channels;
  int64_t kernelW;
  int64_t strideH, strideW, dilationH, dilationW;
  int64_t outH, outW, padTop, padLeft;
  int64_t p0, p;  // patch columns, and with the ones column
};

// T[row, c] for the output positions firstRow .. firstRow+rows of the batch: patch columns in
// (kh, kw, c) order, zero outside the image, 1 in column p0 when the layer has a bias.  Consecutive
// threads take consecutive columns, i.e. consecutive channels of one input pixel: coalesced reads
// and writes.
__global__ void buildPatchTileKernel(const float* __restrict__ x, PatchGeometry g, int64_t firstRow, int64_t rows,
                                     float* __restrict__ tile) {
  const int64_t n = rows * g.p;
  const int64_t perImage = g.outH * g.outW;
  NYSACT_GRID_STRIDE(e, n) {
    const int64_t row = e / g.p;
    const int64_t col = e - row * g.p;
    float value = 1.0f;  // the bias column
    if (col < g.p0) {
      const int64_t position = firstRow + row;
      const int64_t image = position / perImage;
      const int64_t rest = position - image * perImage;
      const int64_t oh = rest / g.outW;
      const int64_t ow = rest - oh * g.outW;
      const int64_t tap = col / g.channels;
      const int64_t channel = col - tap * g.channels;
      const int64_t a = tap / g.kernelW;
      const int64_t b = tap - a * g.kernelW;
      const int64_t h = oh * g.strideH + a * g.dilationH - g.padTop;
      const int64_t w = ow * g.strideW + b * g.dilationW - g.padLeft;
      value = (h >= 0 && h < g.height && w >= 0 && w < g.width)
                  ? x[((image * g.height + h) * g.width + w) * g.channels + channel]
                  : 0.0f;
    }
    tile[e] = value;
  }
}

__global__ void setColumnKernel(float* tile, int64_t rows, int64_t ld, int64_t column, float value) {
  NYSACT_GRID_STRIDE(i, rows) { tile[i * ld + column] = value; }
}

// Z[row, j] = T[row, idx[j]]: the subcolumn sketch as a gather rather than a product with the 0/1
// selector (same values: each selector product sums exactly one non-zero term).
__global__ void gatherColumnsKernel(const float* __restrict__ tile, int64_t rows, int64_t p,
                                    const int32_t* __restrict__ indices, int64_t k, float* __restrict__ z) {
  const int64_t n = rows * k;
  NYSACT_GRID_STRIDE(e, n) {
    const int64_t row = e / k;
    const int64_t j = e - row * k;
    z[e] = tile[row * p + indices[j]];
  }
}

__global__ void accumulateKernel(const float* __restrict__ part, int64_t n, double* __restrict__ sum, int first) {
  NYSACT_GRID_STRIDE(i, n) { sum[i] = first ? static_cast<double>(part[i]) : sum[i] + static_cast<double>(part[i]); }
}

__global__ void finishKernel(const double* __restrict__ sum, int64_t n, double rows, float* __restrict__ out) {
  NYSACT_GRID_STRIDE(i, n) { out[i] = static_cast<float>(sum[i] / rows); }
}

__global__ void finiteCheckKernel(const float* __restrict__ x, int64_t n, int* flag) {
  int bad = 0;
  NYSACT_GRID_STRIDE(i, n) { bad |= !isfinite(x[i]); }
  if (bad) atomicOr(flag, 1);
}

__global__ void emaKernel(float* __restrict__ ema, const float* __restrict__ pending, int64_t n, float beta,
                          float oneMinusBeta) {
  NYSACT_GRID_STRIDE(i, n) { ema[i] = beta * ema[i] + oneMinusBeta * pending[i]; }
}

// Rows per tile: the tile (rows x p) and Z (rows x k) within the context's tile budget, at least
// one row, at most the 32-bit limit of the cuBLAS dimensions.
int64_t rowsPerTile(const Context& ctx, int64_t totalRows, int64_t p, int64_t k) {
  const int64_t bytesPerRow = (p + k) * static_cast<int64_t>(sizeof(float));
  int64_t rows = static_cast<int64_t>(ctx.tileBytes()) / bytesPerRow;
  rows = std::max<int64_t>(rows, 1);
  rows = std::min<int64_t>(rows, totalRows);
  rows = std::min<int64_t>(rows, (int64_t{1} << 31) - 1);
  return rows;
}

// The products of one tile T (rows x p, row-major) added into sum (p x k, row-major, double).
// cuBLAS is column-major: a row-major a x b matrix is its b x a transpose with leading dimension b.
void tileProducts(Context& ctx, const float* tile, int64_t rows, int64_t p, const SketchOperand& sketch, int64_t k,
                  float* z, float* part, double* sum, bool first) {
  const int m = toInt(rows, "tile rows"), pi = toInt(p, "p"), ki = toInt(k, "rank");
  const float one = 1.0f, zero = 0.0f;
  const float* zRows = z;
  int ldz = ki;
  if (sketch.matrix != nullptr) {
    // Zᵀ (k x rows) = Sᵀ (k x p) · Tᵀ (p x rows)
    NYSACT_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, ki, m, pi, &one, sketch.matrix, ki, tile,
                                    pi, &zero, z, ki));
  } else if (sketch.indices != nullptr) {
    NYSACT_LAUNCH(gatherColumnsKernel, blocksFor(rows * k), kThreads, ctx.stream())(tile, rows, p, sketch.indices, k, z);
    NYSACT_CUDA_CHECK_LAUNCH();
  } else {
    zRows = tile;  // full covariance: S = I
    ldz = pi;
  }
  // Cᵀ (k x p) = Zᵀ (k x rows) · T (rows x p)
  NYSACT_CUBLAS_CHECK(cublasSgemm(ctx.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, ki, pi, m, &one, zRows, ldz, tile, pi, &zero,
                                  part, ki));
  NYSACT_LAUNCH(accumulateKernel, blocksFor(p * k), kThreads, ctx.stream())(part, p * k, sum, first ? 1 : 0);
  NYSACT_CUDA_CHECK_LAUNCH();
}

struct TileBuffers {
  float* tile;
  float* z;
  float* part;
  double* sum;
};

TileBuffers tileBuffers(Context& ctx, int64_t tileRows, int64_t p, int64_t k) {
  ScratchPlan plan;
  const size_t tile = plan.add<float>(static_cast<size_t>(tileRows * p));
  const size_t z = plan.add<float>(static_cast<size_t>(tileRows * k));
  const size_t part = plan.add<float>(static_cast<size_t>(p * k));
  const size_t sum = plan.add<double>(static_cast<size_t>(p * k));
  char* base = ctx.scratch(plan.total());
  return {reinterpret_cast<float*>(base + tile), reinterpret_cast<float*>(base + z),
          reinterpret_cast<float*>(base + part), reinterpret_cast<double*>(base + sum)};
}

}  // namespace

bool sketchCovarianceDense(Context& ctx, const float* x, MemoryKind xMemory, int64_t rows, int64_t p0, bool bias,
                           const SketchOperand& sketch, int64_t k, float* covariance) {
  const int64_t p = p0 + (bias ? 1 : 0);
  const int64_t tileRows = rowsPerTile(ctx, rows, p, k);
  const TileBuffers b = tileBuffers(ctx, tileRows, p, k);
  const bool device = xMemory == MemoryKind::Device;
  ctx.resetFlag();
  for (int64_t r0 = 0; r0 < rows; r0 += tileRows) {
    const int64_t m = std::min(tileRows, rows - r0);
    const float* rowsX = x + r0 * p0;
    const float* tile = b.tile;
    if (device && !bias && reinterpret_cast<uintptr_t>(rowsX) % 256 == 0) {
      tile = rowsX;  // the caller's rows are the tile (pitch p == p0): no copy at all
    } else {
      // Rows of p0 floats (host, pinned or device: cudaMemcpyDefault) into tile rows of pitch p, the
      // last column left for the ones.
      NYSACT_CUDA_CHECK(cudaMemcpy2DAsync(b.tile, static_cast<size_t>(p) * sizeof(float), rowsX,
                                          static_cast<size_t>(p0) * sizeof(float), static_cast<size_t>(p0) * sizeof(float),
                                          static_cast<size_t>(m), cudaMemcpyDefault, ctx.stream()));
      if (bias) {
        NYSACT_LAUNCH(setColumnKernel, blocksFor(m), kThreads, ctx.stream())(b.tile, m, p, p0, 1.0f);
        NYSACT_CUDA_CHECK_LAUNCH();
      }
    }
    launchFiniteCheck(ctx, tile, m * p);
    tileProducts(ctx, tile, m, p, sketch, k, b.z, b.part, b.sum, r0 == 0);
  }
  if (ctx.readFlag()) return false;
  NYSACT_LAUNCH(finishKernel, blocksFor(p * k), kThreads, ctx.stream())(b.sum, p * k, static_cast<double>(rows), covariance);
  NYSACT_CUDA_CHECK_LAUNCH();
  ctx.synchronize();
  return true;
}

bool sketchCovarianceConv(Context& ctx, const float* deviceX, const LayerSpec& spec, const ConvInput& input,
                          const SketchOperand& sketch, int64_t k, float* covariance) {
  const ConvGeometry cg = convGeometry(spec, input.height, input.width);
  PatchGeometry g{};
  g.height = input.height, g.width = input.width, g.channels = spec.inChannels;
  g.kernelW = spec.kernelW;
  g.strideH = spec.strideH, g.strideW = spec.strideW, g.dilationH = spec.dilationH, g.dilationW = spec.dilationW;
  g.outH = cg.outH, g.outW = cg.outW, g.padTop = cg.padTop, g.padLeft = cg.padLeft;
  g.p0 = spec.fanIn, g.p = spec.p();
  const int64_t rows = input.batch * cg.outH * cg.outW;
  if (rows <= 0) throw Error("ERR_NYSACT_INVALID_ARGUMENT", "The conv input is smaller than the dilated kernel: no output positions");
  if (spec.kernelH == 1 && spec.kernelW == 1 && spec.strideH == 1 && spec.strideW == 1) {
    // A 1x1 kernel with unit strides pads nothing under either rule and has one patch per input
    // pixel: the NHWC input already is X (N·H·W rows of C = p0 floats), so the dense path reads it
    // in place instead of gathering a copy (a third of the memory traffic; 33 of ResNet-50's 53 convs
    // are such).  The tiles hold the values the gather would have written.
    return sketchCovarianceDense(ctx, deviceX, MemoryKind::Device, rows, g.p0, spec.bias, sketch, k, covariance);
  }

  ctx.resetFlag();
  launchFiniteCheck(ctx, deviceX, input.batch * input.height * input.width * spec.inChannels);
  if (ctx.readFlag()) return false;

  const int64_t tileRows = rowsPerTile(ctx, rows, g.p, k);
  const TileBuffers b = tileBuffers(ctx, tileRows, g.p, k);
  for (int64_t r0 = 0; r0 < rows; r0 += tileRows) {
    const int64_t m = std::min(tileRows, rows - r0);
    NYSACT_LAUNCH(buildPatchTileKernel, blocksFor(m * g.p), kThreads, ctx.stream())(deviceX, g, r0, m, b.tile);
    NYSACT_CUDA_CHECK_LAUNCH();
    tileProducts(ctx, b.tile, m, g.p, sketch, k, b.z, b.part, b.sum, r0 == 0);
  }
  NYSACT_LAUNCH(finishKernel, blocksFor(g.p * k), kThreads, ctx.stream())(b.sum, g.p * k, static_cast<double>(rows), covariance);
  NYSACT_CUDA_CHECK_LAUNCH();
  ctx.synchronize();
  return true;
}

void launchEmaUpdate(const Context& ctx, float* ema, const float* pending, int64_t n, float beta, float oneMinusBeta) {
  NYSACT_LAUNCH(emaKernel, blocksFor(n), kThreads, ctx.stream())(ema, pending, n, beta, oneMinusBeta);
  NYSACT_CUDA_CHECK_LAUNCH();
}

void launchFiniteCheck(const Context& ctx, const float* x, int64_t n) {
  if (n <= 0) return;
  NYSACT_LAUNCH(finiteCheckKernel, blocksFor(n), kThreads, ctx.stream())(x, n, ctx.flag());
  NYSACT_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace nysact
