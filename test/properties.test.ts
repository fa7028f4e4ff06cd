// Properties of the CPU backend that need no fixture:
//  - the low-rank apply equals the dense formula P = U diag(c) Uᵀ + I/ρ (SPEC §2), both layouts,
//    and the full-covariance factors invert Ĉ + ρI;
//  - the patch-free conv sketch equals Xᵀ(X S)/n built from an explicit patch matrix (SPEC §1),
//    over padding / stride / dilation / kernel shapes and both code paths of sketch.cpp (all taps,
//    patch tiles);
//  - Philox sketches are identical across runs and thread counts, and whole runs are bit-identical
//    for 1 and 2 threads.
import t from 'tap';
import { NysAct, nativeInfo, setThreads, loadNative, type LayerUpdate } from '../dist/cjs/index.js';
import { firstDifference, mulberry32 } from './helpers';

const rand = mulberry32(12345);
const randomArray = (n: number, scale = 1, offset = 0) => Float32Array.from({ length: n }, () => offset + (rand() * 2 - 1) * scale);
const maxAbs = (a: ArrayLike<number>) => { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i])); return m; };

t.test('low-rank apply equals the dense preconditioner', async (t) => {
  for (const layout of ['inOut', 'outIn'] as const) {
    for (const rank of [3, 50]) {
      const p0 = 12, q = 7, n = 40;
      const opt = new NysAct({ lr: 1, momentum: 0, weightDecay: 0, rank, damping: 0.5 });
      opt.addDense('fc', { inFeatures: p0, outFeatures: q, bias: true, layout });
      const x = randomArray(n * p0, 2, 1);
      opt.observe('fc', x, [n, p0]);
      const w = randomArray(p0 * q), b = randomArray(q);
      const g = randomArray(p0 * q), gb = randomArray(q);
      const w0 = Float64Array.from(w), b0 = Float64Array.from(b);
      opt.step({ fc: { weight: w, bias: b, grad: g, biasGrad: gb } });
      const st = opt.layerState('fc');
      const p = p0 + 1, r = st.r;
      t.equal(st.fullCovariance, rank >= p);
      // P = I/ρ + U diag(c) Uᵀ in float64.
      const P = new Float64Array(p * p);
      for (let i = 0; i < p; i++) {
        for (let j = 0; j < p; j++) {
          let s = i === j ? st.inverseDamping : 0;
          for (let k = 0; k < r; k++) s += st.basis[i * r + k] * st.coefficients[k] * st.basis[j * r + k];
          P[i * p + j] = s;
        }
      }
      // G' (p x q): weight gradient rows (in-feature major), bias gradient as the last row.
      const gPrime = (i: number, j: number) => (i === p0 ? gb[j] : layout === 'inOut' ? g[i * q + j] : g[j * p0 + i]);
      let err = 0, scale = 0;
      for (let i = 0; i < p; i++) {
        for (let j = 0; j < q; j++) {
          let v = 0;
          for (let l = 0; l < p; l++) v += P[i * p + l] * gPrime(l, j);
          // lr 1, no momentum history, no decay: θ_new = θ_old − V.
          const idx = layout === 'inOut' ? i * q + j : j * p0 + i;
          const delta = i === p0 ? b0[j] - b[j] : w0[idx] - w[idx];
          err = Math.max(err, Math.abs(delta - v));
          scale = Math.max(scale, Math.abs(v));
        }
      }
      t.ok(err <= 1e-5 * scale, `${layout}, rank ${rank}: fused update = dense P G' (err ${(err / scale).toExponential(2)})`);
      if (st.fullCovariance) {
        // P (Ĉ + ρI) = I with Ĉ = ema / (1 − Πβ).
        const rho = 1 / st.inverseDamping;
        let e = 0;
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) {
            let s = 0;
            for (let l = 0; l < p; l++) s += P[i * p + l] * (st.ema[l * p + j] / (1 - st.decayProduct) + (l === j ? rho : 0));
            e = Math.max(e, Math.abs(s - (i === j ? 1 : 0)));
          }
        }
        t.ok(e < 1e-5, `full covariance: P inverts Ĉ + ρI (err ${e.toExponential(2)})`);
      } else {
        t.equal(st.basis.length, p * r, 'sketched layer stores U as p x r, never p x p');
      }
      opt.dispose();
    }
  }
});

