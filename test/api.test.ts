// Happy path of the framework-free optimizer on a small MLP with random data: schedule, state
// round trips and resumption (bit-exact), weight layouts, skip mode, seeds, data-parallel hooks,
// lifetime, and the package entry points.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import t from 'tap';
import {
  NysAct,
  NysActError,
  decodeState,
  encodeState,
  layerKey,
  liveObjects,
  nativeInfo,
  type LayerUpdate,
  type NysActOptions,
  type StepResult,
} from '../dist/cjs/index.js';
import { firstDifference, maxAbsDiff, mulberry32, randomArray, transpose } from './helpers';


// ---------------------------------------------------------------------------------------------
// A 6-5-3 MLP (ReLU hidden layer, per-output scale as a plain parameter), MSE against a fixed
// teacher, batch 8. Weights in tfjs layout [in, out].

const IN = 6;
const HIDDEN = 5;
const OUT = 3;
const BATCH = 8;
const TEACHER = randomArray(mulberry32(99), IN * OUT);

interface Params {
  w1: Float32Array;
  b1: Float32Array;
  w2: Float32Array;
  b2: Float32Array;
  scale: Float32Array;
}

interface Gradients {
  loss: number;
  hidden: Float32Array;
  w1: Float32Array;
  b1: Float32Array;
  w2: Float32Array;
  b2: Float32Array;
  scale: Float32Array;
}

function initParams(seed = 5): Params {
  const rand = mulberry32(seed);
  return {
    w1: randomArray(rand, IN * HIDDEN, 0.5),
    b1: randomArray(rand, HIDDEN, 0.1),
    w2: randomArray(rand, HIDDEN * OUT, 0.5),
    b2: randomArray(rand, OUT, 0.1),
    scale: new Float32Array(OUT).fill(1),
  };
}

function cloneParams(p: Params): Params {
  return { w1: p.w1.slice(), b1: p.b1.slice(), w2: p.w2.slice(), b2: p.b2.slice(), scale: p.scale.slice() };
}

/** The batch of step t (a function of t only, so replays and resumptions see the same data). */
function batch(t: number): { x: Float32Array; y: Float32Array } {
  const x = randomArray(mulberry32(1000 + t), BATCH * IN);
  const y = new Float32Array(BATCH * OUT);
  for (let i = 0; i < BATCH; i++) {
    for (let o = 0; o < OUT; o++) {
      let s = 0;
      for (let k = 0; k < IN; k++) s += x[i * IN + k] * TEACHER[k * OUT + o];
      y[i * OUT + o] = Math.tanh(s);
    }
  }
  return { x, y };
}

