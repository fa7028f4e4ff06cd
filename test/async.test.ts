// stepAsync and synchronize on the CPU backend: the same bits as step() over many statistics and
// inverse steps, every state method refused with ERR_NYSACT_BUSY while a step is in flight, the
// arrays kept alive until it settles, errors as rejections that change nothing. (CUDA variants:
// test/cuda.test.ts.)
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import t from 'tap';
import { NysAct, NysActError, type LayerUpdate, type NysActOptions, type StepResult } from '../dist/cjs/index.js';
import { firstDifference, mulberry32, randomArray } from './helpers';

const root = path.join(__dirname, '..');

/** Every layer kind: gaussian dense with bias (outIn), conv 'same' with strides, subcolumns, full covariance, plain. */
function makeOptimizer(options: NysActOptions = {}): NysAct {
  const opt = new NysAct({ backend: 'cpu', tcov: 2, tinv: 3, rank: 4, seed: 11, lr: 0.05, nesterov: true, weightDecay: 1e-3, ...options });
  opt.addDense('fc', { inFeatures: 12, outFeatures: 5, layout: 'outIn' });
  opt.addConv2d('conv', { kernelSize: 3, inChannels: 3, outChannels: 4, padding: 'same', strides: 2, bias: false });
  opt.addDense('sub', { inFeatures: 9, outFeatures: 3, sketch: 'subcolumns' });
  opt.addDense('full', { inFeatures: 2, outFeatures: 3 });
  opt.addParam('gamma', { size: 7 });
  return opt;
}

const SIZES: Record<string, [number, number]> = { fc: [60, 5], conv: [108, 0], sub: [27, 3], full: [6, 3], gamma: [7, 0] };

type Params = Record<string, { weight: Float32Array; bias?: Float32Array }>;

function initParams(seed = 3): Params {
  const r = mulberry32(seed);
  const out: Params = {};
  for (const [name, [w, b]] of Object.entries(SIZES)) out[name] = { weight: randomArray(r, w, 0.4), ...(b ? { bias: randomArray(r, b, 0.1) } : {}) };
  return out;
}

function cloneParams(p: Params): Params {
  const out: Params = {};
  for (const [name, v] of Object.entries(p)) out[name] = { weight: v.weight.slice(), ...(v.bias ? { bias: v.bias.slice() } : {}) };
  return out;
}

/** The gradients of step i (a function of i only). */
function gradsFor(p: Params, i: number): Record<string, LayerUpdate> {
  const r = mulberry32(500 + i);
  const out: Record<string, LayerUpdate> = {};
  for (const [name, v] of Object.entries(p)) {
    out[name] = { weight: v.weight, grad: randomArray(r, v.weight.length, 0.05) };
    if (v.bias) Object.assign(out[name], { bias: v.bias, biasGrad: randomArray(r, v.bias.length, 0.05) });
  }
  return out;
}

function observeAll(opt: NysAct, i: number): void {
  if (!opt.needsActivations) return;
  const r = mulberry32(900 + i);
  opt.observe('fc', randomArray(r, 16 * 12), [16, 12]);
  opt.observe('conv', randomArray(r, 2 * 7 * 7 * 3), [2, 7, 7, 3]);
  opt.observe('sub', randomArray(r, 2 * 5 * 9), [2, 5, 9]);
  opt.observe('full', randomArray(r, 6 * 2), [6, 2]);
}

function firstParamDifference(a: Params, b: Params): string | null {
  return firstDifference(a, b);
}