t.test('sketched factors: kept directions orthonormal, clipped ones stored as zero columns', async (t) => {
  // Activations with 3 strong directions plus small noise: SPEC §1's shift clips most of the r
  // directions (λ̂ = 0, coefficient 0) and keeps the strong ones.
  const p0 = 30, q = 4, n = 256, rank = 8;
  const opt = new NysAct({ lr: 0.1, rank, damping: 0.05, tinv: 1, tcov: 1 });
  opt.addDense('fc', { inFeatures: p0, outFeatures: q, bias: false });
  const dirs = [randomArray(p0), randomArray(p0), randomArray(p0)];
  const x = new Float32Array(n * p0);
  for (let i = 0; i < n; i++) {
    const a = [4 * (rand() * 2 - 1), 2 * (rand() * 2 - 1), 1 * (rand() * 2 - 1)];
    for (let j = 0; j < p0; j++) x[i * p0 + j] = a[0] * dirs[0][j] + a[1] * dirs[1][j] + a[2] * dirs[2][j] + 0.01 * (rand() * 2 - 1);
  }
  const w = randomArray(p0 * q);
  for (let step = 0; step < 3; step++) {
    opt.observe('fc', x, [n, p0]);
    t.same(opt.step({ fc: { weight: w, grad: randomArray(p0 * q) } }).fallbacks, []);
  }
  const st = opt.layerState('fc');
  const r = st.r;
  const col = (k: number) => Float64Array.from({ length: p0 }, (_, i) => st.basis[i * r + k]);
  const dot = (a: Float64Array, b: Float64Array) => a.reduce((s, v, i) => s + v * b[i], 0);
  const kept = [...Array(r).keys()].filter((k) => st.coefficients[k] !== 0);
  t.ok(kept.length >= 1 && kept.length < r, `some directions kept (${kept.length} of ${r}), some clipped`);
  for (let k = 0; k < r; k++) {
    if (st.coefficients[k] === 0) t.ok(col(k).every((v) => v === 0), `clipped direction ${k}: zero column`);
  }
  let worst = 0;
  for (const a of kept) for (const b of kept) worst = Math.max(worst, Math.abs(dot(col(a), col(b)) - (a === b ? 1 : 0)));
  t.ok(worst < 1e-5, `kept columns orthonormal (worst |UᵀU − I| ${worst.toExponential(2)})`);
  opt.dispose();
});

// Reference Xᵀ(X S)/n from an explicit patch matrix (TensorFlow padding, (kh, kw, c) columns).
function patchCovariance(
  x: Float32Array, [B, H, W, C]: number[], kh: number, kw: number, [sh, sw]: number[], [dh, dw]: number[],
  padding: 'same' | 'valid', bias: boolean, S: Float32Array, r: number,
): { cov: Float64Array; n: number } {
  const effH = (kh - 1) * dh + 1, effW = (kw - 1) * dw + 1;
  let oH: number, oW: number, pt = 0, pl = 0;
  if (padding === 'same') {
    oH = Math.ceil(H / sh); oW = Math.ceil(W / sw);
    pt = Math.floor(Math.max((oH - 1) * sh + effH - H, 0) / 2);
    pl = Math.floor(Math.max((oW - 1) * sw + effW - W, 0) / 2);
  } else {
    oH = Math.floor((H - effH) / sh) + 1; oW = Math.floor((W - effW) / sw) + 1;
  }
  const p0 = kh * kw * C, p = p0 + (bias ? 1 : 0), n = B * oH * oW;
  const cov = new Float64Array(p * r);
  const row = new Float64Array(p);
  for (let b = 0; b < B; b++) for (let oh = 0; oh < oH; oh++) for (let ow = 0; ow < oW; ow++) {
    for (let a = 0; a < kh; a++) for (let bb = 0; bb < kw; bb++) for (let c = 0; c < C; c++) {
      const hi = oh * sh + a * dh - pt, wi = ow * sw + bb * dw - pl;
      row[(a * kw + bb) * C + c] = hi >= 0 && hi < H && wi >= 0 && wi < W ? x[((b * H + hi) * W + wi) * C + c] : 0;
    }
    if (bias) row[p0] = 1;
    for (let j = 0; j < r; j++) {
      let z = 0;
      for (let i = 0; i < p; i++) z += row[i] * S[i * r + j];
      for (let i = 0; i < p; i++) cov[i * r + j] += row[i] * z;
    }
  }
  for (let i = 0; i < cov.length; i++) cov[i] /= n;
  return { cov, n };
}