function forwardBackward(p: Params, x: Float32Array, y: Float32Array): Gradients {
  const pre = new Float64Array(BATCH * HIDDEN);
  const hidden = new Float32Array(BATCH * HIDDEN);
  for (let i = 0; i < BATCH; i++) {
    for (let h = 0; h < HIDDEN; h++) {
      let s = p.b1[h];
      for (let k = 0; k < IN; k++) s += x[i * IN + k] * p.w1[k * HIDDEN + h];
      pre[i * HIDDEN + h] = s;
      hidden[i * HIDDEN + h] = Math.max(0, s);
    }
  }
  const z = new Float64Array(BATCH * OUT);
  const dy = new Float64Array(BATCH * OUT);
  let loss = 0;
  for (let i = 0; i < BATCH; i++) {
    for (let o = 0; o < OUT; o++) {
      let s = p.b2[o];
      for (let h = 0; h < HIDDEN; h++) s += hidden[i * HIDDEN + h] * p.w2[h * OUT + o];
      z[i * OUT + o] = s;
      const err = s * p.scale[o] - y[i * OUT + o];
      loss += err * err;
      dy[i * OUT + o] = (2 * err) / (BATCH * OUT);
    }
  }
  const g = {
    loss: loss / (BATCH * OUT),
    hidden,
    w1: new Float32Array(IN * HIDDEN),
    b1: new Float32Array(HIDDEN),
    w2: new Float32Array(HIDDEN * OUT),
    b2: new Float32Array(OUT),
    scale: new Float32Array(OUT),
  };
  const dh = new Float64Array(BATCH * HIDDEN);
  for (let i = 0; i < BATCH; i++) {
    for (let o = 0; o < OUT; o++) {
      const dz = dy[i * OUT + o] * p.scale[o];
      g.scale[o] += dy[i * OUT + o] * z[i * OUT + o];
      g.b2[o] += dz;
      for (let h = 0; h < HIDDEN; h++) {
        g.w2[h * OUT + o] += hidden[i * HIDDEN + h] * dz;
        dh[i * HIDDEN + h] += dz * p.w2[h * OUT + o];
      }
    }
  }
  for (let i = 0; i < BATCH; i++) {
    for (let h = 0; h < HIDDEN; h++) {
      const d = pre[i * HIDDEN + h] > 0 ? dh[i * HIDDEN + h] : 0;
      g.b1[h] += d;
      for (let k = 0; k < IN; k++) g.w1[k * HIDDEN + h] += x[i * IN + k] * d;
    }
  }
  return g;
}

// damping 0.05: with ρ = 1 the Nyström eigenvalues of these small activations all clip to 0 (P = I/ρ)
const BASE: NysActOptions = { lr: 0.05, tcov: 2, tinv: 4, rank: 3, seed: 42, weightDecay: 1e-4, damping: 0.05 };

function makeOptimizer(options: NysActOptions = {}, layout: 'inOut' | 'outIn' = 'inOut'): NysAct {
  const opt = new NysAct({ ...BASE, ...options });
  opt.addDense('fc1', { inFeatures: IN, outFeatures: HIDDEN, layout }); // p 7, r 3
  opt.addDense('fc2', { inFeatures: HIDDEN, outFeatures: OUT, layout, sketch: 'subcolumns' }); // p 6, r 3
  opt.addParam('scale', { size: OUT });
  return opt;
}

function updates(p: Params, g: Gradients): Record<string, LayerUpdate> {
  return {
    fc1: { weight: p.w1, grad: g.w1, bias: p.b1, biasGrad: g.b1 },
    fc2: { weight: p.w2, grad: g.w2, bias: p.b2, biasGrad: g.b2 },
    scale: { weight: p.scale, grad: g.scale },
  };
}

/** One training step at the optimizer's iteration; returns the step result and the loss. */
function trainStep(opt: NysAct, p: Params, lrSchedule = true): StepResult & { loss: number } {
  const t = opt.iteration;
  const { x, y } = batch(t);
  const g = forwardBackward(p, x, y);
  if (lrSchedule) opt.lr = 0.05 * (1 - t / 40);
  if (opt.needsActivations) {
    opt.observe('fc1', x, [BATCH, IN]);
    opt.observe('fc2', g.hidden, [2, BATCH / 2, HIDDEN]); // 3-D input: rows = 2 * 4
  }
  return { ...opt.step(updates(p, g)), loss: g.loss };
}

// ---------------------------------------------------------------------------------------------

