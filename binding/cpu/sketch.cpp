// Activation covariance sketches Xᵀ(X S)/n (SPEC §1 step 1, SPEC §2 "never materialise the
// im2col patch matrix").
#include <Eigen/Dense>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"

namespace nysact {
namespace cpu {
namespace {

// Chunks are fixed by shape so that the reduction order never depends on the thread count.
int64_t chunkCount(int64_t units, int64_t unitsPerChunk, int64_t maxChunks) {
  int64_t chunks = (units + unitsPerChunk - 1) / unitsPerChunk;
  return std::max<int64_t>(1, std::min(chunks, maxChunks));
}

// covariance = Σ_chunks partial / rows, in chunk order, in double.
void reducePartials(const AlignedFloats& partials, int64_t chunks, int64_t size, double rows,
                    float* covariance) {
  std::vector<double> sum(static_cast<size_t>(size), 0.0);
  for (int64_t c = 0; c < chunks; ++c) {
    const float* part = partials.data() + c * size;
    for (int64_t i = 0; i < size; ++i) sum[i] += part[i];
  }
  for (int64_t i = 0; i < size; ++i) covariance[i] = static_cast<float>(sum[i] / rows);
}

}  // namespace

void sketchCovarianceDense(const float* x, int64_t rows, int64_t p0, bool bias, const float* sketch,
                           int64_t k, float* covariance) {
  const int64_t p = p0 + (bias ? 1 : 0);
  const int64_t size = p * k;
  // ~64k multiply-adds per row block keeps the per-chunk GEMMs efficient.
  const int64_t rowsPerChunk = std::max<int64_t>(64, (1 << 16) / std::max<int64_t>(1, p0));
  const int64_t chunks = chunkCount(rows, rowsPerChunk, 32);
  const int64_t perChunk = (rows + chunks - 1) / chunks;
  AlignedFloats partials(static_cast<size_t>(chunks * size), 0.0f);
  const ConstRows sTop(sketch, p0, k);

#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = c * perChunk;
    const int64_t m = std::min(rows, r0 + perChunk) - r0;
    if (m <= 0) continue;
    const ConstRows xc(x + r0 * p0, m, p0);
    RowMatrixF z(m, k);
    z.noalias() = xc * sTop;
    if (bias) z.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(sketch + p0 * k, k);
    MutableRows part(partials.data() + c * size, p, k);
    part.topRows(p0).noalias() = xc.transpose() * z;
    if (bias) part.row(p0) = z.colwise().sum();
  }
  reducePartials(partials, chunks, size, static_cast<double>(rows), covariance);
}

void sketchCovarianceConv(const float* x, const LayerSpec& spec, const ConvInput& input,
                          const float* sketch, int64_t k, float* covariance) {
  const ConvGeometry g = convGeometry(spec, input.height, input.width);
  const int64_t kh = spec.kernelH, kw = spec.kernelW, ch = spec.inChannels;
  const int64_t sh = spec.strideH, sw = spec.strideW, dh = spec.dilationH, dw = spec.dilationW;
  const int64_t p0 = spec.fanIn, p = spec.p(), size = p * k;
  const int64_t height = input.height, width = input.width;
  // The padded extent the output positions actually read; images are padded one at a time into a
  // small buffer (at most (1 + 2·pad/H)² the input size, never the kh·kw-fold patch matrix).
  const int64_t hp = (g.outH - 1) * sh + (kh - 1) * dh + 1;
  const int64_t wp = (g.outW - 1) * sw + (kw - 1) * dw + 1;
  const int64_t pixels = hp * wp, imageSize = height * width * ch;
  const bool inPlace = g.padTop == 0 && g.padLeft == 0 && wp == width && hp == height;

  // Output position (oh, ow) of an image reads tap (a, b) at padded pixel
  // (oh·sh + a·dh)·wp + ow·sw + b·dw.  With unit strides (the only case of the two view paths below;
  // strided convs use patch tiles) this is (oh·wp + ow) + offset(a, b): the output positions form a
  // "grid" of row period wp whose rows with ow >= outW are junk (computed, then zeroed).  The grids
  // of consecutive padded images also line up (row g of image i is row i·pixels + g), so several
  // images could form one tall product; measured, one image per pass is fastest (its working set
  // stays in L2), so imagesPerPass is 1.
  const bool unitStride = sh == 1 && sw == 1;
  const int64_t gridRows = (g.outH - 1) * wp + g.outW;
  // Two ways, both measured on ResNet-32 and ResNet-50 shapes (nysact bench):
  //  - allTaps: with unit strides and wide kernel rows (kw·ch >= 128), every kh·kw tap in one
  //    product each way over the padded image (fastest there: 3×3 convs with 64+ channels);
  //  - patch tiles otherwise: the patches of up to 4096 output positions of one image gathered into
  //    a small tile (at most 4096 × p0 floats, never the whole patch matrix) and multiplied with
  //    inner dimension p0.  They replaced one strided view per kernel row, which ran narrow rows
  //    (1-3 channels) at a few GFLOP/s, computed the junk rows of a strided grid (stride 2: tiles
  //    1.3-2x faster), and was 4-10% slower than tiles on the remaining unit-stride shapes.
  const bool allTaps = unitStride && kw * ch >= 128;
  const int64_t taps = kh * kw;
  std::vector<int64_t> tapOffset(static_cast<size_t>(taps));
  for (int64_t a = 0; a < kh; ++a)
    for (int64_t bb = 0; bb < kw; ++bb) tapOffset[a * kw + bb] = a * dh * wp + bb * dw;
  RowMatrixF sAll;  // ch x taps·k: sAll[c, tap·k + j] = S[tap·ch + c, j]
  if (allTaps) {
    sAll.resize(ch, taps * k);
    for (int64_t tap = 0; tap < taps; ++tap) sAll.middleCols(tap * k, k) = ConstRows(sketch + tap * ch * k, ch, k);
  }

  constexpr int64_t kTileRows = 4096;
  // At least 8 chunks when the batch allows (both cores busy), each ~16k output positions.
  const int64_t perImage = g.outH * g.outW;
  const int64_t imagesPerChunk = std::max<int64_t>(
      1, std::min<int64_t>((1 << 14) / std::max<int64_t>(1, perImage), (input.batch + 7) / 8));
  const int64_t chunks = chunkCount(input.batch, imagesPerChunk, 64);
  const int64_t perChunk = (input.batch + chunks - 1) / chunks;
  AlignedFloats partials(static_cast<size_t>(chunks * size), 0.0f);

  auto padImage = [&](const float* image, float* dst) {
    for (int64_t i = 0; i < hp; ++i) {
      const int64_t hi = i - g.padTop;
      float* row = dst + i * wp * ch;
      if (hi < 0 || hi >= height) {
        std::fill(row, row + wp * ch, 0.0f);
        continue;
      }
      for (int64_t j = 0; j < wp; ++j) {
        const int64_t wi = j - g.padLeft;
        if (wi < 0 || wi >= width) {
          std::fill(row + j * ch, row + (j + 1) * ch, 0.0f);
        } else {
          std::copy(image + (hi * width + wi) * ch, image + (hi * width + wi + 1) * ch, row + j * ch);
        }
      }
    }
  };

#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b0 = c * perChunk;
    const int64_t b1 = std::min(input.batch, b0 + perChunk);
    if (b1 <= b0) continue;
    MutableRows part(partials.data() + c * size, p, k);
    const int64_t imagesPerPass = 1;  // see above
    const int64_t rows = (imagesPerPass - 1) * pixels + gridRows;
    std::vector<float> padded(inPlace ? 0 : static_cast<size_t>(imagesPerPass * pixels * ch));
    RowMatrixF z, t, zShift;  // the all-taps path's
    if (allTaps) {
      z.resize(rows, k);
      t.resize(imagesPerPass * pixels, taps * k);
      zShift.resize(imagesPerPass * pixels, taps * k);
    }
    RowMatrixF cAll = allTaps ? RowMatrixF::Zero(ch, taps * k) : RowMatrixF();
    RowMatrixF tile, zTile;
    if (!allTaps) {
      tile.resize(std::min(kTileRows, perImage), p0);
      zTile.resize(std::min(kTileRows, perImage), k);
    }

    auto zeroJunkRows = [&](Eigen::Ref<RowMatrixF> zg) {
      for (int64_t row = 0; row < zg.rows(); ++row) {
        const int64_t local = row % pixels;
        if (local >= gridRows || local % wp >= g.outW) zg.row(row).setZero();
      }
    };
    auto initialiseZ = [&](Eigen::Ref<RowMatrixF> zg) {
      if (spec.bias) {
        zg = ConstRows(sketch + p0 * k, 1, k).replicate(zg.rows(), 1);
      } else {
        zg.setZero();
      }
    };

    for (int64_t b = b0; b < b1; b += imagesPerPass) {
      const float* source = x + b * imageSize;
      if (!inPlace) {
        for (int64_t i = 0; i < imagesPerPass; ++i) padImage(x + (b + i) * imageSize, padded.data() + i * pixels * ch);
        source = padded.data();
      }
      if (allTaps) {
        // T = I S_all; Z[g] = Σ_tap T[g + off_tap, tap]; C_all += Iᵀ Zshift, Zshift[g + off_tap, tap] = Z[g].
        const ConstRows image2d(source, imagesPerPass * pixels, ch);
        t.noalias() = image2d * sAll;
        initialiseZ(z);
        for (int64_t tap = 0; tap < taps; ++tap) z += t.block(tapOffset[tap], tap * k, rows, k);
        zeroJunkRows(z);
        zShift.setZero();
        for (int64_t tap = 0; tap < taps; ++tap) zShift.block(tapOffset[tap], tap * k, rows, k) = z;
        cAll.noalias() += image2d.transpose() * zShift;
        if (spec.bias) part.row(p0) += z.colwise().sum();
      } else {
        const ConstRows sTop(sketch, p0, k);
        for (int64_t pos0 = 0; pos0 < perImage; pos0 += kTileRows) {
          const int64_t m = std::min(kTileRows, perImage - pos0);
          for (int64_t i = 0; i < m; ++i) {
            const int64_t oh = (pos0 + i) / g.outW, ow = (pos0 + i) % g.outW;
            float* dst = tile.data() + i * p0;
            const int64_t base = oh * sh * wp + ow * sw;
            // A plain loop, not std::copy: with ch of 1-3 floats a library call per tap cost more
            // than the products (1 channel, 28×28, batch 128, rank 20: 2.0 -> 1.5 ms).
            for (int64_t tap = 0; tap < taps; ++tap) {
              const float* src = source + (base + tapOffset[tap]) * ch;
              for (int64_t c = 0; c < ch; ++c) dst[tap * ch + c] = src[c];
            }
          }
          const auto tm = tile.topRows(m);
          auto zm = zTile.topRows(m);
          zm.noalias() = tm * sTop;
          if (spec.bias) zm.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(sketch + p0 * k, k);
          part.topRows(p0).noalias() += tm.transpose() * zm;
          if (spec.bias) part.row(p0) += zm.colwise().sum();
        }
      }
    }
    if (allTaps) {
      for (int64_t tap = 0; tap < taps; ++tap) part.middleRows(tap * ch, ch) += cAll.middleCols(tap * k, k);
    }
  }
  reducePartials(partials, chunks, size, static_cast<double>(input.batch * perImage), covariance);
}

bool allFinite(const float* x, int64_t n) {
  int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) if (n > (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i) {
    // x − x is 0 for finite x and NaN for ±inf and NaN; this form vectorises (no -ffast-math here).
    bad |= !(x[i] - x[i] == 0.0f);
  }
  return bad == 0;
}

}  // namespace cpu
}  // namespace nysact
