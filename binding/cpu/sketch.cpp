// Activation covariance sketches Xᵀ(X S)/n (SPEC §1 step 1, SPEC §2 "never materialise the
// im2col patch matrix").
#include <Eigen/Dense>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"

namespace nysact {
namespace cpu {
namespace {

using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstStridedRows = Eigen::Map<const RowMatrixF, 0, Eigen::OuterStride<>>;
using ConstRows = Eigen::Map<const RowMatrixF>;
using MutableRows = Eigen::Map<RowMatrixF>;

// Chunks are fixed by shape so that the reduction order never depends on the thread count.
int64_t chunkCount(int64_t units, int64_t unitsPerChunk, int64_t maxChunks) {
  int64_t chunks = (units + unitsPerChunk - 1) / unitsPerChunk;
  return std::max<int64_t>(1, std::min(chunks, maxChunks));
}

// covariance = Σ_chunks partial / rows, in chunk order, in double.
void reducePartials(const std::vector<float>& partials, int64_t chunks, int64_t size, double rows,
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
  std::vector<float> partials(static_cast<size_t>(chunks * size), 0.0f);
  const ConstRows sTop(sketch, p0, k);

#pragma omp parallel for schedule(dynamic, 1)
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
  // The padded extent the output positions actually read.
  const int64_t hp = (g.outH - 1) * sh + (kh - 1) * dh + 1;
  const int64_t wp = (g.outW - 1) * sw + (kw - 1) * dw + 1;
  // Without leading padding and with full-width rows, an image can be read in place.
  const bool inPlace = g.padTop == 0 && g.padLeft == 0 && wp == width && hp <= height;

  // Row groups over the padded image.  Equal strides: one group of all output rows laid out with the
  // padded width as row period, pixel(oh, ow) = s·(oh·wp + ow) + offset(a, b); the rows with
  // ow >= outW are junk, computed and then zeroed.  Unequal strides: one group per output row.
  struct Group {
    int64_t startPixel, rows, pixelStride;
  };
  std::vector<Group> groups;
  const bool fused = sh == sw;
  if (fused) {
    groups.push_back({0, (g.outH - 1) * wp + g.outW, sh});
  } else {
    for (int64_t oh = 0; oh < g.outH; ++oh) groups.push_back({oh * sh * wp, g.outW, sw});
  }
  const int64_t maxGroupRows = fused ? groups[0].rows : g.outW;

  const int64_t imagesPerChunk = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, g.outH * g.outW));
  const int64_t chunks = chunkCount(input.batch, imagesPerChunk, 16);
  const int64_t perChunk = (input.batch + chunks - 1) / chunks;
  std::vector<float> partials(static_cast<size_t>(chunks * size), 0.0f);
  const int64_t imageSize = height * width * ch;

#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t b0 = c * perChunk;
    const int64_t b1 = std::min(input.batch, b0 + perChunk);
    if (b1 <= b0) continue;
    MutableRows part(partials.data() + c * size, p, k);
    std::vector<float> padded(inPlace ? 0 : static_cast<size_t>(hp * wp * ch));
    RowMatrixF z(maxGroupRows, k);
    for (int64_t b = b0; b < b1; ++b) {
      const float* image = x + b * imageSize;
      const float* source = image;
      if (!inPlace) {
        for (int64_t i = 0; i < hp; ++i) {
          const int64_t hi = i - g.padTop;
          float* dst = padded.data() + i * wp * ch;
          if (hi < 0 || hi >= height) {
            std::fill(dst, dst + wp * ch, 0.0f);
            continue;
          }
          for (int64_t j = 0; j < wp; ++j) {
            const int64_t wi = j - g.padLeft;
            if (wi < 0 || wi >= width) {
              std::fill(dst + j * ch, dst + (j + 1) * ch, 0.0f);
            } else {
              std::copy(image + (hi * width + wi) * ch, image + (hi * width + wi + 1) * ch, dst + j * ch);
            }
          }
        }
        source = padded.data();
      }
      for (const Group& grp : groups) {
        auto zg = z.topRows(grp.rows);
        auto patchColumns = [&](int64_t a, int64_t bb) {
          const int64_t offset = grp.startPixel + a * dh * wp + bb * dw;
          return ConstStridedRows(source + offset * ch, grp.rows, ch, Eigen::OuterStride<>(grp.pixelStride * ch));
        };
        // Z = X S, one kernel tap at a time.
        if (spec.bias) {
          zg = ConstRows(sketch + p0 * k, 1, k).replicate(grp.rows, 1);
        } else {
          zg.setZero();
        }
        for (int64_t a = 0; a < kh; ++a)
          for (int64_t bb = 0; bb < kw; ++bb)
            zg.noalias() += patchColumns(a, bb) * ConstRows(sketch + (a * kw + bb) * ch * k, ch, k);
        if (fused && wp > g.outW) {
          for (int64_t row = 0; row < grp.rows; ++row)
            if (row % wp >= g.outW) zg.row(row).setZero();
        }
        // C += Xᵀ Z, one kernel tap at a time.
        for (int64_t a = 0; a < kh; ++a)
          for (int64_t bb = 0; bb < kw; ++bb)
            part.middleRows((a * kw + bb) * ch, ch).noalias() += patchColumns(a, bb).transpose() * zg;
        if (spec.bias) part.row(p0) += zg.colwise().sum();
      }
    }
  }
  reducePartials(partials, chunks, size, static_cast<double>(input.batch * g.outH * g.outW), covariance);
}

bool allFinite(const float* x, int64_t n) {
  int bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    // x − x is 0 for finite x and NaN for ±inf and NaN; this form vectorises (no -ffast-math here).
    bad |= !(x[i] - x[i] == 0.0f);
  }
  return bad == 0;
}

}  // namespace cpu
}  // namespace nysact
