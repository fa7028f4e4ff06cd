// Deterministic sketch draws shared by the CPU and CUDA backends (SPEC §2 "reproducible sketches").
//
// Generator: Random123 Philox4x32-10, key = (seed low word, seed high word), counter =
// (element block, layer key, statistics step low word, domain | statistics step high bits).
// Gaussians use Box–Muller on two uniforms; log, sin and cos are evaluated here with fixed
// polynomials in double precision using only +, −, ×, / and sqrt, which IEEE 754 rounds
// identically on every conforming host and device.  The translation units that include this header
// must be compiled without floating-point contraction (-ffp-contract=off; nvcc --fmad=false) so
// that no FMA changes the roundings: that is what makes CPU and CUDA sketches bit-identical.
#pragma once

#include <Random123/philox.h>

#include <cstdint>

#if defined(__CUDACC__)
#define NYSACT_HD __host__ __device__
#else
#define NYSACT_HD
#endif

namespace nysact {
namespace philox {

enum Domain : uint32_t { kGaussian = 0u, kSubcolumns = 1u << 30 };

NYSACT_HD inline r123::Philox4x32::ctr_type draw(uint64_t seed, uint32_t layerKey, uint64_t statStep,
                                                 uint32_t domain, uint32_t block) {
  r123::Philox4x32 rng;
  r123::Philox4x32::key_type key = {{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
  r123::Philox4x32::ctr_type ctr = {{block, layerKey, static_cast<uint32_t>(statStep),
                                     domain | static_cast<uint32_t>((statStep >> 32) & 0x3fffffffu)}};
  return rng(ctr, key);
}

// (x + 0.5) / 2^32: uniform in (0, 1), never 0 or 1, exact in double.
NYSACT_HD inline double unitOpen(uint32_t x) { return (static_cast<double>(x) + 0.5) * 2.3283064365386963e-10; }

// Natural log of u in (0, 1].  Reduction u = m·2^e with m in [√½, √2), then
// log m = 2·atanh(s), s = (m−1)/(m+1), |s| < 0.1716, series to s^23 (error < 1e-17).
NYSACT_HD inline double portableLog(double u) {
  // Exponent extraction by repeated exact scaling: u >= 2^-33 here, so at most 34 halvings.
  int e = 0;
  double m = u;
  while (m < 0.70710678118654752440) {
    m = m * 2.0;
    e = e - 1;
  }
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double poly = 1.0 / 23.0;
  poly = poly * s2 + 1.0 / 21.0;
  poly = poly * s2 + 1.0 / 19.0;
  poly = poly * s2 + 1.0 / 17.0;
  poly = poly * s2 + 1.0 / 15.0;
  poly = poly * s2 + 1.0 / 13.0;
  poly = poly * s2 + 1.0 / 11.0;
  poly = poly * s2 + 1.0 / 9.0;
  poly = poly * s2 + 1.0 / 7.0;
  poly = poly * s2 + 1.0 / 5.0;
  poly = poly * s2 + 1.0 / 3.0;
  poly = poly * s2 + 1.0;
  const double logm = 2.0 * s * poly;
  const double ln2Hi = 6.93147180369123816490e-01;  // upper bits of ln 2 (exact product with e)
  const double ln2Lo = 1.90821492927058770002e-10;
  return static_cast<double>(e) * ln2Hi + (logm + static_cast<double>(e) * ln2Lo);
}

// sin and cos of x in [0, π/2] by Taylor series to x^21 / x^20 (truncation error < 2e-17).
NYSACT_HD inline void portableSinCosQuarter(double x, double* sinOut, double* cosOut) {
  const double x2 = x * x;
  double sn = 1.0 / 51090942171709440000.0;  // 1/21!
  sn = sn * x2 - 1.0 / 121645100408832000.0;   // -1/19!
  sn = sn * x2 + 1.0 / 355687428096000.0;  // 1/17!
  sn = sn * x2 - 1.0 / 1307674368000.0;    // -1/15!
  sn = sn * x2 + 1.0 / 6227020800.0;       // 1/13!
  sn = sn * x2 - 1.0 / 39916800.0;         // -1/11!
  sn = sn * x2 + 1.0 / 362880.0;           // 1/9!
  sn = sn * x2 - 1.0 / 5040.0;             // -1/7!
  sn = sn * x2 + 1.0 / 120.0;              // 1/5!
  sn = sn * x2 - 1.0 / 6.0;                // -1/3!
  sn = sn * x2 + 1.0;
  double cs = 1.0 / 2432902008176640000.0;  // 1/20!
  cs = cs * x2 - 1.0 / 6402373705728000.0;  // -1/18!
  cs = cs * x2 + 1.0 / 20922789888000.0;  // 1/16!
  cs = cs * x2 - 1.0 / 87178291200.0;  // -1/14!
  cs = cs * x2 + 1.0 / 479001600.0;  // 1/12!
  cs = cs * x2 - 1.0 / 3628800.0;  // -1/10!
  cs = cs * x2 + 1.0 / 40320.0;  // 1/8!
  cs = cs * x2 - 1.0 / 720.0;  // -1/6!
  cs = cs * x2 + 1.0 / 24.0;  // 1/4!
  cs = cs * x2 - 1.0 / 2.0;  // -1/2!
  cs = cs * x2 + 1.0;
  *sinOut = x * sn;
  *cosOut = cs;
}

// cos(2πu) and sin(2πu) for u in (0, 1): the quadrant is taken exactly from 4u.
NYSACT_HD inline void portableSinCosTurn(double u, double* sinOut, double* cosOut) {
  const double t = u * 4.0;  // exact
  int quadrant = static_cast<int>(t);
  if (quadrant > 3) quadrant = 3;
  const double f = t - static_cast<double>(quadrant);  // exact, in [0, 1)
  double s, c;
  portableSinCosQuarter(f * 1.57079632679489661923, &s, &c);
  switch (quadrant) {
    case 0: *cosOut = c; *sinOut = s; break;
    case 1: *cosOut = -s; *sinOut = c; break;
    case 2: *cosOut = -c; *sinOut = -s; break;
    default: *cosOut = s; *sinOut = -c; break;
  }
}

// Elements 4·block + 2·pair (cosine) and 4·block + 2·pair + 1 (sine) of the p x r row-major gaussian
// sketch, already divided by sqrt(p) (SPEC §1: randn/√p): one Box–Muller pair from the block's draw x.
NYSACT_HD inline void gaussianSketchPair(const r123::Philox4x32::ctr_type& x, int pair, double invSqrtP, float* out) {
  const double u1 = unitOpen(x.v[2 * pair]);
  const double u2 = unitOpen(x.v[2 * pair + 1]);
  double radius = -2.0 * portableLog(u1);
#if defined(__CUDA_ARCH__)
  radius = __dsqrt_rn(radius);
#else
  radius = __builtin_sqrt(radius);
#endif
  double s, c;
  portableSinCosTurn(u2, &s, &c);
  const double zc = radius * c;
  const double zs = radius * s;
  out[0] = static_cast<float>(zc * invSqrtP);
  out[1] = static_cast<float>(zs * invSqrtP);
}

// Element e of the sketch alone (block b = e / 4 yields four normals from two Box–Muller pairs).
NYSACT_HD inline float gaussianSketchElement(uint64_t seed, uint32_t layerKey, uint64_t statStep,
                                             int64_t e, double invSqrtP) {
  const r123::Philox4x32::ctr_type x = draw(seed, layerKey, statStep, kGaussian, static_cast<uint32_t>(e >> 2));
  float two[2];
  gaussianSketchPair(x, static_cast<int>((e >> 1) & 1), invSqrtP, two);
  return two[e & 1];
}

// The j-th uniform integer draw in [0, bound) for the subcolumn shuffle (multiply-shift; the bias
// is below bound / 2^32, negligible for any fan-in).
NYSACT_HD inline uint32_t subcolumnDraw(uint64_t seed, uint32_t layerKey, uint64_t statStep, int64_t j,
                                        uint32_t bound) {
  const r123::Philox4x32::ctr_type x =
      draw(seed, layerKey, statStep, kSubcolumns, static_cast<uint32_t>(j >> 2));
  return static_cast<uint32_t>((static_cast<uint64_t>(x.v[j & 3]) * bound) >> 32);
}

}  // namespace philox
}  // namespace nysact