t.test('schedule over 12 steps (tcov 2, tinv 4) and training progress', async (t) => {
  const opt = makeOptimizer();
  const p = initParams();
  // The default backend 'auto' takes CUDA where it is available.
  t.equal(opt.backend, nativeInfo().backends.find((b) => b.name === 'cuda')?.available ? 'cuda' : 'cpu');
  t.same(opt.layers, ['fc1', 'fc2', 'scale']);
  const losses: number[] = [];
  for (let step = 0; step < 12; step++) {
    t.equal(opt.iteration, step, `iteration ${step}`);
    t.equal(opt.needsActivations, step % 2 === 0, `needsActivations at ${step}`);
    t.equal(opt.isInverseStep, step % 4 === 0, `isInverseStep at ${step}`);
    const r = trainStep(opt, p);
    t.same(
      { iteration: r.iteration, skipped: r.skipped, reason: r.reason, statistics: r.statistics, inverse: r.inverse, fallbacks: r.fallbacks },
      { iteration: step, skipped: false, reason: null, statistics: step % 2 === 0, inverse: step % 4 === 0, fallbacks: [] },
      `step result ${step}`,
    );
    losses.push(r.loss);
  }
  t.equal(opt.iteration, 12);
  const fc1 = opt.layerState('fc1');
  t.same([fc1.p, fc1.r, fc1.fullCovariance, fc1.emaSteps, fc1.hasFactors], [7, 3, false, 6, true]);
  t.equal(fc1.sketch.length, 21, 'gaussian sketch p x r');
  for (const name of ['fc1', 'fc2']) {
    const c = opt.layerState(name).coefficients;
    t.ok(c.some((v) => v !== 0), `${name}: the preconditioner is not I/ρ (coefficients ${Array.from(c, (v) => v.toFixed(3))})`);
  }
  t.equal(opt.layerState('fc2').indices.length, 3, 'subcolumn indices');
  t.ok(opt.stateBytes > 0, `stateBytes ${opt.stateBytes}`);
  for (const [k, v] of Object.entries(p)) t.ok((v as Float32Array).every(Number.isFinite), `${k} finite`);
  const first = (losses[0] + losses[1]) / 2;
  const last = (losses[10] + losses[11]) / 2;
  t.ok(last < first, `loss decreased: ${first.toFixed(4)} -> ${last.toFixed(4)}`);
  opt.dispose();
});

t.test('getState / setState / serializeState round trips are bit-exact', async (t) => {
  const opt = makeOptimizer({ seed: 2n ** 63n + 5n });
  const p = initParams();
  for (let i = 0; i < 7; i++) trainStep(opt, p);
  const state = opt.getState();
  t.equal(state.format, 'nysact-state');
  t.equal(state.version, 1);
  t.equal(state.iteration, 7);
  t.equal(state.options.seed, 2n ** 63n + 5n, 'large seed kept as a bigint');
  t.same(Object.keys(state.layers), ['fc1', 'fc2', 'scale']);

  const other = makeOptimizer({ seed: 2n ** 63n + 5n });
  other.setState(state);
  t.equal(firstDifference(other.getState(), state), null, 'setState then getState');
  t.equal(other.iteration, 7);

  const bytes = opt.serializeState();
  t.equal(new TextDecoder().decode(bytes.subarray(0, 8)), 'NYSACT01', 'magic');
  t.equal(firstDifference(NysAct.deserializeState(bytes), state), null, 'static deserializeState');
  t.equal(firstDifference(decodeState(encodeState(state)), state), null, 'encodeState / decodeState');
  const third = makeOptimizer({ seed: 2n ** 63n + 5n });
  third.deserializeState(bytes);
  t.equal(firstDifference(third.getState(), state), null, 'instance deserializeState');
  t.equal(firstDifference(third.serializeState(), bytes), null, 'bytes are reproducible');
  for (const o of [opt, other, third]) o.dispose();
});

t.test('resuming from serialized bytes continues bit for bit', async (t) => {
  const uninterrupted = makeOptimizer();
  const pa = initParams();
  for (let i = 0; i < 12; i++) trainStep(uninterrupted, pa);

  const first = makeOptimizer();
  const pb = initParams();
  for (let i = 0; i < 5; i++) trainStep(first, pb);
  const bytes = first.serializeState();
  const weights = cloneParams(pb);
  first.dispose();

  const resumed = makeOptimizer({ lr: 0.3 }); // lr comes back from the state
  resumed.deserializeState(bytes);
  t.equal(resumed.iteration, 5);
  t.equal(resumed.lr, 0.05 * (1 - 4 / 40), 'lr restored from the state');
  for (let i = 5; i < 12; i++) trainStep(resumed, weights);

  t.equal(firstDifference(weights, pa), null, 'weights identical');
  t.equal(firstDifference(resumed.getState().layers, uninterrupted.getState().layers), null, 'optimizer state identical');
  uninterrupted.dispose();
  resumed.dispose();
});