t.test('stepAsync gives the same bits as step over many statistics and inverse steps', async (t) => {
  const sync = makeOptimizer();
  const asyncOpt = makeOptimizer();
  const ps = initParams();
  const pa = cloneParams(ps);
  let statistics = 0;
  let inverse = 0;
  for (let i = 0; i < 30; i++) {
    observeAll(sync, i);
    observeAll(asyncOpt, i);
    const rs = sync.step(gradsFor(ps, i));
    const promise = asyncOpt.stepAsync(gradsFor(pa, i));
    t.ok(promise instanceof Promise, 'stepAsync returns a promise');
    const ra = await promise;
    t.same(ra, rs, `step ${i}: the same result`);
    const d = firstParamDifference(ps, pa);
    if (d !== null) {
      t.fail(`step ${i}: parameters differ at ${d}`);
      break;
    }
    statistics += rs.statistics ? 1 : 0;
    inverse += rs.inverse ? 1 : 0;
  }
  t.equal(statistics, 15, '15 statistics steps');
  t.equal(inverse, 10, '10 inverse steps');
  t.equal(firstParamDifference(ps, pa), null, 'parameters bit-identical after 30 steps');
  t.equal(firstDifference(sync.getState(), asyncOpt.getState()), null, 'states bit-identical (EMA, sketches, factors, momentum)');
  t.not(firstParamDifference(ps, initParams()), null, 'the parameters moved');
  // Interleaved: sync and async steps on one optimizer equal all-sync steps.
  const mixed = makeOptimizer();
  const pm = initParams();
  const reference = makeOptimizer();
  const pr = initParams();
  for (let i = 0; i < 8; i++) {
    observeAll(mixed, i);
    observeAll(reference, i);
    if (i % 2) mixed.step(gradsFor(pm, i));
    else await mixed.stepAsync(gradsFor(pm, i));
    reference.step(gradsFor(pr, i));
  }
  t.equal(firstParamDifference(pm, pr), null, 'alternating step / stepAsync: bit-identical');
  for (const o of [sync, asyncOpt, mixed, reference]) o.dispose();
});

t.test('stepAsync with missing: skip and a non-finite skipped step', async (t) => {
  const a = makeOptimizer({ nonFinite: 'skip' });
  const b = makeOptimizer({ nonFinite: 'skip' });
  const pa = initParams();
  const pb = initParams();
  for (let i = 0; i < 6; i++) {
    observeAll(a, i);
    observeAll(b, i);
    const ga = gradsFor(pa, i);
    const gb = gradsFor(pb, i);
    if (i === 2) {
      (ga.fc.grad as Float32Array)[3] = NaN;
      (gb.fc.grad as Float32Array)[3] = NaN;
    }
    if (i === 4) {
      delete ga.gamma;
      delete gb.gamma;
    }
    const options = i === 4 ? { missing: 'skip' as const } : undefined;
    const ra: StepResult = a.step(ga, options);
    const rb = await b.stepAsync(gb, options);
    t.same(rb, ra, `step ${i}: ${ra.skipped ? 'skipped' : 'applied'} alike`);
  }
  t.equal(firstParamDifference(pa, pb), null, 'bit-identical');
  t.equal(b.busy, false, 'not busy after a skipped or applied async step');
  a.dispose();
  b.dispose();
});

t.test('while a step is in flight every state method throws ERR_NYSACT_BUSY', async (t) => {
  const opt = makeOptimizer();
  const reference = makeOptimizer();
  const p = initParams();
  const pr = initParams();
  observeAll(opt, 0);
  observeAll(reference, 0);
  reference.step(gradsFor(pr, 0));
  await opt.stepAsync(gradsFor(p, 0));
  const state = opt.getState();
  const bytes = opt.serializeState();
  observeAll(reference, 1);
  reference.step(gradsFor(pr, 1));

  t.equal(opt.busy, false, 'idle');
  const inFlight = opt.stepAsync(gradsFor(p, 1));
  t.equal(opt.busy, true, 'busy while the step is in flight');
  const x = new Float32Array(16 * 12);
  const calls: [string, () => unknown][] = [
    ['step()', () => opt.step(gradsFor(p, 2))],
    ['observe()', () => opt.observe('fc', x, [16, 12])],
    ['getState()', () => opt.getState()],
    ['setState()', () => opt.setState(state)],
    ['serializeState', () => opt.serializeState()],
    ['deserializeState()', () => opt.deserializeState(bytes)],
    ['addDense()', () => opt.addDense('late', { inFeatures: 2, outFeatures: 2 })],
    ['addConv2d()', () => opt.addConv2d('late', { kernelSize: 1, inChannels: 1, outChannels: 1 })],
    ['addParam()', () => opt.addParam('late', { size: 2 })],
    ['layerState()', () => opt.layerState('fc')],
    ['pendingCovariance()', () => opt.pendingCovariance('fc')],
    ['setPendingCovariance()', () => opt.setPendingCovariance('fc', new Float32Array(13 * 4))],
    ['dispose()', () => opt.dispose()],
    ['the lr setter', () => (opt.lr = 0.5)],
    ['the momentum setter', () => (opt.momentum = 0.5)],
    ['the weightDecay setter', () => (opt.weightDecay = 0.5)],
    ['the damping setter', () => (opt.damping = 0.5)],
    ['the stateBytes getter', () => opt.stateBytes],
  ];
  for (const [method, call] of calls) {
    let caught: unknown;
    try {
      call();
    } catch (error) {
      caught = error;
    }
    t.ok(caught instanceof NysActError, `${method}: NysActError`);
    t.equal((caught as NysActError | undefined)?.code, 'ERR_NYSACT_BUSY', `${method}: ERR_NYSACT_BUSY`);
    const name = method.startsWith('serializeState') ? 'getState()' : method;
    t.match((caught as Error | undefined)?.message ?? '', name, `${method}: the message names ${name}`);
  }
  await t.rejects(opt.stepAsync(gradsFor(p, 2)), { code: 'ERR_NYSACT_BUSY', message: /stepAsync\(\)/ }, 'stepAsync(): a rejected promise');
  t.equal(opt.disposed, false, 'dispose() while busy did not dispose');
  t.equal(opt.lr, 0.05, 'setters while busy changed nothing');
  t.equal(opt.layers.length, 5, 'no layer added');
  t.equal(opt.iteration, 1, 'iteration advances only when the step settles');
  const result = await inFlight;
  t.equal(result.iteration, 1);
  t.equal(opt.busy, false, 'idle again');
  t.equal(opt.iteration, 2);
  t.equal(firstParamDifference(p, pr), null, 'the step in flight was not disturbed by the refused calls');
  t.equal(firstDifference(opt.getState(), reference.getState()), null, 'state as after two plain steps');
  opt.lr = 0.06;
  opt.dispose();
  reference.dispose();
});