t.test('patch-free conv sketch equals the patch-matrix formula', async (t) => {
  const cases: Array<{ name: string; shape: number[]; k: [number, number]; s: [number, number]; d: [number, number]; pad: 'same' | 'valid'; bias: boolean; outC: number; rank: number }> = [
    { name: '3x3 same s1 (patch tiles)', shape: [2, 7, 6, 3], k: [3, 3], s: [1, 1], d: [1, 1], pad: 'same', bias: true, outC: 4, rank: 5 },
    { name: '3x3 same s1 16 channels (patch tiles)', shape: [2, 6, 7, 16], k: [3, 3], s: [1, 1], d: [1, 1], pad: 'same', bias: true, outC: 4, rank: 6 },
    { name: '3x3 same s1 wide rows (all-taps path)', shape: [2, 5, 5, 48], k: [3, 3], s: [1, 1], d: [1, 1], pad: 'same', bias: false, outC: 4, rank: 6 },
    { name: '3x3 valid s2', shape: [3, 9, 8, 2], k: [3, 3], s: [2, 2], d: [1, 1], pad: 'valid', bias: true, outC: 3, rank: 4 },
    { name: '3x3 same s2 asymmetric pad', shape: [2, 10, 10, 2], k: [3, 3], s: [2, 2], d: [1, 1], pad: 'same', bias: true, outC: 3, rank: 4 },
    { name: '5x3 same strides (2,1)', shape: [2, 9, 7, 2], k: [5, 3], s: [2, 1], d: [1, 1], pad: 'same', bias: true, outC: 3, rank: 7 },
    { name: '3x3 dilation 2 same', shape: [2, 8, 9, 3], k: [3, 3], s: [1, 1], d: [2, 2], pad: 'same', bias: false, outC: 2, rank: 5 },
    { name: '2x3 dilation (1,2) valid strides (1,2)', shape: [2, 6, 9, 2], k: [2, 3], s: [1, 2], d: [1, 2], pad: 'valid', bias: true, outC: 2, rank: 5 },
    { name: '1x1 valid full covariance', shape: [3, 4, 5, 4], k: [1, 1], s: [1, 1], d: [1, 1], pad: 'valid', bias: true, outC: 3, rank: 10 },
    { name: '3x3 valid in place', shape: [2, 6, 6, 3], k: [3, 3], s: [1, 1], d: [1, 1], pad: 'valid', bias: true, outC: 3, rank: 4 },
  ];
  for (const c of cases) {
    const opt = new NysAct({ rank: c.rank });
    opt.addConv2d('conv', { kernelSize: c.k, inChannels: c.shape[3], outChannels: c.outC, strides: c.s, dilation: c.d, padding: c.pad, bias: c.bias });
    const p = c.k[0] * c.k[1] * c.shape[3] + (c.bias ? 1 : 0);
    const r = Math.min(c.rank, p);
    const full = r === p;
    const S = full ? Float32Array.from({ length: p * p }, (_, i) => (Math.floor(i / p) === i % p ? 1 : 0)) : randomArray(p * r);
    const x = randomArray(c.shape.reduce((a, b) => a * b, 1), 1, 0.5);
    opt.observe('conv', x, c.shape, full ? undefined : { sketch: S });
    const ours = opt.pendingCovariance('conv');
    const ref = patchCovariance(x, c.shape, c.k[0], c.k[1], c.s, c.d, c.pad, c.bias, S, r).cov;
    let err = 0;
    for (let i = 0; i < ref.length; i++) err = Math.max(err, Math.abs(ours[i] - ref[i]));
    t.ok(err <= 1e-5 * maxAbs(ref), `${c.name}: err ${(err / maxAbs(ref)).toExponential(2)}`);
    opt.dispose();
  }
});