t.test("layout 'outIn' equals 'inOut' with transposed weights and gradients", async (t) => {
  const a = makeOptimizer({}, 'inOut');
  const b = makeOptimizer({}, 'outIn');
  const pa = initParams();
  const pb = initParams();
  for (let i = 0; i < 12; i++) {
    trainStep(a, pa);
    // b: same model, but hands the optimizer [out, in] weights and gradients
    const { x, y } = batch(i);
    const g = forwardBackward(pb, x, y);
    b.lr = 0.05 * (1 - i / 40);
    if (b.needsActivations) {
      b.observe('fc1', x, [BATCH, IN]);
      b.observe('fc2', g.hidden, [BATCH, HIDDEN]);
    }
    const w1 = transpose(pb.w1, IN, HIDDEN);
    const w2 = transpose(pb.w2, HIDDEN, OUT);
    b.step({
      fc1: { weight: w1, grad: transpose(g.w1, IN, HIDDEN), bias: pb.b1, biasGrad: g.b1 },
      fc2: { weight: w2, grad: transpose(g.w2, HIDDEN, OUT), bias: pb.b2, biasGrad: g.b2 },
      scale: { weight: pb.scale, grad: g.scale },
    });
    pb.w1.set(transpose(w1, HIDDEN, IN));
    pb.w2.set(transpose(w2, OUT, HIDDEN));
  }
  for (const key of ['w1', 'b1', 'w2', 'b2', 'scale'] as const) {
    const d = maxAbsDiff(pa[key], pb[key]);
    t.ok(d <= 1e-6, `${key}: max |inOut - outIn| = ${d.toExponential(2)} <= 1e-6`);
  }
  t.not(firstDifference(pa.w1, initParams().w1), null, 'weights moved');
  a.dispose();
  b.dispose();
});

t.test('dispose is idempotent and frees every native layer', async (t) => {
  const start = liveObjects();
  const opt = makeOptimizer();
  const p = initParams();
  t.equal(liveObjects().layers, start.layers + 3, 'three native layers');
  for (let i = 0; i < 5; i++) trainStep(opt, p);
  t.ok(liveObjects().bytes > start.bytes, 'native bytes held');
  t.equal(opt.disposed, false);
  opt.dispose();
  opt.dispose();
  t.equal(opt.disposed, true);
  t.same(liveObjects(), start, 'back to the starting counts');
  t.throws(() => trainStep(opt, p), { code: 'ERR_NYSACT_DISPOSED' });
  t.throws(() => opt.getState(), NysActError);

  // many optimizers created and disposed
  for (let i = 0; i < 20; i++) {
    const o = makeOptimizer({ seed: i });
    trainStep(o, initParams());
    o.dispose();
  }
  t.same(liveObjects(), start, 'no leak over 20 optimizers');
});

