// The C++ test-and-benchmark driver (no Node): the same backend interface the addon uses, checked
// CPU against CUDA and timed (ggml's test-backend-ops, STYLE.md point 10).  Prints one JSON object.
//
//   nysact_driver [--quick] [--smoke] [--no-parity] [--no-bench] [--batch N] [--repeats N]
//   (--smoke: the benchmarks on three tiny layers, to run their code on the CUDA host emulation)
//
// Parity: random layers (dense in both weight layouts, conv with strides, 'same'/'valid' padding,
// dilation and bias, gaussian and subcolumn sketches, caller-supplied sketches, full covariance,
// Nesterov, decoupled weight decay, the textbook Nyström variant, a plain parameter) run the same
// sequence of statistics, inverse and update steps on both backends.  Checked: Philox sketches
// bit-identical; pending covariance, EMA, momentum and weights within stated relative bounds; λ̂
// within 1e-3·(1 + max λ̂); factor statuses, counters and state round trips equal.  On CUDA each
// case also runs with the weights and gradients resident on the device (Backend::allocate, Device)
// and in page-locked host memory (PinnedHost), its activations in the same memory (device: read in
// place by the sketch): both must give the host-array path's bits exactly (pending covariance after
// every statistics call, and the weights after every step), and a non-finite resident activation
// must be refused with the pending statistics kept.
// CUDA layers rebuild their factors through Backend::nystromFactorsBatch (the batched path); a
// batch parity check rebuilds several layers together on the CPU, on CUDA's batched path and on its
// per-layer path (NYSACT_CUDA_FACTORS=per-layer).
//
// Benchmarks (CUDA only): the fused update against the device-to-device copy bandwidth on
// ResNet-50's parameter shapes; the statistics step against cuBLAS SGEMM's rate on ResNet-50's
// layers at batch 256 (224² input, rank 50); the inverse update of every ResNet-50 layer at rank 50
// (one nystromFactorsBatch, CUDA's batched path against its per-layer path);
// a whole update step over every ResNet-50 layer with device-resident weights and gradients against
// the same step from pageable and from page-locked host arrays (the copies included).
//
// Without a usable CUDA backend it reports why, runs the CPU half of the harness, and exits 0.
// Exit status 1 means a parity check failed; 2 a usage error.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "../binding/backend.h"
#include "../binding/cuda_loader.h"

using namespace nysact;

namespace {

// ---- a minimal JSON writer ---------------------------------------------------------------------

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

class Object {
 public:
  Object& add(const std::string& key, const std::string& rawJson) {
    fields_.push_back(quote(key) + ": " + rawJson);
    return *this;
  }
  Object& str(const std::string& key, const std::string& v) { return add(key, quote(v)); }
  Object& number(const std::string& key, double v) { return add(key, num(v)); }
  Object& boolean(const std::string& key, bool v) { return add(key, v ? "true" : "false"); }
  std::string json(int indent = 0) const {
    if (fields_.empty()) return "{}";
    const std::string pad(static_cast<size_t>(indent + 2), ' ');
    std::string out = "{\n";
    for (size_t i = 0; i < fields_.size(); ++i) out += pad + fields_[i] + (i + 1 < fields_.size() ? ",\n" : "\n");
    return out + std::string(static_cast<size_t>(indent), ' ') + "}";
  }

