// Host buffers and device tensors on the CPU backend: allocation, alignment, round trips, use as
// step operands (the same bits as plain Float32Arrays), and every misuse refused with a coded error
// that names the argument and changes nothing. (CUDA variants: test/cuda.test.ts.)
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import t from 'tap';
import {
  DeviceTensor,
  MAX_BUFFER_LENGTH,
  NysAct,
  NysActError,
  hostBuffer,
  liveObjects,
  tensor,
  type LayerUpdate,
  type StepArray,
} from '../dist/cjs/index.js';
import { firstDifference, mulberry32, randomArray } from './helpers';

const root = path.join(__dirname, '..');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const native = require('node-gyp-build')(root) as { byteAlignment(x: Float32Array): number };

const BAD_LENGTHS: [unknown, string][] = [
  [0, 'RangeError'],
  [-1, 'RangeError'],
  [1.5, 'RangeError'],
  [NaN, 'RangeError'],
  [Infinity, 'RangeError'],
  [MAX_BUFFER_LENGTH + 1, 'RangeError'],
  ['3', 'TypeError'],
  [undefined, 'TypeError'],
  [null, 'TypeError'],
  [3n, 'TypeError'],
];

t.test('hostBuffer: length, zeroed, 64-byte aligned, freed with the array', async (t) => {
  for (const n of [1, 3, 16, 1000, 4097]) {
    const b = hostBuffer(n, { backend: 'cpu' });
    t.ok(b instanceof Float32Array, `${n}: a Float32Array`);
    t.equal(b.length, n, `${n}: length`);
    t.equal(b.byteOffset, 0, `${n}: at the start of its buffer`);
    t.equal(b.buffer.byteLength, 4 * n, `${n}: its own ArrayBuffer of 4n bytes`);
    t.ok(native.byteAlignment(b) >= 64, `${n}: aligned to ${native.byteAlignment(b)} bytes`);
    t.ok(b.every((v) => v === 0), `${n}: zeroed`);
    b[n - 1] = 7;
    t.equal(b[n - 1], 7, `${n}: writable`);
  }
  // The optimizer's own backend.
  const opt = new NysAct({ backend: 'cpu' });
  const before = liveObjects();
  const mine = opt.hostBuffer(10);
  t.equal(mine.length, 10);
  t.ok(native.byteAlignment(mine) >= 64);
  t.equal(liveObjects().hostBuffers, before.hostBuffers + 1, 'counted as a live host buffer');
  t.equal(liveObjects().hostBufferBytes, before.hostBufferBytes + 40, 'and its bytes');
  opt.dispose();
  t.throws(() => opt.hostBuffer(4), { code: 'ERR_NYSACT_DISPOSED' }, 'not after dispose');
  // An ordinary Float32Array is not necessarily 64-byte aligned (the check above can fail).
  const offsets = new Set<number>();
  for (let i = 0; i < 64; i++) offsets.add(native.byteAlignment(new Float32Array(new ArrayBuffer(64), 4 * (i % 3) + 4, 3)));
  t.ok([...offsets].some((a) => a < 64), 'byteAlignment sees misaligned views');
});