t.test("nonFinite: 'skip' leaves everything unchanged and the next step works", async (t) => {
  const reference = makeOptimizer({ nonFinite: 'skip' });
  const pr = initParams();
  for (let i = 0; i < 8; i++) trainStep(reference, pr);

  const opt = makeOptimizer({ nonFinite: 'skip' });
  const p = initParams();
  for (let i = 0; i < 2; i++) trainStep(opt, p);

  // t = 2, a statistics step: observe, then a NaN gradient
  opt.lr = 0.05 * (1 - 2 / 40);
  const before = { state: opt.getState(), weights: cloneParams(p) };
  const { x, y } = batch(2);
  const g = forwardBackward(p, x, y);
  opt.observe('fc1', x, [BATCH, IN]);
  opt.observe('fc2', g.hidden, [BATCH, HIDDEN]);
  const badGrad = g.w2.slice();
  badGrad[4] = NaN;
  const skipped = opt.step({ ...updates(p, g), fc2: { weight: p.w2, grad: badGrad, bias: p.b2, biasGrad: g.b2 } });
  t.same([skipped.skipped, skipped.iteration, skipped.statistics, skipped.inverse], [true, 2, false, false]);
  t.match(skipped.reason, /grads\.fc2\.grad/);
  t.equal(opt.iteration, 2, 'iteration unchanged');
  t.equal(firstDifference(opt.getState(), before.state), null, 'state unchanged');
  t.equal(firstDifference(p, before.weights), null, 'weights unchanged');
  t.throws(() => opt.pendingCovariance('fc1'), { code: 'ERR_NYSACT_INVALID_ARGUMENT' }, 'pending statistics discarded');

  // non-finite activations skip the next step too
  const xBad = x.slice();
  xBad[0] = Infinity;
  opt.observe('fc1', xBad, [BATCH, IN]);
  opt.observe('fc2', g.hidden, [BATCH, HIDDEN]);
  const skipped2 = opt.step(updates(p, g));
  t.equal(skipped2.skipped, true);
  t.match(skipped2.reason, /activations for layer "fc1"/);
  t.equal(firstDifference(opt.getState(), before.state), null, 'state still unchanged');

  for (let i = 2; i < 8; i++) t.equal(trainStep(opt, p).skipped, false, `step ${i} works`);
  t.equal(firstDifference(p, pr), null, 'skipped steps left no trace: identical to a run without them');
  t.equal(firstDifference(opt.getState().layers, reference.getState().layers), null, 'identical optimizer state');
  opt.dispose();
  reference.dispose();
});

t.test('seed determinism', async (t) => {
  const run = (seed: number | bigint, sketch: 'gaussian' | 'subcolumns' = 'gaussian'): Params => {
    const opt = makeOptimizer({ seed, sketch });
    const p = initParams();
    for (let i = 0; i < 9; i++) trainStep(opt, p);
    opt.dispose();
    return p;
  };
  t.equal(firstDifference(run(1), run(1)), null, 'same seed, identical weights');
  t.equal(firstDifference(run(1), run(1n)), null, 'seed 1 and 1n are the same seed');
  t.not(firstDifference(run(1), run(2)), null, 'different seeds, different weights');
  t.not(firstDifference(run(1, 'subcolumns'), run(2, 'subcolumns')), null, 'different seeds, different subcolumns');
  t.not(firstDifference(run(2 ** 32), run(0)), null, 'the high half of the seed matters');
});

t.test("step(grads, { missing: 'skip' }) leaves absent layers untouched", async (t) => {
  const opt = makeOptimizer();
  const p = initParams();
  trainStep(opt, p); // step 0 (statistics + inverse for every layer)
  const fc2Before = opt.layerState('fc2');
  const w2 = p.w2.slice();
  const b2 = p.b2.slice();
  // Step 1 is not a statistics step; step 2 is: fc2 absent on both.
  for (let i = 0; i < 2; i++) {
    const { x, y } = batch(opt.iteration);
    const g = forwardBackward(p, x, y);
    if (opt.needsActivations) {
      opt.observe('fc1', x, [BATCH, IN]);
      opt.observe('fc2', g.hidden, [BATCH, HIDDEN]); // observed, then skipped: dropped
    }
    const all = updates(p, g);
    const r = opt.step({ fc1: all.fc1, scale: all.scale }, { missing: 'skip' });
    t.equal(r.skipped, false);
  }
  t.equal(firstDifference(p.w2, w2), null, 'absent weight unchanged');
  t.equal(firstDifference(p.b2, b2), null, 'absent bias unchanged');
  t.equal(firstDifference(opt.layerState('fc2'), fc2Before), null, 'absent layer state unchanged (momentum, EMA, factors)');
  t.equal(opt.layerState('fc1').emaSteps, 2, 'present layers took their statistics');
  // The default still requires every layer, and a bad mode is refused before anything changes.
  const { x, y } = batch(opt.iteration);
  const g = forwardBackward(p, x, y);
  t.throws(() => opt.step({ fc1: updates(p, g).fc1 }), { name: 'TypeError', message: /grads\.fc2/ });
  t.throws(() => opt.step(updates(p, g), { missing: 'ignore' as never }), { name: 'RangeError', message: /options\.missing/ });
  t.throws(() => opt.step(updates(p, g), { other: 1 } as never), { name: 'TypeError', message: /other/ });
  t.equal(opt.iteration, 3);
  opt.dispose();
});