 private:
  std::vector<std::string> fields_;
};

std::string array(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- random data --------------------------------------------------------------------------------

struct Random {
  std::mt19937_64 engine;
  explicit Random(uint64_t seed) : engine(seed) {}
  std::vector<float> uniform(size_t n, float scale) {
    std::uniform_real_distribution<float> d(-scale, scale);
    std::vector<float> v(n);
    for (float& x : v) x = d(engine);
    return v;
  }
  // rows x width values: uniform noise in ±1 plus three shared directions with per-row weights in
  // ±3, so the covariance has a few dominant eigenvalues (as real activations do) and the SPEC's
  // shift keeps some directions: i.i.d. noise alone gives a flat spectrum whose directions are all
  // clipped, leaving the low-rank term of the update zero and untested.
  std::vector<float> structured(int64_t rows, int64_t width) {
    std::vector<float> x = uniform(static_cast<size_t>(rows * width), 1.0f);
    const std::vector<float> directions = uniform(static_cast<size_t>(3 * width), 1.0f);
    for (int64_t i = 0; i < rows; ++i) {
      const std::vector<float> z = uniform(3, 3.0f);
      for (int d = 0; d < 3; ++d)
        for (int64_t j = 0; j < width; ++j) x[i * width + j] += z[d] * directions[d * width + j];
    }
    return x;
  }
  std::vector<int32_t> distinct(int64_t p, int64_t r) {
    std::vector<int32_t> all(static_cast<size_t>(p));
    for (int64_t i = 0; i < p; ++i) all[i] = static_cast<int32_t>(i);
    std::shuffle(all.begin(), all.end(), engine);
    all.resize(static_cast<size_t>(r));
    return all;
  }
};

double maxAbs(const std::vector<float>& a) {
  double m = 0.0;
  for (float x : a) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// max |a − b| / max |a| (0 when both are zero); infinity on a size mismatch or non-finite value.
double relativeError(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (!std::isfinite(d)) return INFINITY;
    diff = std::max(diff, d);
  }
  const double scale = maxAbs(a);
  return scale > 0.0 ? diff / scale : diff;
}

bool bitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

std::vector<float> lambdaHat(const LayerState& st) {
  std::vector<float> out;
  const double rho = 1.0 / st.inverseDamping;
  for (float c : st.coefficients) out.push_back(static_cast<float>(1.0 / (c + st.inverseDamping) - rho));
  std::sort(out.begin(), out.end());
  return out;
}

// Backend memory of one kind holding a copy of a host vector (device-resident or page-locked
// weights and gradients); freed on destruction.
class BackendArray {
 public:
  BackendArray(Backend& backend, MemoryKind kind, size_t count)
      : backend_(backend), kind_(kind), count_(count),
        data_(count > 0 ? static_cast<float*>(backend.allocate(kind, count * sizeof(float))) : nullptr) {}
  BackendArray(Backend& backend, MemoryKind kind, const std::vector<float>& v) : BackendArray(backend, kind, v.size()) {
    upload(v);
  }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;
  ~BackendArray() { backend_.release(kind_, data_); }
  float* data() const { return data_; }
  MemoryKind kind() const { return kind_; }
  void upload(const std::vector<float>& v) {
    if (!v.empty()) backend_.copy(data_, kind_, v.data(), MemoryKind::Host, v.size() * sizeof(float));
  }
  std::vector<float> download() const {
    std::vector<float> v(count_);
    if (count_ > 0) backend_.copy(v.data(), MemoryKind::Host, data_, kind_, count_ * sizeof(float));
    return v;
  }

 private:
  Backend& backend_;
  MemoryKind kind_;
  size_t count_;
  float* data_;
};

// A CUDA layer stepped from weights and gradients in `kind` memory (the parity of residency).
struct ResidentRun {
  std::unique_ptr<Layer> layer;
  BackendArray weight, bias, grad, gradBias;
  ResidentRun(Backend& backend, const LayerSpec& s, MemoryKind kind, const std::vector<float>& w, const std::vector<float>& b)
      : layer(backend.createLayer(s)),
        weight(backend, kind, w),
        bias(backend, kind, b),
        grad(backend, kind, w.size()),
        gradBias(backend, kind, b.size()) {}
  StepOperands operands(bool hasBias) const {
    StepOperands o;
    o.weight = weight.data();
    o.gradWeight = grad.data();
    o.bias = hasBias ? bias.data() : nullptr;
    o.gradBias = hasBias ? gradBias.data() : nullptr;
    o.weightMemory = o.biasMemory = o.gradWeightMemory = o.gradBiasMemory = weight.kind();
    return o;
  }
};

// ---- parity cases -------------------------------------------------------------------------------

struct Case {
  std::string name;
  LayerSpec spec;
  int64_t batch = 0, height = 0, width = 0;  // dense: batch = rows
  int steps = 12, tcov = 2, tinv = 4;
  StepScalars scalars;
  double statDecay = 0.95, damping = 1.0;
  NystromVariant variant = NystromVariant::Reference;
  bool callerSketch = false;
};

LayerSpec dense(int64_t in, int64_t out, bool bias, int64_t rank, SketchKind sketch, WeightLayout layout) {
  LayerSpec s;
  s.kind = LayerKind::Dense;
  s.fanIn = in;
  s.fanOut = out;
  s.bias = bias;
  s.rank = rank;
  s.sketch = sketch;
  s.layout = layout;
  s.seed = 0x1234abcd5678ull;
  s.layerKey = 7;
  return s;
}

LayerSpec conv(int kh, int kw, int cin, int cout, int sh, int sw, int dh, int dw, Padding pad, bool bias, int64_t rank,
               SketchKind sketch) {
  LayerSpec s;
  s.kind = LayerKind::Conv2d;
  s.kernelH = kh;
  s.kernelW = kw;
  s.inChannels = cin;
  s.fanIn = int64_t{kh} * kw * cin;
  s.fanOut = cout;
  s.strideH = sh;
  s.strideW = sw;
  s.dilationH = dh;
  s.dilationW = dw;
  s.padding = pad;
  s.bias = bias;
  s.rank = rank;
  s.sketch = sketch;
  s.seed = 99;
  s.layerKey = 3;
  return s;
}

std::vector<Case> parityCases(bool quick) {
  std::vector<Case> cases;
  auto add = [&](const std::string& name, LayerSpec spec, int64_t batch, int64_t h, int64_t w) -> Case& {
    Case c;
    c.name = name;
    c.spec = spec;
    c.batch = batch;
    c.height = h;
    c.width = w;
    c.scalars.lr = 0.05;
    c.scalars.momentum = 0.9;
    c.scalars.weightDecay = 5e-4;
    cases.push_back(c);
    return cases.back();
  };
  add("dense in-out bias gaussian", dense(96, 40, true, 10, SketchKind::Gaussian, WeightLayout::InOut), 300, 0, 0);
  add("dense out-in subcolumns", dense(70, 33, false, 8, SketchKind::Subcolumns, WeightLayout::OutIn), 257, 0, 0);
  {
    Case& c = add("dense out-in bias gaussian nesterov textbook",
                  dense(130, 20, true, 16, SketchKind::Gaussian, WeightLayout::OutIn), 1000, 0, 0);
    c.scalars.nesterov = true;
    c.variant = NystromVariant::Textbook;
  }
  {
    Case& c = add("dense full covariance nesterov", dense(12, 9, true, 50, SketchKind::Gaussian, WeightLayout::InOut), 64, 0, 0);
    c.scalars.nesterov = true;
  }
  {
    Case& c = add("dense caller sketch decoupled", dense(50, 30, true, 6, SketchKind::Gaussian, WeightLayout::InOut), 128, 0, 0);
    c.callerSketch = true;
    c.scalars.decoupledWeightDecay = true;
  }
  {
    Case& c = add("dense caller subcolumns", dense(40, 12, false, 5, SketchKind::Subcolumns, WeightLayout::InOut), 90, 0, 0);
    c.callerSketch = true;
  }
  add("conv 3x3 same s1 bias gaussian", conv(3, 3, 8, 16, 1, 1, 1, 1, Padding::Same, true, 10, SketchKind::Gaussian), 6, 12, 12);
  add("conv 3x3 valid s2 d2 subcolumns", conv(3, 3, 5, 7, 2, 2, 2, 2, Padding::Valid, false, 9, SketchKind::Subcolumns), 5, 17, 15);
  add("conv 3x2 same s(2,1) bias", conv(3, 2, 4, 6, 2, 1, 1, 1, Padding::Same, true, 7, SketchKind::Gaussian), 4, 9, 8);
  add("conv 1x1 same s2", conv(1, 1, 32, 24, 2, 2, 1, 1, Padding::Same, false, 12, SketchKind::Gaussian), 3, 14, 14);
  // 1x1 with unit strides: the input is read in place as the activation matrix (no tile gather).
  add("conv 1x1 same s1", conv(1, 1, 32, 24, 1, 1, 1, 1, Padding::Same, false, 12, SketchKind::Gaussian), 3, 14, 14);
  add("conv 1x1 valid s1 d2 bias subcolumns", conv(1, 1, 20, 9, 1, 1, 2, 2, Padding::Valid, true, 6, SketchKind::Subcolumns), 4, 9, 11);
  add("conv 5x5 same d(1,2) bias", conv(5, 5, 3, 8, 1, 1, 1, 2, Padding::Same, true, 20, SketchKind::Gaussian), 2, 20, 18);
  {
    Case& c = add("conv full covariance", conv(2, 2, 3, 5, 1, 1, 1, 1, Padding::Valid, true, 64, SketchKind::Gaussian), 4, 7, 7);
    c.scalars.nesterov = true;
  }
  {
    LayerSpec plain;
    plain.kind = LayerKind::Plain;
    plain.size = 1000;
    add("plain parameter", plain, 0, 0, 0);
  }
  if (!quick) {
    add("dense 512x256 rank 32", dense(512, 256, true, 32, SketchKind::Gaussian, WeightLayout::InOut), 2048, 0, 0);
    add("conv 3x3 64->64 same rank 32", conv(3, 3, 64, 64, 1, 1, 1, 1, Padding::Same, false, 32, SketchKind::Gaussian), 8, 32, 32);
    Case& c = add("conv 3x3 32->32 subcolumns many tiles",
                  conv(3, 3, 32, 32, 1, 1, 1, 1, Padding::Same, true, 16, SketchKind::Subcolumns), 64, 32, 32);
    c.steps = 6;
  }
  return cases;
}

struct Tolerances {
  double weights = 1e-4;     // the parity suite's bound (test/parity.test.ts)
  double covariance = 1e-4;  // fp32 products, different summation orders
  double state = 1e-4;       // EMA and momentum
  double lambda = 1e-3;      // relative to 1 + max λ̂
};

struct CaseResult {
  Object json;
  bool ok = true;
  double seconds = 0.0;
};

void check(CaseResult& r, std::vector<std::string>& failures, bool condition, const std::string& what) {
  if (!condition) {
    r.ok = false;
    failures.push_back(quote(what));
  }
}

// Runs one case on `a` (the CPU) and, when given, `b` (CUDA); compares when both are present.
CaseResult runCase(const Case& c, Backend& a, Backend* b) {
  CaseResult r;
  const double t0 = seconds();
  const Tolerances tol;
  std::vector<std::string> failures;
  Random rng(0xC0FFEE ^ std::hash<std::string>{}(c.name));
  const LayerSpec& s = c.spec;
  std::unique_ptr<Layer> la = a.createLayer(s), lb = b ? b->createLayer(s) : nullptr;
  const bool plain = s.kind == LayerKind::Plain;
  const int64_t n = s.weightSize();
  std::vector<float> wa = rng.uniform(static_cast<size_t>(n), 0.5f), wb = wa;
  std::vector<float> ba = s.bias ? rng.uniform(static_cast<size_t>(s.fanOut), 0.1f) : std::vector<float>(), bb = ba;
  double worstW = 0, worstC = 0, worstLambda = 0;
  size_t keptDirections = 0;  // most λ̂ > 0 in one CPU inverse update: the low-rank term was exercised
  bool philoxIdentical = true, statusesEqual = true;
  // On CUDA: the same sequence from device-resident and from page-locked weights and gradients.
  std::vector<std::unique_ptr<ResidentRun>> resident;
  if (b != nullptr) {
    resident.push_back(std::make_unique<ResidentRun>(*b, s, MemoryKind::Device, wa, ba));
    resident.push_back(std::make_unique<ResidentRun>(*b, s, MemoryKind::PinnedHost, wa, ba));
  }
  bool residentIdentical = true;
  bool residentActivationsIdentical = true;  // pending C from resident activations == host input, bit for bit

  for (int t = 0; t < c.steps; ++t) {
    if (!plain && t % c.tcov == 0) {
      const int64_t p0 = s.fanIn, p = s.p(), k = s.r();
      // Conv: the channels of each pixel share the directions.
      std::vector<float> x = s.kind == LayerKind::Dense ? rng.structured(c.batch, p0)
                                                        : rng.structured(c.batch * c.height * c.width, s.inChannels);
      std::vector<float> matrix;
      std::vector<int32_t> indices;
      SketchInput sketch;
      if (c.callerSketch && !s.fullCovariance()) {
        if (s.sketch == SketchKind::Gaussian) {
          matrix = rng.uniform(static_cast<size_t>(p * k), 0.3f);
          sketch.matrix = matrix.data();
        } else {
          indices = rng.distinct(p, k);
          sketch.indices = indices.data();
        }
      }
      ConvInput in;
      in.batch = c.batch, in.height = c.height, in.width = c.width;
      auto observe = [&](Layer& l) {
        return s.kind == LayerKind::Dense ? l.sketchCovarianceDense(x.data(), c.batch, sketch)
                                          : l.sketchCovarianceConv(x.data(), in, sketch);
      };
      const bool okA = observe(*la);
      if (lb) {
        const bool okB = observe(*lb);
        check(r, failures, okA && okB, "sketch accepted on both backends");
        std::vector<float> ca(static_cast<size_t>(p * k)), cb(ca.size());
        la->readPendingCovariance(ca.data());
        lb->readPendingCovariance(cb.data());
        worstC = std::max(worstC, relativeError(ca, cb));
        if (t == 0) {
          // A non-finite activation is refused by both and leaves the pending statistics alone.
          std::vector<float> bad = x;
          bad[bad.size() / 2] = NAN;
          std::swap(x, bad);
          check(r, failures, !observe(*la) && !observe(*lb), "non-finite activations refused on both");
          std::swap(x, bad);
          check(r, failures, la->hasPendingStatistics() && lb->hasPendingStatistics(),
                "pending statistics kept after a refused call");
        }
        lb->commitStatistics(c.statDecay);
        // The resident runs observe activations in their own memory kind (device: read in place;
        // page-locked: an asynchronous copy): the same values, so the same bits as the host input.
        for (auto& run : resident) {
          BackendArray xr(*b, run->weight.kind(), x);
          auto observeResident = [&] {
            return s.kind == LayerKind::Dense ? run->layer->sketchCovarianceDense(xr.data(), c.batch, sketch, xr.kind())
                                              : run->layer->sketchCovarianceConv(xr.data(), in, sketch, xr.kind());
          };
          check(r, failures, observeResident(), "sketch accepted (resident activations)");
          std::vector<float> cr(cb.size());
          run->layer->readPendingCovariance(cr.data());
          residentActivationsIdentical = residentActivationsIdentical && bitwiseEqual(cr, cb);
          if (t == 0) {
            std::vector<float> bad = x;
            bad[bad.size() / 3] = -INFINITY;
            xr.upload(bad);
            check(r, failures, !observeResident() && run->layer->hasPendingStatistics(),
                  "non-finite resident activations refused, pending statistics kept");
          }
          run->layer->commitStatistics(c.statDecay);
        }
      }
      la->commitStatistics(c.statDecay);
    }
    if (!plain && t % c.tinv == 0) {
      const FactorReport ra = la->nystromFactors(c.damping, c.variant);
      if (lb) {
        // CUDA rebuilds as an optimizer step does: through the batched entry point.
        const FactorReport rb = b->nystromFactorsBatch({lb.get()}, c.damping, c.variant).front();
        if (ra.status != rb.status) statusesEqual = false;
        for (auto& run : resident) {
          if (b->nystromFactorsBatch({run->layer.get()}, c.damping, c.variant).front().status != rb.status) {
            residentIdentical = false;
          }
        }
        LayerState sa, sb;
        la->exportState(sa);
        lb->exportState(sb);
        if (sa.hasFactors && sb.hasFactors) {
          const std::vector<float> ha = lambdaHat(sa), hb = lambdaHat(sb);
          keptDirections = std::max<size_t>(keptDirections, static_cast<size_t>(std::count_if(
                                                                ha.begin(), ha.end(), [](float v) { return v > 0.0f; })));
          double scale = 1.0;
          for (float v : ha) scale = std::max(scale, 1.0 + v);
          double d = ha.size() == hb.size() ? 0.0 : INFINITY;
          for (size_t i = 0; i < ha.size() && i < hb.size(); ++i) d = std::max(d, std::fabs(double(ha[i]) - hb[i]));
          worstLambda = std::max(worstLambda, d / scale);
        }
      }
    }
    std::vector<float> g = rng.uniform(static_cast<size_t>(n), 0.05f);
    std::vector<float> gb = s.bias ? rng.uniform(static_cast<size_t>(s.fanOut), 0.05f) : std::vector<float>();
    la->preconditionedMomentumStep(hostOperands(wa.data(), s.bias ? ba.data() : nullptr, g.data(), s.bias ? gb.data() : nullptr),
                                   c.scalars);
    if (lb) {
      lb->preconditionedMomentumStep(hostOperands(wb.data(), s.bias ? bb.data() : nullptr, g.data(), s.bias ? gb.data() : nullptr),
                                     c.scalars);
      for (auto& run : resident) {
        run->grad.upload(g);
        run->gradBias.upload(gb);
        run->layer->preconditionedMomentumStep(run->operands(s.bias), c.scalars);
      }
      b->synchronize();
      worstW = std::max(worstW, relativeError(wa, wb));
      if (s.bias) worstW = std::max(worstW, relativeError(ba, bb));
      for (auto& run : resident) {
        residentIdentical = residentIdentical && bitwiseEqual(run->weight.download(), wb) && bitwiseEqual(run->bias.download(), bb);
      }
    }
  }

  r.json.str("name", c.name);
  if (lb) {
    LayerState sa, sb;
    la->exportState(sa);
    lb->exportState(sb);
    if (!c.callerSketch) philoxIdentical = bitwiseEqual(sa.sketch, sb.sketch) && sa.indices == sb.indices;
    const double emaError = relativeError(sa.ema, sb.ema);
    const double momentumError = std::max(relativeError(sa.momentum, sb.momentum), relativeError(sa.biasMomentum, sb.biasMomentum));
    check(r, failures, worstW <= tol.weights, "weights within " + num(tol.weights) + " (worst " + num(worstW) + ")");
    check(r, failures, worstC <= tol.covariance, "pending covariance within " + num(tol.covariance) + " (worst " + num(worstC) + ")");
    check(r, failures, emaError <= tol.state, "ema within " + num(tol.state) + " (" + num(emaError) + ")");
    check(r, failures, momentumError <= tol.state, "momentum within " + num(tol.state) + " (" + num(momentumError) + ")");
    check(r, failures, worstLambda <= tol.lambda, "lambda-hat within " + num(tol.lambda) + " (worst " + num(worstLambda) + ")");
    check(r, failures, philoxIdentical, "Philox sketches bit-identical");
    check(r, failures, statusesEqual, "factor statuses equal");
    if (!plain && !s.fullCovariance()) {
      check(r, failures, keptDirections > 0, "some direction kept (lambda-hat > 0): the low-rank term was compared");
    }
    check(r, failures, residentIdentical, "device-resident and page-locked weights bit-identical to host arrays on CUDA");
    check(r, failures, residentActivationsIdentical,
          "statistics from device-resident and page-locked activations bit-identical to host activations on CUDA");
    check(r, failures, sa.emaSteps == sb.emaSteps && sa.decayProduct == sb.decayProduct && sa.hasFactors == sb.hasFactors &&
                           sa.factorFallbacks == sb.factorFallbacks && sa.inverseDamping == sb.inverseDamping,
          "counters equal");
    // State round trip: the CPU's state imported into a fresh CUDA layer exports bit-identically.
    std::unique_ptr<Layer> lc = b->createLayer(s);
    lc->importState(sa);
    LayerState sc;
    lc->exportState(sc);
    check(r, failures,
          bitwiseEqual(sa.ema, sc.ema) && bitwiseEqual(sa.sketch, sc.sketch) && sa.indices == sc.indices &&
              bitwiseEqual(sa.basis, sc.basis) && bitwiseEqual(sa.coefficients, sc.coefficients) &&
              bitwiseEqual(sa.momentum, sc.momentum) && bitwiseEqual(sa.biasMomentum, sc.biasMomentum) &&
              sa.emaSteps == sc.emaSteps && sa.decayProduct == sc.decayProduct,
          "state round trip CPU -> CUDA -> host bit-identical");
    r.json.number("weights", worstW).number("covariance", worstC).number("ema", emaError).number("momentum", momentumError)
        .number("lambdaHat", worstLambda).number("keptDirections", double(keptDirections))
        .boolean("philoxIdentical", philoxIdentical).boolean("statusesEqual", statusesEqual)
        .boolean("residentIdentical", residentIdentical)
        .boolean("residentActivationsIdentical", residentActivationsIdentical)
        .number("stateBytesCuda", static_cast<double>(lb->stateBytes()));
  }
  r.seconds = seconds() - t0;
  r.json.number("seconds", r.seconds).boolean("ok", r.ok).add("failures", array(failures));
  return r;
}

// The Philox draw itself, CPU against CUDA, through a layer's committed sketch (no sketch input).
Object philoxCheck(Backend& cuda, bool& identical) {
  Object o;
  identical = true;
  int draws = 0;
  for (int64_t p : {3, 17, 257, 1031}) {
    for (uint64_t step : {0ull, 1ull, 5ull}) {
      LayerSpec s = dense(p, 4, false, std::min<int64_t>(p - 1, 33), SketchKind::Gaussian, WeightLayout::InOut);
      s.seed = 0xfeedfacecafebeefull + step;
      s.layerKey = static_cast<uint32_t>(p);
      std::unique_ptr<Layer> l = cuda.createLayer(s);
      std::vector<float> x(static_cast<size_t>(2 * p), 0.25f);
      for (uint64_t i = 0; i <= step; ++i) {
        l->sketchCovarianceDense(x.data(), 2, SketchInput{});
        l->commitStatistics(0.9);
      }
      LayerState st;
      l->exportState(st);
      std::vector<float> expected(static_cast<size_t>(p * s.r()));
      philoxGaussianSketch(s.seed, s.layerKey, step, p, s.r(), expected.data());
      identical = identical && bitwiseEqual(st.sketch, expected);
      ++draws;
    }
  }
  o.boolean("gaussianBitIdentical", identical).number("draws", draws);
  return o;
}

// Many layers rebuilt in one nystromFactorsBatch (layers of equal and of different rank, a subcolumn
// sketch, a full-covariance layer), on the CPU, on CUDA's batched path and on its per-layer path
// (NYSACT_CUDA_FACTORS=per-layer): statuses equal, λ̂ within the parity bound, and the
// preconditioned direction (one step at lr 1, no momentum, no decay: θ − P G) within 1e-4, which
// checks the bases independently of their column order and signs.
// Without CUDA, only the CPU's batch runs (a smoke run of the harness).
Object batchParity(Backend& cpu, Backend* cuda, bool& ok) {
  Object o;
  ok = true;
  const Tolerances tol;
  std::vector<LayerSpec> specs = {
      dense(96, 40, true, 10, SketchKind::Gaussian, WeightLayout::InOut),
      dense(200, 17, false, 10, SketchKind::Gaussian, WeightLayout::OutIn),
      dense(70, 33, false, 8, SketchKind::Subcolumns, WeightLayout::OutIn),
      dense(130, 20, true, 16, SketchKind::Gaussian, WeightLayout::InOut),
      dense(51, 12, false, 10, SketchKind::Subcolumns, WeightLayout::InOut),
      dense(12, 9, true, 50, SketchKind::Gaussian, WeightLayout::InOut),
      conv(3, 3, 8, 16, 1, 1, 1, 1, Padding::Same, true, 16, SketchKind::Gaussian),
      // Its statistics get an infinite entry: both backends must refuse them (P = I/ρ, as it has
      // no earlier factors), and on CUDA's batched path leave the rest of its group unaffected.
      dense(60, 14, true, 10, SketchKind::Gaussian, WeightLayout::InOut),
  };
  const size_t infiniteLayer = specs.size() - 1;
  for (size_t i = 0; i < specs.size(); ++i) specs[i].layerKey = static_cast<uint32_t>(100 + i);
  std::vector<std::string> rows;
  for (NystromVariant variant : {NystromVariant::Reference, NystromVariant::Textbook}) {
    struct Run {
      std::vector<std::unique_ptr<Layer>> layers;
      std::vector<FactorReport> reports;
      std::vector<std::vector<float>> weights, lambdas;
    };
    auto run = [&](Backend& backend, bool perLayer) {
      if (perLayer) setenv("NYSACT_CUDA_FACTORS", "per-layer", 1);
      Run r;
      Random rng(0xBA7C4 + static_cast<uint64_t>(variant));
      std::vector<Layer*> raw;
      for (const LayerSpec& s : specs) {
        r.layers.push_back(backend.createLayer(s));
        Layer& l = *r.layers.back();
        for (int step = 0; step < 2; ++step) {
          if (s.kind == LayerKind::Dense) {
            const std::vector<float> x = rng.uniform(static_cast<size_t>(300 * s.fanIn), 1.0f);
            l.sketchCovarianceDense(x.data(), 300, SketchInput{});
          } else {
            const std::vector<float> x = rng.uniform(static_cast<size_t>(4 * 12 * 12 * s.inChannels), 1.0f);
            ConvInput in;
            in.batch = 4, in.height = 12, in.width = 12;
            l.sketchCovarianceConv(x.data(), in, SketchInput{});
          }
          if (r.layers.size() - 1 == infiniteLayer && step == 1) {
            std::vector<float> pending(static_cast<size_t>(s.p() * s.r()));
            l.readPendingCovariance(pending.data());
            pending[3] = INFINITY;
            l.writePendingCovariance(pending.data());
          }
          l.commitStatistics(0.95);
        }
        raw.push_back(&l);
      }
      r.reports = backend.nystromFactorsBatch(raw, 0.5, variant);
      StepScalars unit;
      unit.lr = 1.0;
      unit.momentum = 0.0;
      unit.weightDecay = 0.0;
      for (size_t i = 0; i < specs.size(); ++i) {
        const LayerSpec& s = specs[i];
        std::vector<float> w(static_cast<size_t>(s.weightSize()), 0.0f), bias(s.bias ? static_cast<size_t>(s.fanOut) : 0, 0.0f);
        const std::vector<float> g = rng.uniform(w.size(), 1.0f), gb = rng.uniform(bias.size(), 1.0f);
        r.layers[i]->preconditionedMomentumStep(
            hostOperands(w.data(), s.bias ? bias.data() : nullptr, g.data(), s.bias ? gb.data() : nullptr), unit);
        backend.synchronize();
        w.insert(w.end(), bias.begin(), bias.end());
        r.weights.push_back(w);
        LayerState st;
        r.layers[i]->exportState(st);
        r.lambdas.push_back(lambdaHat(st));
      }
      if (perLayer) unsetenv("NYSACT_CUDA_FACTORS");
      return r;
    };
    const Run reference = run(cpu, false);
    for (bool perLayer : {false, true}) {
      if (cuda == nullptr) break;
      const Run other = run(*cuda, perLayer);
      double worstW = 0, worstLambda = 0;
      bool statuses = true;
      for (size_t i = 0; i < specs.size(); ++i) {
        statuses = statuses && reference.reports[i].status == other.reports[i].status;
        worstW = std::max(worstW, relativeError(reference.weights[i], other.weights[i]));
        const std::vector<float>& ha = reference.lambdas[i];
        const std::vector<float>& hb = other.lambdas[i];
        double scale = 1.0, d = ha.size() == hb.size() ? 0.0 : INFINITY;
        for (float v : ha) scale = std::max(scale, 1.0 + v);
        for (size_t j = 0; j < ha.size() && j < hb.size(); ++j) d = std::max(d, std::fabs(double(ha[j]) - hb[j]));
        worstLambda = std::max(worstLambda, d / scale);
      }
      // It has no earlier factors to keep: P = I/ρ.
      const bool refused = other.reports[infiniteLayer].status == FactorStatus::Identity &&
                           other.reports[infiniteLayer].detail.find("not finite") != std::string::npos;
      const bool good = statuses && refused && worstW <= tol.weights && worstLambda <= tol.lambda;
      ok = ok && good;
      rows.push_back(Object()
                         .str("variant", variant == NystromVariant::Reference ? "reference" : "textbook")
                         .str("cudaPath", perLayer ? "per-layer" : "batched")
                         .number("layers", double(specs.size())).boolean("statusesEqual", statuses)
                         .boolean("infiniteStatisticsRefused", refused)
                         .number("direction", worstW).number("lambdaHat", worstLambda).boolean("ok", good)
                         .json(4));
    }
  }
  o.str("mode", cuda != nullptr ? "cpu-vs-cuda" : "cpu only (harness smoke run; nothing compared)")
      .number("directionBound", tol.weights).number("lambdaHatBound", tol.lambda).add("runs", array(rows));
  return o;
}

// The batched update (Backend::preconditionedMomentumStepBatch: shared fused-kernel launches for the
// layers whose operands live on the device) against the same layers stepped one by one: weights,
// biases and momentum must be equal bit for bit after three steps.  Layers of both layouts, with
// and without a bias, a full-covariance layer, plain parameters (a multi-tensor momentum kernel) and
// a layer with host operands (stepped one by one inside the batch), and enough layers of each kind
// to need more than one launch (48 preconditioned, 96 plain per launch).  Also on the CPU (the default loop), where it is trivially true.
Object stepBatchParity(Backend& backend, bool& ok) {
  std::vector<LayerSpec> specs = {
      dense(96, 40, true, 10, SketchKind::Gaussian, WeightLayout::InOut),
      dense(70, 33, false, 8, SketchKind::Gaussian, WeightLayout::OutIn),
      dense(130, 20, true, 16, SketchKind::Gaussian, WeightLayout::OutIn),
      conv(3, 3, 8, 16, 1, 1, 1, 1, Padding::Same, true, 16, SketchKind::Gaussian),
      dense(12, 9, true, 50, SketchKind::Gaussian, WeightLayout::InOut),  // full covariance
  };
  for (int i = 0; i < 60; ++i) {
    specs.push_back(dense(3 + i % 7, 2 + i % 5, i % 2 == 0, 2, SketchKind::Gaussian,
                          i % 3 == 0 ? WeightLayout::OutIn : WeightLayout::InOut));
  }
  // Plain parameters: more than one multi-tensor launch's 96, of sizes across its 1024-element chunks.
  for (int i = 0; i < 110; ++i) {
    LayerSpec plain;
    plain.kind = LayerKind::Plain;
    plain.size = 1 + (i * 397) % 2600;
    specs.push_back(plain);
  }
  const size_t hostLayer = 1;  // its operands stay in host memory
  struct Arrays {
    std::unique_ptr<Layer> layer;
    std::vector<float> hostWeight, hostBias;
    std::unique_ptr<BackendArray> weight, bias, grad, gradBias;
  };
  Random rng(0x57E9);
  std::vector<Arrays> batched, single;
  std::vector<std::vector<float>> grads, gradBiases;
  for (size_t i = 0; i < specs.size(); ++i) {
    LayerSpec& s = specs[i];
    s.layerKey = static_cast<uint32_t>(300 + i);
    const std::vector<float> w = rng.uniform(static_cast<size_t>(s.weightSize()), 0.1f);
    const std::vector<float> b = s.bias ? rng.uniform(static_cast<size_t>(s.fanOut), 0.1f) : std::vector<float>();
    grads.push_back(rng.uniform(w.size(), 0.01f));
    gradBiases.push_back(rng.uniform(b.size(), 0.01f));
    LayerState st;
    bool factors = false;
    if (s.kind != LayerKind::Plain) {
      std::unique_ptr<Layer> probe = backend.createLayer(s);
      probe->exportState(st);
      st.basis = rng.uniform(static_cast<size_t>(s.p() * s.r()), 0.2f);
      st.coefficients = rng.uniform(static_cast<size_t>(s.r()), 0.5f);
      st.inverseDamping = 0.7;
      st.hasFactors = true;
      factors = true;
    }
    for (std::vector<Arrays>* set : {&batched, &single}) {
      Arrays a;
      a.layer = backend.createLayer(s);
      if (factors) a.layer->importState(st);
      const MemoryKind kind = i == hostLayer ? MemoryKind::Host : MemoryKind::Device;
      if (kind == MemoryKind::Host) {
        a.hostWeight = w;
        a.hostBias = b;
      } else {
        a.weight = std::make_unique<BackendArray>(backend, kind, w);
        a.bias = std::make_unique<BackendArray>(backend, kind, b);
        a.grad = std::make_unique<BackendArray>(backend, kind, grads.back());
        a.gradBias = std::make_unique<BackendArray>(backend, kind, gradBiases.back());
      }
      set->push_back(std::move(a));
    }
  }
  auto operands = [&](Arrays& a, size_t i) {
    const bool bias = specs[i].bias;
    if (!a.weight) {
      return hostOperands(a.hostWeight.data(), bias ? a.hostBias.data() : nullptr, grads[i].data(),
                          bias ? gradBiases[i].data() : nullptr);
    }
    StepOperands o;
    o.weight = a.weight->data();
    o.gradWeight = a.grad->data();
    o.bias = bias ? a.bias->data() : nullptr;
    o.gradBias = bias ? a.gradBias->data() : nullptr;
    o.weightMemory = o.gradWeightMemory = o.biasMemory = o.gradBiasMemory = a.weight->kind();
    return o;
  };
  StepScalars scalars;
  scalars.lr = 0.05;
  scalars.momentum = 0.9;
  scalars.weightDecay = 5e-4;
  for (int step = 0; step < 3; ++step) {
    scalars.nesterov = step == 2;
    std::vector<Layer*> layers;
    std::vector<StepOperands> ops;
    for (size_t i = 0; i < specs.size(); ++i) {
      layers.push_back(batched[i].layer.get());
      ops.push_back(operands(batched[i], i));
      single[i].layer->preconditionedMomentumStep(operands(single[i], i), scalars);
    }
    backend.preconditionedMomentumStepBatch(layers, ops, scalars);
    backend.synchronize();
  }
  size_t mismatches = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto values = [&](Arrays& a) {
      std::vector<float> v = a.weight ? a.weight->download() : a.hostWeight;
      const std::vector<float> b = a.weight ? a.bias->download() : a.hostBias;
      v.insert(v.end(), b.begin(), b.end());
      LayerState st;
      a.layer->exportState(st);
      v.insert(v.end(), st.momentum.begin(), st.momentum.end());
      v.insert(v.end(), st.biasMomentum.begin(), st.biasMomentum.end());
      return v;
    };
    if (!bitwiseEqual(values(batched[i]), values(single[i]))) ++mismatches;
  }
  ok = mismatches == 0;
  return Object()
      .str("backend", backend.name()).number("layers", double(specs.size())).number("steps", 3)
      .number("layersNotBitIdentical", double(mismatches)).boolean("ok", ok);
}

// ---- ResNet-50 shapes ---------------------------------------------------------------------------

struct NetLayer {
  std::string name;
  int kh, kw, cin, cout, stride;
  int inH;  // input spatial size (square)
  bool bias;
};

std::vector<NetLayer> resnet50() {
  std::vector<NetLayer> layers;
  layers.push_back({"conv1", 7, 7, 3, 64, 2, 224, false});
  struct Stage { int blocks, width, out, inH; };
  const Stage stages[] = {{3, 64, 256, 56}, {4, 128, 512, 56}, {6, 256, 1024, 28}, {3, 512, 2048, 14}};
  int cin = 64;
  for (int si = 0; si < 4; ++si) {
    const Stage& st = stages[si];
    for (int b = 0; b < st.blocks; ++b) {
      const int stride = (b == 0 && si > 0) ? 2 : 1;
      const int h = b == 0 ? st.inH : st.inH / (si > 0 ? 2 : 1);
      const std::string base = "layer" + std::to_string(si + 1) + "." + std::to_string(b);
      layers.push_back({base + ".conv1", 1, 1, cin, st.width, 1, h, false});
      layers.push_back({base + ".conv2", 3, 3, st.width, st.width, stride, h, false});
      const int hOut = h / stride;
      layers.push_back({base + ".conv3", 1, 1, st.width, st.out, 1, hOut, false});
      if (b == 0) layers.push_back({base + ".downsample", 1, 1, cin, st.out, stride, h, false});
      cin = st.out;
    }
  }
  layers.push_back({"fc", 1, 1, 2048, 1000, 1, 1, true});
  return layers;
}

// Failure paths of the CUDA backend, driven by the host emulation's fault injection
// (NYSACT_CUDA_EMU_FAULTS, cuda/emu/emu.h): a cuSOLVER routine that reports failure, and device
// memory that runs out.  These paths need pathological matrices or a full GPU to reach on a device;
// the emulation reaches them on demand.  Run only where the CUDA device is the emulation.
Object faultChecks(Backend& cpu, Backend& cuda, bool& ok) {
  Object o;
  ok = true;
  std::vector<std::string> failures;
  auto check = [&](bool condition, const std::string& what) {
    if (!condition) {
      ok = false;
      failures.push_back(quote(what));
    }
  };
  struct Faults {  // sets NYSACT_CUDA_EMU_FAULTS (and NYSACT_CUDA_FACTORS) for its lifetime
    explicit Faults(const char* spec, bool perLayer = false) {
      setenv("NYSACT_CUDA_EMU_FAULTS", spec, 1);
      if (perLayer) setenv("NYSACT_CUDA_FACTORS", "per-layer", 1);
    }
    ~Faults() {
      unsetenv("NYSACT_CUDA_EMU_FAULTS");
      unsetenv("NYSACT_CUDA_FACTORS");
    }
  };
  const std::vector<LayerSpec> specs = {
      dense(96, 40, true, 10, SketchKind::Gaussian, WeightLayout::InOut),
      dense(70, 33, false, 8, SketchKind::Subcolumns, WeightLayout::OutIn),
      conv(3, 3, 8, 16, 1, 1, 1, 1, Padding::Same, true, 12, SketchKind::Gaussian),
  };
  // Layers with two committed statistics steps, the same on both backends.
  auto prepare = [&](Backend& backend) {
    std::vector<std::unique_ptr<Layer>> layers;
    Random rng(0xFA17);
    for (size_t i = 0; i < specs.size(); ++i) {
      LayerSpec s = specs[i];
      s.layerKey = static_cast<uint32_t>(300 + i);
      layers.push_back(backend.createLayer(s));
      for (int step = 0; step < 2; ++step) {
        if (s.kind == LayerKind::Dense) {
          const std::vector<float> x = rng.structured(200, s.fanIn);
          layers.back()->sketchCovarianceDense(x.data(), 200, SketchInput{});
        } else {
          const std::vector<float> x = rng.structured(3 * 10 * 10, s.inChannels);
          ConvInput in;
          in.batch = 3, in.height = 10, in.width = 10;
          layers.back()->sketchCovarianceConv(x.data(), in, SketchInput{});
        }
        layers.back()->commitStatistics(0.95);
      }
    }
    return layers;
  };
  auto raw = [](const std::vector<std::unique_ptr<Layer>>& layers) {
    std::vector<Layer*> out;
    for (const auto& l : layers) out.push_back(l.get());
    return out;
  };
  auto lambdas = [](Layer& l) {
    LayerState st;
    l.exportState(st);
    return lambdaHat(st);
  };
  const auto cpuLayers = prepare(cpu);
  const std::vector<FactorReport> cpuReports = cpu.nystromFactorsBatch(raw(cpuLayers), 0.5, NystromVariant::Reference);
  auto lambdasMatchCpu = [&](const std::vector<std::unique_ptr<Layer>>& layers, size_t i) {
    const std::vector<float> a = lambdas(*cpuLayers[i]), b = lambdas(*layers[i]);
    if (a.size() != b.size()) return false;
    double scale = 1.0, d = 0.0;
    for (float v : a) scale = std::max(scale, 1.0 + v);
    for (size_t j = 0; j < a.size(); ++j) d = std::max(d, std::fabs(double(a[j]) - b[j]));
    return d / scale <= 1e-3;
  };
  int cases = 0;

  // 1. One Cholesky of the batch fails: that layer reruns on the per-layer path, whose first
  //    attempt succeeds, so every layer still matches the CPU.
  {
    const auto layers = prepare(cuda);
    std::vector<FactorReport> reports;
    {
      Faults f("potrf:1");
      reports = cuda.nystromFactorsBatch(raw(layers), 0.5, NystromVariant::Reference);
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      check(reports[i].status == cpuReports[i].status, "potrf:1: layer " + std::to_string(i) + " status as on the CPU");
      check(lambdasMatchCpu(layers, i), "potrf:1: layer " + std::to_string(i) + " lambda-hat as on the CPU");
    }
    ++cases;
  }
  // 1b. On the per-layer path the first Cholesky fails once: the shift is enlarged (×10) and the
  //     second attempt succeeds: ShiftEnlarged, two attempts, the report worded as on the CPU.
  {
    const auto layers = prepare(cuda);
    std::vector<FactorReport> reports;
    {
      Faults f("potrf:1", true);
      reports = cuda.nystromFactorsBatch(raw(layers), 0.5, NystromVariant::Reference);
    }
    const FactorReport& r = reports[0];
    check(r.status == FactorStatus::ShiftEnlarged && r.attempts == 2 &&
              r.detail.rfind("Cholesky needed the shift enlarged 1 time(s) to ", 0) == 0 &&
              std::fabs(r.shift - 10.0 * cpuReports[0].shift) <= 1e-6 * std::fabs(r.shift),
          "potrf:1 (per-layer): layer 0 ShiftEnlarged after 2 attempts at 10x the CPU's shift (" + r.detail + "; attempts " +
              std::to_string(r.attempts) + ", CPU shift " + num(cpuReports[0].shift) + ")");
    for (size_t i = 1; i < specs.size(); ++i) {
      check(reports[i].status == cpuReports[i].status, "potrf:1 (per-layer): layer " + std::to_string(i) + " as on the CPU");
    }
    ++cases;
  }
  // 2. Every Cholesky fails: no factors yet -> Identity; with factors -> KeptPrevious, factors kept
  //    bit for bit; on both paths.
  for (bool perLayer : {false, true}) {
    const std::string tag = perLayer ? "potrf (per-layer): " : "potrf (batched): ";
    const auto layers = prepare(cuda);
    std::vector<FactorReport> first, later;
    {
      Faults f("potrf", perLayer);
      first = cuda.nystromFactorsBatch(raw(layers), 0.5, NystromVariant::Reference);
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      check(first[i].status == FactorStatus::Identity, tag + "no previous factors gives Identity, layer " + std::to_string(i));
      check(first[i].detail.find("Cholesky") != std::string::npos, tag + "the report names the Cholesky factorisation");
    }
    (void)cuda.nystromFactorsBatch(raw(layers), 0.5, NystromVariant::Reference);
    std::vector<LayerState> before(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) layers[i]->exportState(before[i]);
    {
      Faults f("potrf", perLayer);
      later = cuda.nystromFactorsBatch(raw(layers), 0.5, NystromVariant::Reference);
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      LayerState after;
      layers[i]->exportState(after);
      check(later[i].status == FactorStatus::KeptPrevious, tag + "with previous factors gives KeptPrevious, layer " + std::to_string(i));
      check(bitwiseEqual(before[i].basis, after.basis) && bitwiseEqual(before[i].coefficients, after.coefficients),
            tag + "the previous factors are kept bit for bit, layer " + std::to_string(i));
    }
    ++cases;
  }
  // 3. The first eigensolve of SᵀY fails (the first layer on the per-layer path; on the batched
  //    path the first layer of the first rank group): exactly that layer falls back, the others
  //    match the CPU.
  for (bool perLayer : {false, true}) {
    const std::string tag = perLayer ? "syev:1 (per-layer): " : "syev:1 (batched): ";
    const auto layers = prepare(cuda);
    std::vector<FactorReport> reports;
    {
      Faults f("syev:1", perLayer);
      reports = cuda.nystromFactorsBatch(raw(layers), 0.5, NystromVariant::Reference);
    }
    int fellBack = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      if (reports[i].status == FactorStatus::Identity && reports[i].detail.find("eigen") != std::string::npos) {
        ++fellBack;
        check(!perLayer || i == 0, tag + "the per-layer path fails the first layer");
      } else {
        check(reports[i].status == cpuReports[i].status && lambdasMatchCpu(layers, i),
              tag + "layer " + std::to_string(i) + " as on the CPU");
      }
    }
    check(fellBack == 1, tag + "exactly one layer falls back to Identity, naming the eigendecomposition (" +
                             std::to_string(fellBack) + ")");
    ++cases;
  }
  // 4. The per-layer path's SVD fails: Identity, naming the SVD.
  {
    const auto layers = prepare(cuda);
    std::vector<FactorReport> reports;
    {
      Faults f("gesvd", true);
      reports = cuda.nystromFactorsBatch(raw(layers), 0.5, NystromVariant::Reference);
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      check(reports[i].status == FactorStatus::Identity && reports[i].detail.find("SVD") != std::string::npos,
            "gesvd (per-layer): layer " + std::to_string(i) + " falls back to Identity, naming the SVD");
    }
    ++cases;
  }
  // 5. Device memory runs out: creating a large layer, and a statistics step that must grow the
  //    scratch arena, fail with ERR_NYSACT_NATIVE naming the allocation; the layer that failed to
  //    observe keeps its pending statistics bit for bit and works once memory is back.
  {
    auto nativeError = [&](const std::function<void()>& f, const std::string& what) {
      try {
        f();
        check(false, what + ": no error");
      } catch (const Error& e) {
        check(e.code() == "ERR_NYSACT_NATIVE" && std::string(e.what()).find("memory") != std::string::npos,
              what + ": ERR_NYSACT_NATIVE naming memory (got " + e.code() + ": " + e.what() + ")");
      }
    };
    {
      Faults f("malloc>1048576");
      nativeError([&] { cuda.createLayer(dense(2048, 1024, true, 32, SketchKind::Gaussian, WeightLayout::InOut)); },
                  "malloc>1MiB: a 2048x1024 layer");
    }
    LayerSpec s = dense(64, 16, false, 6, SketchKind::Gaussian, WeightLayout::InOut);
    s.layerKey = 400;
    std::unique_ptr<Layer> layer = cuda.createLayer(s);
    Random rng(0x0044);
    const std::vector<float> small = rng.structured(32, 64);
    layer->sketchCovarianceDense(small.data(), 32, SketchInput{});
    std::vector<float> pending(static_cast<size_t>(s.p() * s.r())), after(pending.size());
    layer->readPendingCovariance(pending.data());
    // 40000 rows of 64 floats: a 10 MB tile, far more than the arena holds so far (not with a tile
    // budget set below that by NYSACT_CUDA_TILE_BYTES: then the step needs no large allocation).
    const std::vector<float> large = rng.structured(40000, 64);
    if (std::getenv("NYSACT_CUDA_TILE_BYTES") == nullptr) {
      {
        Faults f("malloc>1048576");
        nativeError([&] { layer->sketchCovarianceDense(large.data(), 40000, SketchInput{}); },
                    "malloc>1MiB: a statistics step needing a 10 MB tile");
      }
      layer->readPendingCovariance(after.data());
      check(layer->hasPendingStatistics() && bitwiseEqual(pending, after),
            "malloc>1MiB: the pending statistics are kept bit for bit after the failed step");
    } else {
      o.str("tileFaultCheck", "skipped: NYSACT_CUDA_TILE_BYTES is set, so no statistics step needs a 10 MB tile");
    }
    check(layer->sketchCovarianceDense(large.data(), 40000, SketchInput{}), "memory back: the same step succeeds");
    std::unique_ptr<Layer> big = cuda.createLayer(dense(2048, 1024, true, 32, SketchKind::Gaussian, WeightLayout::InOut));
    check(big != nullptr, "memory back: the large layer can be created");
    ++cases;
  }
  o.number("cases", cases).boolean("ok", ok).add("failures", array(failures));
  return o;
}