t.test('synchronize()', async (t) => {
  const opt = makeOptimizer();
  const p = initParams();
  const idle = opt.synchronize();
  t.ok(idle instanceof Promise, 'a promise');
  await idle;
  observeAll(opt, 0);
  const step = opt.stepAsync(gradsFor(p, 0));
  let stepSettled = false;
  void step.then(() => (stepSettled = true));
  await opt.synchronize();
  t.equal(opt.busy, false, 'no step in flight after synchronize()');
  t.equal(opt.iteration, 1, 'the step in flight is complete');
  await step;
  t.ok(stepSettled, 'the step promise settled');
  // synchronize never rejects: a failing step rejects its own promise only.
  const broken = makeOptimizer({ tinv: 5 });
  const state = broken.getState();
  broken.setState({ ...state, iteration: 1 }); // no factors yet and not an inverse step
  const pb = initParams();
  const before = cloneParams(pb);
  const failing = broken.stepAsync(gradsFor(pb, 1));
  const synced = broken.synchronize();
  await t.rejects(failing, { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /before the first nystromFactors/ }, 'a native failure rejects the step');
  await synced;
  t.pass('synchronize() resolved although the step rejected');
  t.equal(broken.busy, false);
  t.equal(broken.iteration, 1, 'iteration unchanged');
  t.equal(firstDifference(pb.fc, before.fc), null, 'the failing layer is untouched');
  // step() fails the same way, at the same layer.
  t.throws(() => broken.step(gradsFor(cloneParams(before), 1)), { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /before the first nystromFactors/ });
  opt.dispose();
  broken.dispose();
  const disposed = makeOptimizer();
  disposed.dispose();
  await disposed.synchronize();
  t.pass('synchronize() on a disposed optimizer resolves');
});