t.test('sketchKey: the Philox stream follows the key, not the layer name', async (t) => {
  const sketchOf = (name: string, sketchKey?: string): Float32Array => {
    const opt = new NysAct({ ...BASE });
    opt.addDense(name, { inFeatures: IN, outFeatures: HIDDEN, ...(sketchKey === undefined ? {} : { sketchKey }) });
    opt.observe(name, batch(0).x, [BATCH, IN]);
    opt.step({ [name]: { weight: new Float32Array(IN * HIDDEN), grad: new Float32Array(IN * HIDDEN), bias: new Float32Array(HIDDEN), biasGrad: new Float32Array(HIDDEN) } });
    const s = opt.layerState(name).sketch;
    opt.dispose();
    return s;
  };
  t.equal(firstDifference(sketchOf('a', 'k'), sketchOf('b', 'k')), null, 'same key, same sketch');
  t.equal(firstDifference(sketchOf('k'), sketchOf('other', 'k')), null, 'the default key is the name');
  t.not(firstDifference(sketchOf('a', 'k1'), sketchOf('a', 'k2')), null, 'different keys, different sketches');
  t.throws(() => new NysAct().addDense('a', { inFeatures: 2, outFeatures: 2, sketchKey: '' }), { name: 'RangeError', message: /sketchKey/ });
});

t.test('data-parallel hooks keep workers identical', async (t) => {
  const workers = [makeOptimizer(), makeOptimizer()];
  const params = [initParams(), initParams()];
  for (let step = 0; step < 6; step++) {
    const shards = workers.map((_, w) => {
      const { x, y } = batch(100 * step + w);
      return { x, y, g: forwardBackward(params[w], x, y) };
    });
    // all-reduce the gradients
    const mean = (k: 'w1' | 'b1' | 'w2' | 'b2' | 'scale') => {
      const out = new Float32Array(shards[0].g[k].length);
      for (let i = 0; i < out.length; i++) out[i] = (shards[0].g[k][i] + shards[1].g[k][i]) / 2;
      return out;
    };
    const g = { ...shards[0].g, w1: mean('w1'), b1: mean('b1'), w2: mean('w2'), b2: mean('b2'), scale: mean('scale') };
    if (workers[0].needsActivations) {
      workers.forEach((opt, w) => {
        opt.observe('fc1', shards[w].x, [BATCH, IN]);
        opt.observe('fc2', shards[w].g.hidden, [BATCH, HIDDEN]);
      });
      for (const name of ['fc1', 'fc2']) {
        const local = workers.map((o) => o.pendingCovariance(name));
        t.equal(local[0].length, name === 'fc1' ? 21 : 18, `${name} pending C is p x r`);
        t.not(firstDifference(local[0], local[1]), null, `${name}: workers see different data`);
        const avg = local[0].map((v, i) => (v + local[1][i]) / 2);
        workers.forEach((o) => o.setPendingCovariance(name, avg)); // average C across workers here
        t.equal(firstDifference(workers[0].pendingCovariance(name), avg), null, `${name}: averaged C written back`);
      }
    }
    workers.forEach((opt, w) => opt.step(updates(params[w], g)));
  }
  t.equal(firstDifference(params[0], params[1]), null, 'replicas identical');
  t.equal(firstDifference(workers[0].getState(), workers[1].getState()), null, 'optimizer states identical');
  workers.forEach((o) => o.dispose());
});