// --smoke: every benchmark's code path on three tiny layers (for the CUDA host emulation, which
// runs the benchmark code to check it, not to time it: its figures mean nothing).
std::vector<NetLayer> smokeNet() {
  return {{"conv1", 3, 3, 3, 8, 2, 16, false}, {"conv2", 1, 1, 8, 16, 1, 8, false}, {"fc", 1, 1, 16, 10, 1, 1, true}};
}

LayerSpec specOf(const NetLayer& l, int64_t rank) {
  if (l.name == "fc") return dense(l.cin, l.cout, true, rank, SketchKind::Gaussian, WeightLayout::InOut);
  return conv(l.kh, l.kw, l.cin, l.cout, l.stride, l.stride, 1, 1, Padding::Same, l.bias, rank, SketchKind::Gaussian);
}

Object benchmarks(const CudaApi& api, Backend& cpu, Backend& cuda, int64_t batch, int repeats, bool quick, bool smoke) {
  Object o;
  if (smoke) o.str("smoke", "tiny shapes to run the benchmark code (--smoke): these times are not benchmarks");
  nysact_cuda_error error{};
  auto ok = [&](int32_t status) { checkCuda(status, error); };

  // Ceilings (METHOD.md): a large device-to-device copy and a large SGEMM.
  const uint64_t copyBytes = smoke ? (uint64_t{1} << 20) : quick ? (uint64_t{256} << 20) : (uint64_t{2} << 30);
  double copyMs = 0, gemmMs = 0;
  ok(api.benchCopy(copyBytes, repeats, &copyMs, &error));
  const int64_t g = smoke ? 64 : quick ? 4096 : 8192;
  ok(api.benchSgemm(g, g, g, repeats, &gemmMs, &error));
  const double copyGBs = 2.0 * static_cast<double>(copyBytes) / (copyMs * 1e-3) / 1e9;
  const double gemmTflops = 2.0 * double(g) * g * g / (gemmMs * 1e-3) / 1e12;
  o.add("ceilings", Object()
                        .number("copyBytes", double(copyBytes)).number("copyMs", copyMs)
                        .number("copyGBps_readPlusWrite", copyGBs)
                        .number("sgemmSize", double(g)).number("sgemmMs", gemmMs).number("sgemmTflops", gemmTflops)
                        .json(2));

  const std::vector<NetLayer> net = smoke ? smokeNet() : resnet50();
  const int64_t rank = smoke ? 4 : 50;

  // Fused update over every ResNet-50 weight (InOut layout, as tfjs stores it), per layer (device
  // events around each layer's update, summed), at rank r.
  auto fusedUpdate = [&](int64_t r) {
    double totalMs = 0, totalBytes = 0;
    std::vector<std::string> rows;
    for (const NetLayer& l : net) {
      const int64_t p = int64_t{l.kh} * l.kw * l.cin, q = l.cout;
      double ms = 0;
      ok(api.benchFusedUpdate(p, q, r, 0, repeats, &ms, &error));
      // Bytes the update must move: read G, θ, buf and write θ, buf (fp32).
      const double bytes = 20.0 * double(p) * double(q);
      totalMs += ms;
      totalBytes += bytes;
      if (!quick || rows.size() < 8) {
        rows.push_back(Object().str("layer", l.name).number("p", double(p)).number("q", double(q)).number("ms", ms)
                           .number("fractionOfCopyBandwidth", bytes / (ms * 1e-3) / 1e9 / copyGBs).json(4));
      }
    }
    return Object()
                             .number("rank", double(r)).number("layers", double(net.size()))
                             .number("totalMs", totalMs).number("bytes", totalBytes)
                             .number("GBps", totalBytes / (totalMs * 1e-3) / 1e9)
                             .number("fractionOfCopyBandwidth", totalBytes / (totalMs * 1e-3) / 1e9 / copyGBs)
                             .str("note", "bytes = 5 fp32 accesses per weight (read G, θ, buf; write θ, buf); the "
                                          "M = G U product reads G once more and is included in the time")
                             .add("perLayer", array(rows))
                             .json(2);
  };
  // Rank 50 (the ResNet-50 rank) and rank 10 (SPEC §1's default): at rank 50 the update's
  // 4·r flops per weight (M = G U and the low-rank term) against its 20 bytes are near the FP32
  // compute-to-bandwidth balance of a large GPU; at rank 10 it is bandwidth-bound.
  o.add("fusedUpdate", fusedUpdate(rank));
  o.add("fusedUpdateRank10", fusedUpdate(smoke ? 2 : 10));

  // Statistics step on every ResNet-50 layer at `batch` (224² input), rank 50, resident input.
  {
    double totalMs = 0, totalFlop = 0;
    std::vector<std::string> rows;
    for (const NetLayer& l : net) {
      const LayerSpec s = specOf(l, rank);
      const nysact_cuda_layer_spec cs = toCudaSpec(s);
      double ms = 0;
      int64_t rowsN;
      if (s.kind == LayerKind::Dense) {
        ok(api.benchSketch(&cs, batch, 0, 0, repeats, &ms, &error));
        rowsN = batch;
      } else {
        ok(api.benchSketch(&cs, batch, l.inH, l.inH, repeats, &ms, &error));
        const ConvGeometry geo = convGeometry(s, l.inH, l.inH);
        rowsN = batch * geo.outH * geo.outW;
      }
      // Z = X̃ S and C = X̃ᵀ Z: 2·n·p·k multiply-adds.
      const double flop = 4.0 * double(rowsN) * double(s.p()) * double(s.r());
      totalMs += ms;
      totalFlop += flop;
      if (!quick || rows.size() < 8) {
        rows.push_back(Object().str("layer", l.name).number("n", double(rowsN)).number("p", double(s.p()))
                           .number("ms", ms).number("tflops", flop / (ms * 1e-3) / 1e12)
                           .number("fractionOfSgemm", flop / (ms * 1e-3) / 1e12 / gemmTflops).json(4));
      }
    }
    o.add("sketch", Object()
                        .number("batch", double(batch)).number("rank", double(rank)).number("totalMs", totalMs)
                        .number("tflop", totalFlop / 1e12).number("tflops", totalFlop / (totalMs * 1e-3) / 1e12)
                        .number("fractionOfSgemm", totalFlop / (totalMs * 1e-3) / 1e12 / gemmTflops)
                        .add("perLayer", array(rows))
                        .json(2));
  }

  // Inverse update of every ResNet-50 layer at rank 50 (statistics from 256 random rows), as an
  // optimizer step runs it: one nystromFactorsBatch over all layers, then a synchronisation.  CUDA:
  // the batched path and the per-layer path (NYSACT_CUDA_FACTORS=per-layer), median of `repeats`
  // after a warm-up; the CPU once.
  {
    Random rng(42);
    const size_t count = quick ? std::min<size_t>(6, net.size()) : net.size();
    std::vector<std::unique_ptr<Layer>> cudaLayers, cpuLayers;
    std::vector<Layer*> cudaRaw, cpuRaw;
    for (size_t i = 0; i < count; ++i) {
      const NetLayer& l = net[i];
      LayerSpec s = dense(int64_t{l.kh} * l.kw * l.cin, l.cout, l.bias, rank, SketchKind::Gaussian, WeightLayout::InOut);
      s.layerKey = static_cast<uint32_t>(i);
      const std::vector<float> x = rng.uniform(static_cast<size_t>(256 * s.fanIn), 1.0f);
      for (Backend* backend : {&cuda, &cpu}) {
        auto& owned = backend == &cuda ? cudaLayers : cpuLayers;
        owned.push_back(backend->createLayer(s));
        owned.back()->sketchCovarianceDense(x.data(), 256, SketchInput{});
        owned.back()->commitStatistics(0.95);
        (backend == &cuda ? cudaRaw : cpuRaw).push_back(owned.back().get());
      }
    }
    int nonOk = 0, nonOkPerLayer = 0;
    auto timeCuda = [&](bool perLayer, int& nonOkCount) {
      if (perLayer) setenv("NYSACT_CUDA_FACTORS", "per-layer", 1);
      cuda.nystromFactorsBatch(cudaRaw, 1.0, NystromVariant::Reference);  // warm-up (workspaces, handles)
      cuda.synchronize();
      std::vector<double> ms;
      for (int k = 0; k < std::max(repeats, 3); ++k) {
        const double t0 = seconds();
        const std::vector<FactorReport> reports = cuda.nystromFactorsBatch(cudaRaw, 1.0, NystromVariant::Reference);
        cuda.synchronize();
        ms.push_back((seconds() - t0) * 1e3);
        nonOkCount = 0;
        for (const FactorReport& r : reports) nonOkCount += r.status != FactorStatus::Ok;
      }
      if (perLayer) unsetenv("NYSACT_CUDA_FACTORS");
      std::sort(ms.begin(), ms.end());
      return ms[ms.size() / 2];
    };
    const double batchedMs = timeCuda(false, nonOk);
    const double perLayerMs = timeCuda(true, nonOkPerLayer);
    const double t0 = seconds();
    const std::vector<FactorReport> cpuReports = cpu.nystromFactorsBatch(cpuRaw, 1.0, NystromVariant::Reference);
    const double cpuMs = (seconds() - t0) * 1e3;
    int cpuNonOk = 0;
    for (const FactorReport& r : cpuReports) cpuNonOk += r.status != FactorStatus::Ok;
    o.add("inverse", Object()
                         .number("layers", double(count)).number("rank", double(rank))
                         .number("cudaBatchedMs", batchedMs).number("cudaPerLayerMs", perLayerMs)
                         .number("batchedSpeedup", perLayerMs / batchedMs).number("targetMs", 5.0)
                         .boolean("withinTarget", quick || smoke ? false : batchedMs <= 5.0)
                         .number("cpuMs", cpuMs).number("cpuThreads", cpuThreads())
                         .number("nonOkStatuses", nonOk).number("nonOkStatusesPerLayer", nonOkPerLayer)
                         .number("nonOkStatusesCpu", cpuNonOk)
                         .str("note", "wall time of one nystromFactorsBatch over all layers plus a stream "
                                      "synchronisation (median); withinTarget only for the full ResNet-50 set")
                         .json(2));
  }

  // A whole update step over every ResNet-50 layer (fused preconditioned updates of all weights and
  // the fc bias, then one synchronisation), with weights and gradients resident on the device,
  // against the same step from pageable and from page-locked host arrays (the host path copies G
  // and θ in and θ out per layer).  Factors are imported (random basis, rank 50): only the per-step
  // work is timed; statistics and inverse steps are timed above.  At rank r.
  auto wholeStep = [&](int64_t r) {
    struct NetRun {
      std::unique_ptr<Layer> layer;
      std::unique_ptr<Layer> sgdWeight, sgdBias;  // plain SGD-momentum layers over the same parameters
      std::vector<float> weight, bias, grad, gradBias;
      std::unique_ptr<BackendArray> dWeight, dBias, dGrad, dGradBias, pWeight, pBias, pGrad, pGradBias;
    };
    Random rng(7);
    std::vector<NetRun> runs;
    const size_t count = quick ? std::min<size_t>(8, net.size()) : net.size();
    double parameters = 0;
    for (size_t i = 0; i < count; ++i) {
      const NetLayer& l = net[i];
      const LayerSpec s = specOf(l, r);
      NetRun run;
      run.layer = cuda.createLayer(s);
      LayerState st;
      run.layer->exportState(st);
      st.basis = rng.uniform(static_cast<size_t>(s.p() * s.r()), 0.05f);
      st.coefficients = rng.uniform(static_cast<size_t>(s.r()), 0.5f);
      st.inverseDamping = 1.0;
      st.hasFactors = true;
      run.layer->importState(st);
      run.weight = rng.uniform(static_cast<size_t>(s.weightSize()), 0.05f);
      run.grad = rng.uniform(run.weight.size(), 0.01f);
      run.bias = s.bias ? rng.uniform(static_cast<size_t>(s.fanOut), 0.05f) : std::vector<float>();
      run.gradBias = s.bias ? rng.uniform(run.bias.size(), 0.01f) : std::vector<float>();
      for (auto [kind, w, b, g, gb] : {std::make_tuple(MemoryKind::Device, &run.dWeight, &run.dBias, &run.dGrad, &run.dGradBias),
                                       std::make_tuple(MemoryKind::PinnedHost, &run.pWeight, &run.pBias, &run.pGrad, &run.pGradBias)}) {
        *w = std::make_unique<BackendArray>(cuda, kind, run.weight);
        *b = std::make_unique<BackendArray>(cuda, kind, run.bias);
        *g = std::make_unique<BackendArray>(cuda, kind, run.grad);
        *gb = std::make_unique<BackendArray>(cuda, kind, run.gradBias);
      }
      LayerSpec plain;
      plain.kind = LayerKind::Plain;
      plain.size = s.weightSize();
      run.sgdWeight = cuda.createLayer(plain);
      if (s.bias) {
        plain.size = s.fanOut;
        run.sgdBias = cuda.createLayer(plain);
      }
      parameters += double(run.weight.size() + run.bias.size());
      runs.push_back(std::move(run));
    }
    StepScalars scalars;
    scalars.lr = 1e-3;
    scalars.momentum = 0.9;
    scalars.weightDecay = 5e-4;
    enum Path { Host, Pinned, Device, DevicePerLayer, SgdDevice };
    // As the addon's step plan runs it: first the memory reservation (nothing to allocate after the
    // warm-up; its host-side cost is part of the step), then the updates as one batch
    // (preconditionedMomentumStepBatch: device-resident layers share fused-kernel launches), one
    // sync.  DevicePerLayer: the same with NYSACT_CUDA_STEP=per-layer (one launch per layer).
    std::vector<Layer*> planLayers, sgdLayers;
    for (NetRun& run : runs) {
      planLayers.push_back(run.layer.get());
      sgdLayers.push_back(run.sgdWeight.get());
      if (run.sgdBias) sgdLayers.push_back(run.sgdBias.get());
    }
    auto step = [&](Path path) {
      if (path == DevicePerLayer) setenv("NYSACT_CUDA_STEP", "per-layer", 1);
      const std::vector<Layer*>& reserved = path == SgdDevice ? sgdLayers : planLayers;
      std::vector<StepOperands> kinds(reserved.size());
      const MemoryKind kind = path == Host ? MemoryKind::Host : path == Pinned ? MemoryKind::PinnedHost : MemoryKind::Device;
      for (StepOperands& k : kinds) k.weightMemory = k.biasMemory = k.gradWeightMemory = k.gradBiasMemory = kind;
      cuda.reserveStep(reserved, std::vector<bool>(reserved.size(), false), kinds, 1.0, NystromVariant::Reference);
      std::vector<StepOperands> ops;
      for (NetRun& run : runs) {
        if (path == SgdDevice) {
          // The baseline: plain SGD-momentum (momentum and weight decay, no preconditioner) on the
          // same device-resident weights and gradients, as plain parameters (the multi-tensor
          // momentum kernel).
          auto plain = [&](const BackendArray& w, const BackendArray& g) {
            StepOperands o;
            o.weight = w.data();
            o.gradWeight = g.data();
            o.weightMemory = o.gradWeightMemory = w.kind();
            ops.push_back(o);
          };
          plain(*run.dWeight, *run.dGrad);
          if (run.sgdBias) plain(*run.dBias, *run.dGradBias);
          continue;
        }
        const bool bias = run.layer->spec().bias;
        StepOperands o;
        if (path == Host) {
          o = hostOperands(run.weight.data(), bias ? run.bias.data() : nullptr, run.grad.data(), bias ? run.gradBias.data() : nullptr);
        } else {
          const bool device = path == Device || path == DevicePerLayer;
          const BackendArray& w = device ? *run.dWeight : *run.pWeight;
          const BackendArray& b = device ? *run.dBias : *run.pBias;
          const BackendArray& g = device ? *run.dGrad : *run.pGrad;
          const BackendArray& gb = device ? *run.dGradBias : *run.pGradBias;
          o.weight = w.data();
          o.gradWeight = g.data();
          o.bias = bias ? b.data() : nullptr;
          o.gradBias = bias ? gb.data() : nullptr;
          o.weightMemory = o.biasMemory = o.gradWeightMemory = o.gradBiasMemory = w.kind();
        }
        ops.push_back(o);
      }
      cuda.preconditionedMomentumStepBatch(path == SgdDevice ? sgdLayers : planLayers, ops, scalars);
      cuda.synchronize();
      unsetenv("NYSACT_CUDA_STEP");
    };
    auto time = [&](Path path) {
      step(path);  // warm-up (scratch arena grown, kernels loaded)
      std::vector<double> ms;
      for (int k = 0; k < std::max(repeats, 3); ++k) {
        const double t0 = seconds();
        step(path);
        ms.push_back((seconds() - t0) * 1e3);
      }
      std::sort(ms.begin(), ms.end());
      return ms[ms.size() / 2];
    };
    const double hostMs = time(Host), pinnedMs = time(Pinned), deviceMs = time(Device);
    const double perLayerMs = time(DevicePerLayer), sgdMs = time(SgdDevice);
    // Both read G, θ, buf and write θ, buf: 20 bytes per parameter, against the copy ceiling.
    auto fraction = [&](double ms) { return 20.0 * parameters / (ms * 1e-3) / 1e9 / copyGBs; };
    return Object()
                           .number("layers", double(count)).number("rank", double(r)).number("parameters", parameters)
                           .number("hostArraysMs", hostMs).number("pinnedArraysMs", pinnedMs).number("deviceResidentMs", deviceMs)
                           .number("hostOverDevice", hostMs / deviceMs).number("pinnedOverDevice", pinnedMs / deviceMs)
                           .number("deviceResidentPerLayerMs", perLayerMs)
                           .number("perLayerOverBatched", perLayerMs / deviceMs)
                           .number("sgdMomentumMs", sgdMs).number("deviceResidentOverSgd", deviceMs / sgdMs)
                           .number("deviceResidentFractionOfCopyBandwidth", fraction(deviceMs))
                           .number("sgdMomentumFractionOfCopyBandwidth", fraction(sgdMs))
                           .str("note", "median wall time of one update step of every layer (fused preconditioned update, "
                                        "weights and gradients as host arrays (copied in and out), page-locked host "
                                        "buffers, or device-resident tensors), then one stream synchronisation, with the "
                                        "step plan's memory reservation first; sgdMomentumMs: plain SGD-momentum over the "
                                        "same device-resident parameters as plain parameters (multi-tensor "
                                        "kernel); deviceResidentPerLayerMs: "
                                        "the device-resident step with one fused-kernel launch per layer "
                                        "(NYSACT_CUDA_STEP=per-layer); fractions of copy "
                                        "bandwidth count 20 bytes per parameter (read G, θ, buf; write θ, buf)")
                           .json(2);
  };
  o.add("wholeStep", wholeStep(rank));
  o.add("wholeStepRank10", wholeStep(smoke ? 2 : 10));
  return o;
}