t.test('hostBuffer: bad lengths and options', async (t) => {
  for (const [length, error] of BAD_LENGTHS) {
    t.throws(() => hostBuffer(length as number, { backend: 'cpu' }), { name: error, code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /for length/ }, `length ${String(length)}: ${error}`);
  }
  t.throws(() => hostBuffer(4, { backend: 'gpu' as never }), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /options\.backend/ });
  t.throws(() => hostBuffer(4, { device: 0 } as never), { name: 'TypeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /options\.device/ });
  t.throws(() => hostBuffer(4, 'cpu' as never), { name: 'TypeError', message: /for options/ });
  const opt = new NysAct({ backend: 'cpu' });
  t.throws(() => opt.hostBuffer(-2), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT' });
  opt.dispose();
});

t.test('hostBuffer where the runtime forbids external ArrayBuffers', async (t) => {
  const script = `
    const { hostBuffer, liveObjects, nativeInfo } = require('./dist/cjs/index.js');
    nativeInfo();
    const before = liveObjects();
    let error;
    try { hostBuffer(100, { backend: 'cpu' }); } catch (e) { error = { name: e.name, code: e.code, message: e.message }; }
    console.log(JSON.stringify({ error, before, after: liveObjects() }));
  `;
  const run = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', env: { ...process.env, NYSACT_TEST_NO_EXTERNAL_BUFFERS: '1' } });
  t.equal(run.status, 0, `no crash\n${run.stderr}`);
  const out = JSON.parse(run.stdout.trim().split('\n').pop() ?? '{}') as {
    error?: { name: string; code: string; message: string };
    before: { hostBuffers: number };
    after: { hostBuffers: number };
  };
  t.equal(out.error?.name, 'NysActError');
  t.equal(out.error?.code, 'ERR_NYSACT_UNSUPPORTED', 'a stable code');
  t.match(out.error?.message ?? '', /does not allow external ArrayBuffers.*use an ordinary Float32Array/, 'says what to do instead');
  t.equal(out.after.hostBuffers, out.before.hostBuffers, 'nothing leaked');
});

t.test('DeviceTensor: create, upload, download, fill, dispose', async (t) => {
  const before = liveObjects();
  const a = tensor(10, { backend: 'cpu' });
  t.ok(a instanceof DeviceTensor);
  t.equal(a.length, 10);
  t.equal(a.backend, 'cpu');
  t.equal(a.disposed, false);
  t.equal(liveObjects().tensors, before.tensors + 1, 'a live tensor');
  t.equal(liveObjects().tensorBytes, before.tensorBytes + 40, 'its bytes');
  const values = randomArray(mulberry32(1), 10);
  t.equal(a.upload(values), a, 'upload returns the tensor');
  t.equal(firstDifference(a.download(), values), null, 'round trip bit for bit');
  t.same([...a.fill(-2.5).download()], new Array(10).fill(-2.5), 'fill');
  a.upload(new Float32Array([1, 2, 3]), 7);
  t.same([...a.download()], [-2.5, -2.5, -2.5, -2.5, -2.5, -2.5, -2.5, 1, 2, 3], 'upload at an offset');
  a.upload(new Float32Array(0), 10);
  const dst = new Float32Array(10);
  t.equal(a.download(dst), dst, 'download into dst returns dst');
  t.same([...dst].slice(7), [1, 2, 3]);
  a.fill(NaN);
  t.ok(a.download().every(Number.isNaN), 'fill takes any number (NaN)');
  const b = new DeviceTensor(3, { backend: 'cpu' });
  t.equal(b.length, 3, 'the constructor works as tensor()');
  a.dispose();
  a.dispose();
  t.equal(a.disposed, true, 'disposed, idempotently');
  t.equal(a.length, 10, 'getters still answer');
  for (const [method, call] of [
    ['upload', () => a.upload(new Float32Array(1))],
    ['download', () => a.download()],
    ['fill', () => a.fill(1)],
  ] as const) {
    t.throws(call, { name: 'NysActError', code: 'ERR_NYSACT_DISPOSED', message: new RegExp(`DeviceTensor\\.${method}\\(\\)`) }, `${method} after dispose`);
  }
  b.dispose();
  t.equal(liveObjects().tensors, before.tensors, 'freed');
  t.equal(liveObjects().tensorBytes, before.tensorBytes);
  const opt = new NysAct({ backend: 'cpu' });
  const c = opt.tensor(5);
  t.equal(c.backend, 'cpu', "optimizer.tensor() uses the optimizer's backend");
  c.dispose();
  opt.dispose();
  t.throws(() => opt.tensor(5), { code: 'ERR_NYSACT_DISPOSED' });
});

t.test('DeviceTensor: bad arguments', async (t) => {
  for (const [length, error] of BAD_LENGTHS) {
    t.throws(() => tensor(length as number, { backend: 'cpu' }), { name: error, code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /for length/ }, `length ${String(length)}`);
  }
  t.throws(() => tensor(4, { backend: 'tpu' as never }), { name: 'RangeError', message: /options\.backend/ });
  const a = tensor(4, { backend: 'cpu' }).fill(1);
  const cases: [string, () => unknown, string, RegExp][] = [
    ['upload Float64Array', () => a.upload(new Float64Array(4) as never), 'TypeError', /a Float32Array for src but received Float64Array\(4\)/],
    ['upload too long', () => a.upload(new Float32Array(5)), 'RangeError', /at most 4 elements .* for src/],
    ['upload past the end', () => a.upload(new Float32Array(2), 3), 'RangeError', /at most 1 elements .* for src/],
    ['upload offset -1', () => a.upload(new Float32Array(1), -1), 'RangeError', /an integer in \[0, 4\] for offset/],
    ['upload offset 1.5', () => a.upload(new Float32Array(1), 1.5), 'RangeError', /for offset/],
    ['upload offset string', () => a.upload(new Float32Array(1), '1' as never), 'TypeError', /for offset/],
    ['download wrong length', () => a.download(new Float32Array(3)), 'RangeError', /a Float32Array of length 4 for dst/],
    ['download array', () => a.download([0, 0, 0, 0] as never), 'TypeError', /a Float32Array for dst/],
    ['fill string', () => a.fill('1' as never), 'TypeError', /a number for value/],
  ];
  for (const [what, call, name, message] of cases) {
    t.throws(call, { name, code: 'ERR_NYSACT_INVALID_ARGUMENT', message }, what);
  }
  t.same([...a.download()], [1, 1, 1, 1], 'nothing written by the refused calls');
  a.dispose();
});

/** A dense layer with bias, a subcolumn layer and a plain parameter; tcov 2, tinv 3. */
function makeOptimizer(): NysAct {
  const opt = new NysAct({ backend: 'cpu', tcov: 2, tinv: 3, rank: 3, seed: 4, lr: 0.05, weightDecay: 1e-3 });
  opt.addDense('fc', { inFeatures: 10, outFeatures: 6 });
  opt.addDense('sub', { inFeatures: 7, outFeatures: 2, sketch: 'subcolumns', bias: false, layout: 'outIn' });
  opt.addParam('scale', { size: 6 });
  return opt;
}

const SHAPES = { fc: [60, 6], sub: [14, 0], scale: [6, 0] } as const;

function observe(opt: NysAct, i: number): void {
  if (!opt.needsActivations) return;
  const r = mulberry32(70 + i);
  opt.observe('fc', randomArray(r, 8 * 10), [8, 10]);
  opt.observe('sub', randomArray(r, 5 * 7), [5, 7]);
}

function gradients(i: number): Record<string, { grad: Float32Array; biasGrad?: Float32Array }> {
  const r = mulberry32(300 + i);
  const out: Record<string, { grad: Float32Array; biasGrad?: Float32Array }> = {};
  for (const [name, [w, b]] of Object.entries(SHAPES)) out[name] = { grad: randomArray(r, w, 0.05), ...(b ? { biasGrad: randomArray(r, b, 0.05) } : {}) };
  return out;
}

function initial(): Record<string, { weight: Float32Array; bias?: Float32Array }> {
  const r = mulberry32(9);
  const out: Record<string, { weight: Float32Array; bias?: Float32Array }> = {};
  for (const [name, [w, b]] of Object.entries(SHAPES)) out[name] = { weight: randomArray(r, w, 0.3), ...(b ? { bias: randomArray(r, b, 0.1) } : {}) };
  return out;
}

t.test('steps with tensors and host buffers give the bits of steps with plain arrays', async (t) => {
  const plain = makeOptimizer();
  const withTensors = makeOptimizer();
  const withBuffers = makeOptimizer();
  const pa = initial();
  // Tensors hold the weights across steps; the gradients go in as tensors (fc, sub) or arrays.
  const tw: Record<string, { weight: DeviceTensor; bias?: DeviceTensor }> = {};
  const tg: Record<string, { grad: DeviceTensor; biasGrad?: DeviceTensor }> = {};
  for (const [name, v] of Object.entries(initial())) {
    tw[name] = { weight: withTensors.tensor(v.weight.length).upload(v.weight), ...(v.bias ? { bias: withTensors.tensor(v.bias.length).upload(v.bias) } : {}) };
    tg[name] = { grad: withTensors.tensor(v.weight.length), ...(v.bias ? { biasGrad: withTensors.tensor(v.bias.length) } : {}) };
  }
  const hb: Record<string, { weight: Float32Array; bias?: Float32Array; grad: Float32Array; biasGrad?: Float32Array }> = {};
  for (const [name, v] of Object.entries(initial())) {
    const weight = withBuffers.hostBuffer(v.weight.length);
    weight.set(v.weight);
    const entry: (typeof hb)[string] = { weight, grad: withBuffers.hostBuffer(v.weight.length) };
    if (v.bias) {
      entry.bias = withBuffers.hostBuffer(v.bias.length);
      entry.bias.set(v.bias);
      entry.biasGrad = withBuffers.hostBuffer(v.bias.length);
    }
    hb[name] = entry;
  }
  for (let i = 0; i < 12; i++) {
    for (const opt of [plain, withTensors, withBuffers]) observe(opt, i);
    const g = gradients(i);
    const gp: Record<string, LayerUpdate<StepArray>> = {};
    const gt: Record<string, LayerUpdate<StepArray>> = {};
    const gh: Record<string, LayerUpdate<StepArray>> = {};
    for (const name of Object.keys(SHAPES)) {
      gp[name] = { weight: pa[name].weight, grad: g[name].grad, ...(pa[name].bias ? { bias: pa[name].bias, biasGrad: g[name].biasGrad } : {}) };
      tg[name].grad.upload(g[name].grad);
      if (g[name].biasGrad) tg[name].biasGrad!.upload(g[name].biasGrad!);
      // scale: a tensor weight with a plain-array gradient (operands mix freely).
      gt[name] = {
        weight: tw[name].weight,
        grad: name === 'scale' ? g[name].grad : tg[name].grad,
        ...(tw[name].bias ? { bias: tw[name].bias, biasGrad: tg[name].biasGrad } : {}),
      };
      hb[name].grad.set(g[name].grad);
      if (hb[name].biasGrad) hb[name].biasGrad!.set(g[name].biasGrad!);
      gh[name] = hb[name];
    }
    const rp = plain.step(gp);
    const rt = i % 2 ? withTensors.step(gt) : await withTensors.stepAsync(gt);
    const rh = i % 2 ? await withBuffers.stepAsync(gh) : withBuffers.step(gh);
    t.same(rt, rp, `step ${i}: tensors, same result`);
    t.same(rh, rp, `step ${i}: host buffers, same result`);
  }
  for (const name of Object.keys(SHAPES)) {
    t.equal(firstDifference(tw[name].weight.download(), pa[name].weight), null, `${name}: tensor weight bit-identical`);
    if (pa[name].bias) t.equal(firstDifference(tw[name].bias!.download(), pa[name].bias), null, `${name}: tensor bias bit-identical`);
    t.equal(firstDifference(hb[name].weight, pa[name].weight), null, `${name}: host-buffer weight bit-identical`);
  }
  t.equal(firstDifference(withTensors.getState(), plain.getState()), null, 'tensor run: state bit-identical');
  t.equal(firstDifference(withBuffers.getState(), plain.getState()), null, 'host-buffer run: state bit-identical');
  t.not(firstDifference(pa.fc.weight, initial().fc.weight), null, 'the weights moved');
  for (const v of [...Object.values(tw), ...Object.values(tg)]) for (const x of Object.values(v)) (x as DeviceTensor).dispose();
  for (const opt of [plain, withTensors, withBuffers]) opt.dispose();
});

t.test('tensor operands: wrong length, backend, disposed or busy are refused and change nothing', async (t) => {
  const opt = makeOptimizer();
  const other = makeOptimizer();
  const p = initial();
  const weight = opt.tensor(60).upload(p.fc.weight);
  const bias = opt.tensor(6).upload(p.fc.bias!);
  observe(opt, 0);
  const grads = (over: Partial<Record<'weight' | 'grad' | 'bias' | 'biasGrad', unknown>> = {}): Record<string, LayerUpdate<StepArray>> => {
    const g = gradients(0);
    return {
      fc: { weight, grad: g.fc.grad, bias, biasGrad: g.fc.biasGrad, ...over } as LayerUpdate,
      sub: { weight: p.sub.weight, grad: g.sub.grad },
      scale: { weight: p.scale.weight, grad: g.scale.grad },
    };
  };
  const state = opt.getState();
  const snapshot = () => ({ w: weight.download(), b: bias.download(), sub: p.sub.weight.slice(), scale: p.scale.weight.slice() });
  const before = snapshot();
  class CudaLooking extends DeviceTensor {
    override get backend(): 'cpu' | 'cuda' {
      return 'cuda';
    }
  }
  const short = opt.tensor(59);
  const disposed = opt.tensor(60);
  disposed.dispose();
  const foreign = new CudaLooking(60, { backend: 'cpu' });
  const nonFinite = opt.tensor(60).fill(Infinity);
  const cases: [string, Record<string, LayerUpdate<StepArray>>, { name?: string; code: string; message: RegExp }][] = [
    ['short tensor', grads({ weight: short }), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /a Float32Array or DeviceTensor of length 60 for grads\.fc\.weight but received DeviceTensor\(59, 'cpu'\)/ }],
    ['disposed tensor', grads({ grad: disposed }), { name: 'NysActError', code: 'ERR_NYSACT_DISPOSED', message: /grads\.fc\.grad/ }],
    ['other backend', grads({ weight: foreign }), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /backend \('cpu'\) for grads\.fc\.weight/ }],
    ['not a tensor', grads({ bias: { length: 6 } }), { name: 'TypeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /a Float32Array or DeviceTensor for grads\.fc\.bias/ }],
    ['non-finite tensor gradient', grads({ grad: nonFinite }), { name: 'NysActError', code: 'ERR_NYSACT_NON_FINITE', message: /grads\.fc\.grad/ }],
  ];
  for (const [what, g, expected] of cases) {
    t.throws(() => opt.step(g), expected, `step: ${what}`);
    await t.rejects(opt.stepAsync(g), expected, `stepAsync: ${what}`);
  }
  t.equal(firstDifference(snapshot(), before), null, 'weights unchanged');
  t.equal(firstDifference(opt.getState(), state), null, 'state unchanged');
  t.equal(opt.iteration, 0);

  // A tensor in use by another optimizer's step in flight.
  const sharedGrad = opt.tensor(60).upload(gradients(0).fc.grad);
  observe(other, 0);
  const po = initial();
  const g0 = gradients(0);
  const inFlight = other.stepAsync({
    fc: { weight: po.fc.weight, grad: sharedGrad, bias: po.fc.bias, biasGrad: g0.fc.biasGrad },
    sub: { weight: po.sub.weight, grad: g0.sub.grad },
    scale: { weight: po.scale.weight, grad: g0.scale.grad },
  });
  t.throws(() => opt.step(grads({ grad: sharedGrad })), { name: 'NysActError', code: 'ERR_NYSACT_BUSY', message: /grads\.fc\.grad/ }, 'a busy tensor as an operand');
  for (const [method, call] of [
    ['upload', () => sharedGrad.upload(new Float32Array(1))],
    ['download', () => sharedGrad.download()],
    ['fill', () => sharedGrad.fill(0)],
    ['dispose', () => sharedGrad.dispose()],
  ] as const) {
    t.throws(call, { name: 'NysActError', code: 'ERR_NYSACT_BUSY', message: new RegExp(`DeviceTensor\\.${method}\\(\\)`) }, `${method} while a step uses it`);
  }
  t.equal(sharedGrad.disposed, false, 'not disposed');
  await inFlight;
  t.equal(firstDifference(sharedGrad.download(), gradients(0).fc.grad), null, 'usable again, gradient unchanged');
  t.equal(firstDifference(opt.getState(), state), null, 'state still unchanged');
  const r = opt.step(grads({ grad: sharedGrad }));
  t.equal(r.iteration, 0, 'the valid step then runs');
  for (const x of [weight, bias, short, foreign, nonFinite, sharedGrad]) x.dispose();
  opt.dispose();
  other.dispose();
  t.ok(new NysActError('ERR_NYSACT_BUSY', 'x') instanceof Error);
});