t.test('conv2d layers, tokens and full-covariance layers step', async (t) => {
  const opt = new NysAct({ tcov: 1, tinv: 2, rank: 4, seed: 3 });
  opt.addConv2d('conv', { kernelSize: [3, 2], inChannels: 2, outChannels: 3, strides: [2, 1], padding: 'same', dilation: [1, 2] });
  opt.addDense('tiny', { inFeatures: 2, outFeatures: 2 }); // p 3 <= rank: full covariance
  const rand = mulberry32(8);
  const conv = { weight: randomArray(rand, 3 * 2 * 2 * 3), bias: randomArray(rand, 3) };
  const tiny = { weight: randomArray(rand, 4), bias: randomArray(rand, 2) };
  for (let i = 0; i < 4; i++) {
    opt.observe('conv', randomArray(rand, 2 * 7 * 6 * 2), [2, 7, 6, 2]);
    opt.observe('tiny', randomArray(rand, 3 * 5 * 2), [3, 5, 2]);
    const r = opt.step({
      conv: { ...conv, grad: randomArray(rand, conv.weight.length, 0.1), biasGrad: randomArray(rand, 3, 0.1) },
      tiny: { ...tiny, grad: randomArray(rand, 4, 0.1), biasGrad: randomArray(rand, 2, 0.1) },
    });
    t.same([r.statistics, r.inverse, r.skipped], [true, i % 2 === 0, false]);
  }
  const c = opt.layerState('conv');
  t.same([c.p, c.r, c.fullCovariance], [3 * 2 * 2 + 1, 4, false]);
  const f = opt.layerState('tiny');
  t.same([f.p, f.r, f.fullCovariance, f.sketch.length, f.ema.length], [3, 3, true, 0, 9]);
  t.ok(conv.weight.every(Number.isFinite) && tiny.weight.every(Number.isFinite), 'finite weights');
  opt.dispose();
});

t.test('options and hyperparameter setters', async (t) => {
  const opt = new NysAct();
  t.same(
    opt.options,
    {
      lr: 0.1, momentum: 0.9, statDecay: 0.95, damping: 1, weightDecay: 5e-4, tcov: 5, tinv: 50, rank: 10,
      sketch: 'gaussian', seed: 0, nesterov: false, backend: 'auto', nonFinite: 'throw', nystrom: 'reference',
      weightDecayMode: 'coupled',
    },
    'SPEC §1 reference defaults',
  );
  opt.lr = 0.2;
  opt.momentum = 0.5;
  opt.weightDecay = 0;
  opt.damping = 0.1;
  t.same([opt.lr, opt.momentum, opt.weightDecay, opt.damping], [0.2, 0.5, 0, 0.1]);
  t.equal(opt.options.lr, 0.2);
  opt.dispose();
  const variants = new NysAct({ nesterov: true, nystrom: 'textbook', weightDecayMode: 'decoupled', seed: 9 });
  variants.addDense('d', { inFeatures: 4, outFeatures: 2, bias: false, rank: 2 });
  const rand = mulberry32(3);
  const weight = randomArray(rand, 8);
  variants.observe('d', randomArray(rand, 20), [5, 4]);
  t.equal(variants.step({ d: { weight, grad: randomArray(rand, 8) } }).skipped, false, 'variant options step');
  variants.dispose();
});