t.test('stepAsync validation rejects before any state changes', async (t) => {
  const opt = makeOptimizer();
  const p = initParams();
  observeAll(opt, 0);
  await opt.stepAsync(gradsFor(p, 0));
  const state = opt.getState();
  const before = cloneParams(p);
  const cases: [string, Record<string, LayerUpdate>, { name?: string; code: string; message: RegExp }][] = [];
  const g1 = gradsFor(p, 1);
  (g1.fc as { grad: Float32Array }).grad = new Float32Array(59);
  cases.push(['short grad', g1, { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /grads\.fc\.grad/ }]);
  const g2 = gradsFor(p, 1);
  delete g2.sub;
  cases.push(['missing layer', g2, { name: 'TypeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /grads\.sub/ }]);
  const g3 = gradsFor(p, 1);
  (g3.gamma.grad as Float32Array)[0] = Infinity;
  cases.push(['non-finite gradient', g3, { code: 'ERR_NYSACT_NON_FINITE', message: /grads\.gamma\.grad/ }]);
  for (const [what, grads, expected] of cases) {
    const promise = opt.stepAsync(grads);
    t.equal(opt.busy, false, `${what}: not busy after a rejected validation`);
    await t.rejects(promise, expected, `${what}: rejected`);
  }
  await t.rejects(opt.stepAsync(null as never), { name: 'TypeError', code: 'ERR_NYSACT_INVALID_ARGUMENT' }, 'grads null');
  t.equal(firstDifference(opt.getState(), state), null, 'state unchanged');
  t.equal(firstParamDifference(p, before), null, 'parameters unchanged');
  opt.dispose();
  await t.rejects(opt.stepAsync(gradsFor(p, 1)), { code: 'ERR_NYSACT_DISPOSED' }, 'disposed: rejected');
});

t.test('the raw binding marks layers busy and refuses to dispose them', async (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root) as {
    Layer: new (spec: object, backend: string) => { exportState(): unknown; dispose(): void; isDisposed(): boolean };
    stepPlanAsync(plan: object): Promise<unknown[]>;
    stepPlan(plan: object): unknown[];
  };
  const spec = {
    kind: 2, fanIn: 0, fanOut: 0, bias: false, rank: 1, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0,
    strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 4, seedHi: 0, seedLo: 0, layerKey: 0,
  };
  const layer = new native.Layer(spec, 'cpu');
  const weight = new Float32Array([1, 2, 3, 4]);
  const plan = {
    layers: [layer], weights: [weight], biases: [null], grads: [new Float32Array(4).fill(1)], biasGrads: [null],
    statistics: false, inverse: false, statDecay: 0.9, damping: 1, variant: 0, scalars: new Float64Array([0.5, 0, 0, 0, 0]),
  };
  const promise = native.stepPlanAsync(plan);
  t.throws(() => layer.exportState(), { code: 'ERR_NYSACT_BUSY' }, 'a busy native layer refuses calls');
  t.throws(() => layer.dispose(), { code: 'ERR_NYSACT_BUSY' }, 'and dispose');
  t.throws(() => native.stepPlan(plan), { code: 'ERR_NYSACT_BUSY' }, 'and a second plan');
  t.equal(layer.isDisposed(), false);
  const reports = await promise;
  t.same(reports, [], 'no factor reports (none rebuilt)');
  t.same([...weight], [0.5, 1.5, 2.5, 3.5], 'w -= lr * g');
  t.throws(() => native.stepPlan({ ...plan, layers: [layer, layer], weights: [weight, weight], biases: [null, null], grads: plan.grads.concat(plan.grads), biasGrads: [null, null] }), { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /appears twice/ });
  // The binding refuses written arrays that overlap another operand, whatever JS passes it.
  const other = new native.Layer(spec, 'cpu');
  const shared = new Float32Array(6);
  const overlapping = { ...plan, layers: [layer, other], weights: [shared.subarray(0, 4), shared.subarray(2, 6)], biases: [null, null], grads: plan.grads.concat(plan.grads), biasGrads: [null, null] };
  t.throws(() => native.stepPlan(overlapping), { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /plan\.weights\[\d\] shares memory with plan\.weights\[\d\]/ });
  t.throws(() => native.stepPlan({ ...plan, grads: [weight] }), { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /plan\.weights\[0\] shares memory with plan\.grads\[0\]/ });
  t.same([...shared], [0, 0, 0, 0, 0, 0], 'nothing was written');
  t.same(native.stepPlan({ ...plan, layers: [layer, other], weights: [shared.subarray(0, 4), new Float32Array(4)], biases: [null, null], grads: [plan.grads[0], plan.grads[0]], biasGrads: [null, null] }), [], 'one gradient array read by two layers is fine');
  other.dispose();
  layer.dispose();
  t.throws(() => native.stepPlan(plan), { code: 'ERR_NYSACT_DISPOSED' });
});

t.test('arrays passed to stepAsync stay alive until it settles', async (t) => {
  // A child with --expose-gc: the only references to the gradients (host buffers freed by their
  // finalizer, and plain arrays) are the ones the step holds.
  const script = `
    const { NysAct, hostBuffer, liveObjects } = require('./dist/cjs/index.js');
    const make = () => {
      const o = new NysAct({ backend: 'cpu', tcov: 1, tinv: 1, rank: 3, seed: 2 });
      o.addDense('fc', { inFeatures: 300, outFeatures: 200 });
      return o;
    };
    const grad = (i) => { const g = new Float32Array(60000); for (let k = 0; k < g.length; k++) g[k] = Math.sin(k + i) * 0.01; return g; };
    const x = new Float32Array(64 * 300).map((_, k) => Math.cos(k));
    // Collected host buffers are finalized from a setImmediate: gc, then let a turn pass.
    const drain = async () => { for (let k = 0; k < 3; k++) { global.gc(); await new Promise((r) => setImmediate(r)); } };
    (async () => {
      const a = make(), b = make();
      const wa = new Float32Array(60000).fill(0.1), wb = wa.slice();
      const ba = new Float32Array(200), bb = ba.slice();
      const counts = [];
      for (let i = 0; i < 4; i++) {
        a.observe('fc', x, [64, 300]); b.observe('fc', x, [64, 300]);
        a.step({ fc: { weight: wa, grad: grad(i), bias: ba, biasGrad: new Float32Array(200).fill(0.01) } });
        await drain();
        const start = liveObjects().hostBuffers;
        const promise = (() => {
          const g = hostBuffer(60000, { backend: 'cpu' });
          g.set(grad(i));
          const gb = hostBuffer(200, { backend: 'cpu' });
          gb.fill(0.01);
          return b.stepAsync({ fc: { weight: wb, grad: g, bias: bb, biasGrad: gb } });
        })();
        for (let k = 0; k < 5; k++) { global.gc(); new Array(1e5).fill(k); }
        await new Promise((r) => setImmediate(r));
        counts.push(liveObjects().hostBuffers - start);
        await promise;
      }
      // The raw binding: nothing in JS refers to the plan or its arrays once the call returns; only
      // the native step's references keep the host buffers (and the plain arrays) alive.
      const native = require('node-gyp-build')('.');
      const spec = { kind: 2, fanIn: 0, fanOut: 0, bias: false, rank: 1, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0,
        strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 100000, seedHi: 0, seedLo: 0, layerKey: 0 };
      const layer = new native.Layer(spec, 'cpu');
      const weight = new Float32Array(100000).fill(1);
      await drain();
      const start = liveObjects().hostBuffers;
      const promise = (() => {
        const g = native.hostBuffer(100000, 'cpu');
        g.fill(2);
        return native.stepPlanAsync({ layers: [layer], weights: [weight], biases: [null], grads: [g], biasGrads: [null],
          statistics: false, inverse: false, statDecay: 0.9, damping: 1, variant: 0, scalars: new Float64Array([0.25, 0, 0, 0, 0]) });
      })();
      for (let k = 0; k < 5; k++) { global.gc(); new Array(1e5).fill(k); }
      await new Promise((r) => setImmediate(r));
      const rawHeld = liveObjects().hostBuffers - start;
      await promise;
      const rawResult = weight.every((v) => v === 0.5);
      layer.dispose();
      await drain();
      const same = Buffer.compare(Buffer.from(wa.buffer), Buffer.from(wb.buffer)) === 0 && Buffer.compare(Buffer.from(ba.buffer), Buffer.from(bb.buffer)) === 0;
      console.log(JSON.stringify({ counts, same, rawHeld, rawResult, after: liveObjects().hostBuffers }));
      a.dispose(); b.dispose();
    })().catch((e) => { console.error(e); process.exit(1); });
  `;
  const run = spawnSync(process.execPath, ['--expose-gc', '-e', script], { cwd: root, encoding: 'utf8', timeout: 120_000 });
  t.equal(run.status, 0, `child exited 0\n${run.stderr.slice(-3000)}`);
  t.equal(run.signal, null, 'no crash');
  const out = JSON.parse(run.stdout.trim().split('\n').pop() ?? '{}') as {
    counts: number[];
    same: boolean;
    rawHeld: number;
    rawResult: boolean;
    after: number;
  };
  t.equal(out.rawHeld, 1, 'raw binding: the native step alone keeps its host buffer from being collected');
  t.ok(out.rawResult, 'raw binding: w - lr * g computed from the kept buffer');
  t.same(out.counts, [2, 2, 2, 2], 'the host buffers of the step in flight survive garbage collection');
  t.ok(out.same, 'results equal step() with the same values: the arrays were not freed or reused meanwhile');
  t.equal(out.after, 0, 'collected (and freed by their finalizer) once the step settled');
});