t.test('dense sketch: 3-D input and bias column', async (t) => {
  const opt = new NysAct({ rank: 4 });
  opt.addDense('fc', { inFeatures: 6, outFeatures: 2, bias: true });
  const x = randomArray(2 * 5 * 6, 1, 0.3);
  const S = randomArray(7 * 4);
  opt.observe('fc', x, [2, 5, 6], { sketch: S });
  const ours = opt.pendingCovariance('fc');
  const n = 10, p = 7, r = 4;
  let err = 0, scale = 0;
  for (let i = 0; i < p; i++) for (let j = 0; j < r; j++) {
    let s = 0;
    for (let m = 0; m < n; m++) {
      let z = S[6 * r + j];
      for (let l = 0; l < 6; l++) z += x[m * 6 + l] * S[l * r + j];
      s += (i === 6 ? 1 : x[m * 6 + i]) * z;
    }
    s /= n;
    err = Math.max(err, Math.abs(s - ours[i * r + j]));
    scale = Math.max(scale, Math.abs(s));
  }
  t.ok(err <= 1e-5 * scale, `err ${(err / scale).toExponential(2)}`);
  opt.dispose();
});

t.test('Philox sketches', async (t) => {
  const native = loadNative();
  const a = native.philoxGaussianSketch(0, 42, 7, 3, 500, 10);
  const b = native.philoxGaussianSketch(0, 42, 7, 3, 500, 10);
  t.same(Array.from(a), Array.from(b), 'same key and step: identical');
  const c = native.philoxGaussianSketch(0, 42, 7, 4, 500, 10);
  t.not(a[0], c[0], 'the next statistics step draws a fresh sketch');
  const d = native.philoxGaussianSketch(0, 42, 8, 3, 500, 10);
  t.not(a[0], d[0], 'another layer key draws another sketch');
  // randn / sqrt(p): mean 0, p·variance 1 (5000 samples: bounds ~5 sigma).
  let mean = 0, sq = 0;
  for (const v of a) { mean += v; sq += v * v; }
  mean /= a.length;
  const pvar = (sq / a.length) * 500;
  t.ok(Math.abs(mean * Math.sqrt(500)) < 0.08, `mean ≈ 0 (${mean})`);
  t.ok(Math.abs(pvar - 1) < 0.1, `p·var ≈ 1 (${pvar})`);
  const idx = native.philoxSubcolumns(0, 42, 7, 3, 30, 12);
  t.equal(new Set(idx).size, 12, 'subcolumns distinct');
  t.ok(Array.from(idx).every((i) => i >= 0 && i < 30), 'subcolumns in range');
  // Regression guard: these values are what the CPU backend draws today; a CUDA backend must
  // draw exactly the same (philox_sketch.h).  Changing them breaks resumed runs.
  t.same(
    Array.from(native.philoxGaussianSketch(0, 1, 7, 0, 4, 2)),
    [0.32985055446624756, -1.0119341611862183, 0.8100226521492004, 1.1515066623687744,
      0.2393779158592224, 0.7546281814575195, -0.6746235489845276, 0.46759912371635437],
    'golden Philox gaussian values',
  );
  t.same(Array.from(native.philoxSubcolumns(0, 1, 7, 0, 10, 4)), [5, 9, 3, 7], 'golden Philox subcolumns');

  const threadsBefore = nativeInfo().threads;
  const runs: Float32Array[] = [];
  const states: string[] = [];
  for (const threads of [1, 2]) {
    setThreads(threads);
    const opt = new NysAct({ seed: 99, tcov: 2, tinv: 3, rank: 5 });
    opt.addConv2d('conv', { kernelSize: 3, inChannels: 3, outChannels: 4, padding: 'same' });
    opt.addDense('fc', { inFeatures: 64, outFeatures: 3 });
    const r2 = mulberry32(7);
    const arr = (n: number) => Float32Array.from({ length: n }, () => r2() - 0.5);
    const conv = { weight: arr(108), bias: new Float32Array(4) };
    const fc = { weight: arr(192), bias: new Float32Array(3) };
    for (let s = 0; s < 8; s++) {
      if (opt.needsActivations) {
        opt.observe('conv', arr(4 * 16 * 16 * 3), [4, 16, 16, 3]);
        opt.observe('fc', arr(4096 * 64), [4096, 64]);
      }
      const up: Record<string, LayerUpdate> = {
        conv: { weight: conv.weight, bias: conv.bias, grad: arr(108), biasGrad: arr(4) },
        fc: { weight: fc.weight, bias: fc.bias, grad: arr(192), biasGrad: arr(3) },
      };
      opt.step(up);
    }
    runs.push(Float32Array.from([...conv.weight, ...conv.bias, ...fc.weight, ...fc.bias]));
    states.push(Buffer.from(opt.serializeState()).toString('base64'));
    opt.dispose();
  }
  setThreads(threadsBefore);
  t.ok(Buffer.from(runs[0].buffer).equals(Buffer.from(runs[1].buffer)), 'weights bit-identical with 1 and 2 threads');
  t.equal(states[0], states[1], 'optimizer state bit-identical with 1 and 2 threads');
});