t.test('layerKey is 32-bit FNV-1a of the UTF-8 name', async (t) => {
  t.equal(layerKey(''), 0x811c9dc5);
  t.equal(layerKey('a'), 0xe40c292c);
  t.equal(layerKey('foobar'), 0xbf9cf968);
  t.equal(layerKey('é'), layerKey('\u00e9'));
  t.not(layerKey('fc1'), layerKey('fc2'));
});

t.test('nativeInfo', async (t) => {
  const info = nativeInfo();
  t.equal(info.interfaceVersion, 3);
  t.type(info.version, 'string');
  t.ok(info.threads >= 1);
  t.ok(info.backends.some((b) => b.name === 'cpu' && b.available));
});

t.test('package entry points: require and import share one module', async (t) => {
  const root = path.join(__dirname, '..');
  const script = [
    "import * as esm from 'nysact';",
    "import { createRequire } from 'node:module';",
    'const cjs = createRequire(import.meta.url)("nysact");',
    'console.log(JSON.stringify({ same: esm.NysAct === cjs.NysAct && esm.NysActError === cjs.NysActError,',
    '  esm: Object.keys(esm).sort(), cjs: Object.keys(cjs).sort() }));',
  ].join('\n');
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' });
  t.equal(run.status, 0, run.stderr);
  const out = JSON.parse(run.stdout) as { same: boolean; esm: string[]; cjs: string[] };
  t.ok(out.same, 'one class identity (no dual-package hazard)');
  t.same(out.esm, out.cjs, 'same named exports');
});

t.test('a missing binary fails with ERR_NYSACT_LOAD and explains the fix', async (t) => {
  const root = path.join(__dirname, '..');
  const script =
    "try { require('./dist/cjs/index.js').nativeInfo(); console.log('loaded') } " +
    'catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }';
  const run = spawnSync(process.execPath, ['-e', script], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, NYSACT_PREBUILD: path.join(root, 'test', 'no-such-dir') },
  });
  const out = JSON.parse(run.stdout) as { code: string; message: string };
  t.equal(out.code, 'ERR_NYSACT_LOAD');
  t.match(out.message, /linux|darwin|win32/);
  t.match(out.message, /N-API/);
  t.match(out.message, /build\/Release/);
  t.match(out.message, /npm run build:native/);
  t.match(out.message, /cmake.*C\+\+17.*libeigen3-dev.*librandom123-dev/s);
});

t.test("idle OpenMP threads sleep unless the user says otherwise (libgomp's verbose display)", async (t) => {
  const root = path.join(__dirname, '..');
  const script = "require('./dist/cjs/index.js').nativeInfo(); console.log(JSON.stringify(process.env.OMP_WAIT_POLICY ?? null))";
  const run = (extra: Record<string, string>) => {
    const env: Record<string, string | undefined> = { ...process.env, OMP_DISPLAY_ENV: 'verbose', ...extra };
    if (!('OMP_WAIT_POLICY' in extra)) delete env.OMP_WAIT_POLICY;
    if (!('GOMP_SPINCOUNT' in extra)) delete env.GOMP_SPINCOUNT;
    const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', env });
    t.equal(r.status, 0, r.stderr);
    const spin = /GOMP_SPINCOUNT = '(\d+)'/.exec(r.stderr);
    t.ok(spin, 'libgomp printed its settings');
    return { spin: spin ? Number(spin[1]) : NaN, policy: /OMP_WAIT_POLICY = '(\w+)'/.exec(r.stderr)?.[1], env: JSON.parse(r.stdout) as string | null };
  };
  const plain = run({});
  t.equal(plain.spin, 0, 'no spinning by default');
  t.equal(plain.env, null, 'the environment is restored after loading');
  const active = run({ OMP_WAIT_POLICY: 'active' });
  t.equal(active.policy, 'ACTIVE', "the user's OMP_WAIT_POLICY wins");
  t.equal(active.env, 'active');
  t.equal(run({ GOMP_SPINCOUNT: '1234' }).spin, 1234, "the user's GOMP_SPINCOUNT wins");
});