std::string executableDirectory() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  buf[n] = '\0';
  std::string path = buf;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, bench = true, parity = true, smoke = false;
  int64_t batch = 256;
  int repeats = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--smoke") {
      smoke = true;
    } else if (a == "--no-parity") {
      parity = false;
    } else if (a == "--no-bench") {
      bench = false;
    } else if (a == "--batch" && i + 1 < argc) {
      batch = std::atoll(argv[++i]);
    } else if (a == "--repeats" && i + 1 < argc) {
      repeats = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: nysact_driver [--quick] [--smoke] [--no-parity] [--no-bench] [--batch N] [--repeats N]\n");
      return 2;
    }
  }
  if (std::getenv("NYSACT_CUDA_LIBRARY") == nullptr) setCudaLibraryDirectory(executableDirectory());

  Object out;
  out.str("driver", "nysact").number("interfaceVersion", kBackendInterfaceVersion).number("cpuThreads", cpuThreads());
  const CudaBackendStatus& status = cudaBackendStatus();
  out.add("cuda", Object()
                      .boolean("available", status.available).str("reason", status.reason)
                      .str("library", status.library).str("device", status.device)
                      .json(2));
  bool allOk = true;
  Backend& cpu = cpuBackend();
  Backend* cuda = nullptr;
  std::string fatal;
  try {
    if (status.available) cuda = &cudaBackend();
    if (cuda != nullptr && parity) {
      bool identical = false;
      out.add("philox", philoxCheck(*cuda, identical).json(2));
      allOk = allOk && identical;
    }
    if (parity) {
      bool batchOk = false;
      out.add("batchParity", batchParity(cpu, cuda, batchOk).json(2));
      allOk = allOk && batchOk;
      bool stepBatchOk = false;
      out.add("stepBatch", stepBatchParity(cuda != nullptr ? *cuda : cpu, stepBatchOk).json(2));
      allOk = allOk && stepBatchOk;
    }
    // The failure paths, where the device is the host emulation (it injects the failures).
    if (parity && cuda != nullptr && status.device.find("host emulation") != std::string::npos) {
      bool faultsOk = false;
      out.add("faults", faultChecks(cpu, *cuda, faultsOk).json(2));
      allOk = allOk && faultsOk;
    }
    std::vector<std::string> results;
    double total = 0;
    int passed = 0, failed = 0;
    for (const Case& c : parity ? parityCases(quick) : std::vector<Case>()) {
      CaseResult r = runCase(c, cpu, cuda);
      total += r.seconds;
      (r.ok ? passed : failed) += 1;
      allOk = allOk && r.ok;
      results.push_back(r.json.json(4));
    }
    out.add("parity", Object()
                          .str("mode", !parity ? "skipped (--no-parity)"
                                       : cuda  ? "cpu-vs-cuda"
                                               : "cpu only (harness smoke run; nothing compared)")
                          .number("passed", passed).number("failed", failed).number("seconds", total)
                          .add("cases", array(results))
                          .json(2));
    if (cuda != nullptr && bench) {
      out.add("bench", benchmarks(*cudaApi(), cpu, *cuda, smoke ? std::min<int64_t>(batch, 2) : batch, smoke ? 1 : repeats,
                                  quick || smoke, smoke).json(2));
    } else {
      out.str("bench", cuda ? "skipped (--no-bench)" : "skipped: the CUDA backend is unavailable");
    }
  } catch (const Error& e) {
    fatal = e.code() + ": " + e.what();
  } catch (const std::exception& e) {
    fatal = e.what();
  }
  if (!fatal.empty()) {
    out.str("error", fatal);
    allOk = false;
  }
  out.boolean("ok", allOk);
  std::printf("%s\n", out.json().c_str());
  return allOk ? 0 : 1;
}