t.test('a failed factorisation keeps finite factors and reports it', async (t) => {
  // Non-finite statistics can only reach the factorisation through a corrupted state import;
  // that is how this test makes the eigensolver's input non-finite.
  const native = loadNative();
  const spec = {
    kind: 0 as const, fanIn: 6, fanOut: 2, bias: true, rank: 3, sketch: 0 as const, layout: 0 as const,
    kernelH: 1, kernelW: 1, inChannels: 0, strideH: 1, strideW: 1, dilationH: 1, dilationW: 1,
    padding: 0 as const, size: 0, seedHi: 0, seedLo: 1, layerKey: 3,
  };
  const layer = new native.Layer(spec, 'cpu');
  const bad = layer.exportState();
  bad.ema = new Float32Array(7 * 3).fill(NaN);
  bad.sketch = native.philoxGaussianSketch(0, 1, 3, 0, 7, 3);
  bad.emaSteps = 1;
  bad.decayProduct = 0.95;
  layer.importState(bad);
  const first = layer.nystromFactors(1.0, 0);
  t.equal(first.status, 3, 'no previous factors: identity preconditioner');
  t.match(first.detail, /not finite/);
  const w = new Float32Array(12).fill(1), b = new Float32Array(2), g = new Float32Array(12).fill(0.5), gb = new Float32Array(2).fill(0.5);
  layer.preconditionedMomentumStep(w, b, g, gb, new Float64Array([0.1, 0, 0, 0, 0]));
  t.ok(Array.from(w).every((v) => Math.abs(v - 0.95) < 1e-6), 'P = I/ρ: plain SGD step, weights finite');

  // With good factors in place, a later failure keeps them.
  const good = layer.exportState();
  good.ema = new Float32Array(7 * 3).fill(0.1);
  layer.importState(good);
  t.equal(layer.nystromFactors(1.0, 0).status, 0, 'finite statistics factorise');
  const before = layer.exportState();
  bad.basis = before.basis;
  bad.coefficients = before.coefficients;
  bad.hasFactors = true;
  bad.inverseDamping = before.inverseDamping;
  bad.momentum = before.momentum;
  bad.biasMomentum = before.biasMomentum;
  bad.factorFallbacks = before.factorFallbacks;
  layer.importState(bad);
  const second = layer.nystromFactors(1.0, 0);
  t.equal(second.status, 2, 'kept the previous factors');
  const after = layer.exportState();
  t.same(Array.from(after.basis), Array.from(before.basis), 'basis unchanged');
  t.same(Array.from(after.coefficients), Array.from(before.coefficients), 'coefficients unchanged');
  t.equal(after.factorFallbacks, before.factorFallbacks + 1, 'fallback counted');
  layer.dispose();
});

t.test('results depend on the values only, not on where the arrays lie', async (t) => {
  // Eigen's products round differently by the alignment of the buffers they write into; the
  // backend keeps those buffers aligned, so the same values give the same bits whatever the typed
  // arrays' byte offsets and whatever was allocated before.
  const fill = (seed: number, n: number): Float32Array => {
    const rand = mulberry32(seed);
    return Float32Array.from({ length: n }, () => rand() - 0.5);
  };
  // A copy of `src` at a float offset inside a larger buffer.
  const at = (offset: number, src: Float32Array): Float32Array => {
    const view = new Float32Array(new ArrayBuffer((src.length + 16) * 4), offset * 4, src.length);
    view.set(src);
    return view;
  };
  const layers = [
    { name: 'dense', add: (o: NysAct) => o.addDense('dense', { inFeatures: 1568, outFeatures: 16, rank: 20 }), shape: [128, 1568], w: 1568 * 16, b: 16 },
    { name: 'tiles', add: (o: NysAct) => o.addConv2d('tiles', { kernelSize: 3, inChannels: 1, outChannels: 8, padding: 'same' }), shape: [6, 12, 12, 1], w: 9 * 8, b: 8 },
    { name: 'strided', add: (o: NysAct) => o.addConv2d('strided', { kernelSize: 3, inChannels: 16, outChannels: 8, padding: 'same', strides: 2 }), shape: [4, 10, 10, 16], w: 144 * 8, b: 8 },
    { name: 'inplace', add: (o: NysAct) => o.addConv2d('inplace', { kernelSize: 3, inChannels: 8, outChannels: 8 }), shape: [4, 9, 9, 8], w: 72 * 8, b: 8 },
    { name: 'taps', add: (o: NysAct) => o.addConv2d('taps', { kernelSize: 3, inChannels: 48, outChannels: 8 }), shape: [3, 7, 7, 48], w: 432 * 8, b: 8 },
  ];
  const run = (offset: number, junk: number): unknown => {
    const keep = Array.from({ length: junk }, (_, i) => new Float32Array(977 + 61 * i));
    const o = new NysAct({ rank: 6, damping: 0.1, tcov: 1, tinv: 2, seed: 3 });
    for (const l of layers) l.add(o);
    const weights = layers.map((l, i) => ({ weight: at(offset, fill(100 + i, l.w)), bias: at(offset, fill(200 + i, l.b)) }));
    for (let step = 0; step < 4; step++) {
      const grads: Record<string, LayerUpdate> = {};
      layers.forEach((l, i) => {
        o.observe(l.name, at(offset, fill(300 + 10 * i + step, l.shape.reduce((a, b) => a * b, 1))), l.shape);
        grads[l.name] = { ...weights[i], grad: at(offset, fill(400 + 10 * i + step, l.w)), biasGrad: at(offset, fill(500 + i, l.b)) };
      });
      o.step(grads);
    }
    const state = o.getState().layers;
    o.dispose();
    void keep;
    return { state, weights };
  };
  const reference = run(0, 0);
  for (const [offset, junk] of [[0, 3], [1, 0], [2, 5], [3, 1], [4, 0], [7, 2]]) {
    t.equal(firstDifference(run(offset, junk), reference), null, `arrays at float offset ${offset}, ${junk} earlier allocations`);
  }
});
