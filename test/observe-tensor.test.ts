// observe() with activations in a DeviceTensor on the CPU backend: the same bits as observing the
// same values from a Float32Array (dense and conv layers, statistics and inverse steps, step and
// stepAsync), every misuse refused with a coded error that changes nothing (pending statistics
// included), and NaN/Infinity in a tensor handled by `nonFinite` exactly as in an array.
// (CUDA variants: test/cuda.test.ts.)
import * as path from 'node:path';
import t from 'tap';
import { DeviceTensor, NysAct, type LayerUpdate, type StepArray, type StepResult } from '../dist/cjs/index.js';
import { firstDifference, mulberry32, randomArray } from './helpers';

const root = path.join(__dirname, '..');

/** fc: dense with bias; conv: strided, dilated 'same' conv with bias; sub: subcolumns, no bias. */
function makeOptimizer(nonFinite: 'throw' | 'skip' = 'throw'): NysAct {
  const opt = new NysAct({ backend: 'cpu', tcov: 2, tinv: 3, rank: 3, seed: 21, lr: 0.05, weightDecay: 1e-3, nonFinite });
  opt.addDense('fc', { inFeatures: 10, outFeatures: 6 });
  opt.addConv2d('conv', { kernelSize: [3, 2], inChannels: 2, outChannels: 3, strides: [2, 1], padding: 'same', dilation: [1, 2] });
  opt.addDense('sub', { inFeatures: 7, outFeatures: 2, sketch: 'subcolumns', bias: false });
  return opt;
}

/** Weight and bias lengths, and the activation shapes observed. */
const LAYERS = {
  fc: { weight: 60, bias: 6, shape: [2, 4, 10] },
  conv: { weight: 36, bias: 3, shape: [2, 5, 6, 2] },
  sub: { weight: 14, bias: 0, shape: [5, 7] },
} as const;
type Name = keyof typeof LAYERS;
const NAMES = Object.keys(LAYERS) as Name[];
const count = (name: Name): number => LAYERS[name].shape.reduce((a: number, b: number) => a * b, 1);

function activations(i: number): Record<Name, Float32Array> {
  const r = mulberry32(500 + i);
  return { fc: randomArray(r, count('fc')), conv: randomArray(r, count('conv')), sub: randomArray(r, count('sub')) };
}

interface Params {
  weight: Float32Array;
  bias?: Float32Array;
}

function initial(): Record<Name, Params> {
  const r = mulberry32(7);
  const out = {} as Record<Name, Params>;
  for (const name of NAMES) {
    const l = LAYERS[name];
    out[name] = { weight: randomArray(r, l.weight, 0.3), ...(l.bias ? { bias: randomArray(r, l.bias, 0.1) } : {}) };
  }
  return out;
}

function grads(params: Record<Name, Params>, i: number): Record<string, LayerUpdate<StepArray>> {
  const r = mulberry32(900 + i);
  const out: Record<string, LayerUpdate<StepArray>> = {};
  for (const name of NAMES) {
    const l = LAYERS[name];
    const p = params[name];
    out[name] = { weight: p.weight, grad: randomArray(r, l.weight, 0.05), ...(p.bias ? { bias: p.bias, biasGrad: randomArray(r, l.bias, 0.05) } : {}) };
  }
  return out;
}

function pending(opt: NysAct): Record<Name, Float32Array> {
  const out = {} as Record<Name, Float32Array>;
  for (const name of NAMES) out[name] = opt.pendingCovariance(name);
  return out;
}

t.test('observing from DeviceTensors gives the bits of observing from Float32Arrays', async (t) => {
  const plain = makeOptimizer();
  const withTensors = makeOptimizer();
  const withBuffers = makeOptimizer();
  const pp = initial();
  const pt = initial();
  const pb = initial();
  // One tensor (and one host buffer) per layer, refilled on every statistics step as a training loop would.
  const xt = {} as Record<Name, DeviceTensor>;
  const xb = {} as Record<Name, Float32Array>;
  for (const name of NAMES) {
    xt[name] = withTensors.tensor(count(name));
    xb[name] = withBuffers.hostBuffer(count(name));
  }
  let statistics = 0;
  let inverse = 0;
  for (let i = 0; i < 12; i++) {
    if (plain.needsActivations) {
      const x = activations(i);
      for (const name of NAMES) {
        const shape = LAYERS[name].shape;
        plain.observe(name, x[name], shape);
        withTensors.observe(name, xt[name].upload(x[name]), shape);
        xb[name].set(x[name]);
        withBuffers.observe(name, xb[name], shape);
      }
      t.equal(firstDifference(pending(withTensors), pending(plain)), null, `step ${i}: pending statistics bit-identical (tensors)`);
      t.equal(firstDifference(pending(withBuffers), pending(plain)), null, `step ${i}: pending statistics bit-identical (host buffers)`);
    }
    const rp = plain.step(grads(pp, i));
    const rt = i % 2 ? await withTensors.stepAsync(grads(pt, i)) : withTensors.step(grads(pt, i));
    const rb = i % 2 ? withBuffers.step(grads(pb, i)) : await withBuffers.stepAsync(grads(pb, i));
    t.same(rt, rp, `step ${i}: tensors, same result`);
    t.same(rb, rp, `step ${i}: host buffers, same result`);
    if (rp.statistics) statistics += 1;
    if (rp.inverse) inverse += 1;
  }
  t.ok(statistics >= 5 && inverse >= 3, `statistics (${statistics}) and inverse (${inverse}) steps ran`);
  for (const name of NAMES) {
    t.equal(firstDifference(pt[name], pp[name]), null, `${name}: weights and bias bit-identical (tensors)`);
    t.equal(firstDifference(pb[name], pp[name]), null, `${name}: weights and bias bit-identical (host buffers)`);
    t.ok(plain.layerState(name).ema.some((v) => v !== 0), `${name}: the statistics reached the EMA`);
  }
  t.equal(firstDifference(withTensors.getState(), plain.getState()), null, 'tensor run: state bit-identical');
  t.equal(firstDifference(withBuffers.getState(), plain.getState()), null, 'host-buffer run: state bit-identical');
  t.not(firstDifference(pp.conv.weight, initial().conv.weight), null, 'the weights moved');
  // Different values in the tensor do reach the statistics (the comparison above can fail).
  const probe = makeOptimizer();
  const x = activations(0);
  probe.observe('fc', probe.tensor(count('fc')).upload(x.fc.map((v) => v * 2)), LAYERS.fc.shape);
  const fresh = makeOptimizer();
  fresh.observe('fc', x.fc, LAYERS.fc.shape);
  t.not(firstDifference(probe.pendingCovariance('fc'), fresh.pendingCovariance('fc')), null, 'other values, other statistics');
  for (const v of Object.values(xt)) v.dispose();
  for (const opt of [plain, withTensors, withBuffers, probe, fresh]) opt.dispose();
});

t.test('bad tensors for activations are refused and change nothing', async (t) => {
  const opt = makeOptimizer();
  const reference = makeOptimizer();
  const other = makeOptimizer();
  const x = activations(0);
  for (const o of [opt, reference]) for (const name of NAMES) o.observe(name, x[name], LAYERS[name].shape);
  const before = pending(opt);
  const state = opt.getState();
  class CudaLooking extends DeviceTensor {
    override get backend(): 'cpu' | 'cuda' {
      return 'cuda';
    }
  }
  const short = opt.tensor(79).fill(1);
  const long = opt.tensor(121).fill(1);
  const disposed = opt.tensor(80).fill(1);
  disposed.dispose();
  const foreign = new CudaLooking(80, { backend: 'cpu' }).fill(1);
  const cases: [string, () => void, { name: string; code: string; message: RegExp }][] = [
    [
      'short tensor (dense)',
      () => opt.observe('fc', short, [8, 10]),
      { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /a DeviceTensor of length 80 \(the product of shape \[8, 10\]\) for activations but received DeviceTensor\(79, 'cpu'\)/ },
    ],
    [
      'long tensor (conv)',
      () => opt.observe('conv', long, [2, 5, 6, 2]),
      { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /a DeviceTensor of length 120 .* for activations but received DeviceTensor\(121, 'cpu'\)/ },
    ],
    ['disposed tensor', () => opt.observe('fc', disposed, [8, 10]), { name: 'NysActError', code: 'ERR_NYSACT_DISPOSED', message: /activations/ }],
    ['other backend', () => opt.observe('fc', foreign, [8, 10]), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /backend \('cpu'\) for activations/ }],
    ['not a tensor', () => opt.observe('fc', { length: 80 } as never, [8, 10]), { name: 'TypeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /a Float32Array or DeviceTensor for activations/ }],
    ['a Float64Array', () => opt.observe('fc', new Float64Array(80) as never, [8, 10]), { name: 'TypeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /for activations but received Float64Array\(80\)/ }],
  ];
  for (const [what, call, expected] of cases) {
    t.throws(call, expected, what);
    t.equal(firstDifference(pending(opt), before), null, `${what}: pending statistics untouched`);
  }

  // A tensor in use by another optimizer's step in flight (as its fc gradient: 60 = 6 x 10 values).
  const shared = opt.tensor(60).upload(randomArray(mulberry32(3), 60));
  for (const name of NAMES) other.observe(name, x[name], LAYERS[name].shape);
  const g = grads(initial(), 0);
  const inFlight = other.stepAsync({ ...g, fc: { ...g.fc, grad: shared } });
  t.throws(() => opt.observe('fc', shared, [6, 10]), { name: 'NysActError', code: 'ERR_NYSACT_BUSY', message: /activations/ }, 'a busy tensor');
  t.equal(firstDifference(pending(opt), before), null, 'busy: pending statistics untouched');
  await inFlight;
  t.equal(firstDifference(opt.getState(), state), null, 'state unchanged by every refusal');
  t.equal(opt.iteration, 0);
  // Once free, the tensor is accepted (replacing fc's pending statistics, as an array would).
  opt.observe('fc', shared, [6, 10]);
  reference.observe('fc', shared.download(), [6, 10]);
  t.equal(firstDifference(pending(opt), pending(reference)), null, 'the freed tensor is observed');
  // The step commits those statistics, and the others observed before the refusals.
  const gp = initial();
  const gr = initial();
  t.same(opt.step(grads(gp, 0)), reference.step(grads(gr, 0)), 'the step then runs');
  t.equal(firstDifference(opt.getState(), reference.getState()), null, 'with the statistics observed before the refusals');
  for (const v of [short, long, foreign, shared]) v.dispose();
  for (const o of [opt, reference, other]) o.dispose();
});

t.test('the raw binding checks tensor activations too', async (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root) as {
    Layer: new (spec: object, backend: string) => {
      sketchCovarianceDense(x: unknown, rows: number, s: null): boolean;
      sketchCovarianceConv(x: unknown, b: number, h: number, w: number, s: null): boolean;
      hasPendingStatistics(): boolean;
      dispose(): void;
    };
    Tensor: new (length: number, backend: string) => { fill(v: number): void; upload(src: Float32Array, offset: number): void; dispose(): void };
  };
  const spec = {
    kind: 0, fanIn: 4, fanOut: 3, bias: true, rank: 2, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0,
    strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, seedHi: 0, seedLo: 5, layerKey: 1,
  };
  const layer = new native.Layer(spec, 'cpu');
  const x = new native.Tensor(12, 'cpu');
  x.fill(0.5);
  t.throws(() => layer.sketchCovarianceDense(x, 2, null), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /x to have length 8 but received length 12/ }, 'length');
  t.equal(layer.hasPendingStatistics(), false);
  t.equal(layer.sketchCovarianceDense(x, 3, null), true, 'a tensor of the right length');
  t.equal(layer.hasPendingStatistics(), true);
  x.upload(new Float32Array([NaN]), 5);
  t.equal(layer.sketchCovarianceDense(x, 3, null), false, 'non-finite: refused');
  t.throws(() => layer.sketchCovarianceDense({ length: 12 }, 3, null), { name: 'TypeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /a Float32Array or a native tensor for x/ }, 'not a tensor');
  t.throws(() => layer.sketchCovarianceConv(x, 1, 1, 1, null), { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /conv2d layer/ }, 'conv call on a dense layer');
  x.dispose();
  t.throws(() => layer.sketchCovarianceDense(x, 3, null), { code: 'ERR_NYSACT_DISPOSED', message: /x is a disposed tensor/ }, 'disposed');
  t.equal(layer.hasPendingStatistics(), true, 'the earlier pending statistics stay');
  layer.dispose();
});

for (const where of ['fc', 'conv'] as const) {
  t.test(`NaN and Infinity in a tensor (${where}) follow nonFinite exactly like an array`, async (t) => {
    const bad = (x: Record<Name, Float32Array>): Record<Name, Float32Array> => {
      const out = { ...x, [where]: x[where].slice() };
      out[where][7] = where === 'fc' ? NaN : -Infinity;
      return out;
    };
    // 'throw': the same error, nothing stored, earlier pending statistics kept.
    const opt = makeOptimizer('throw');
    const x0 = activations(0);
    for (const name of NAMES) opt.observe(name, x0[name], LAYERS[name].shape);
    const before = pending(opt);
    const xb = bad(activations(1));
    let arrayError: unknown;
    try {
      opt.observe(where, xb[where], LAYERS[where].shape);
    } catch (error) {
      arrayError = error;
    }
    t.match(arrayError, { name: 'NysActError', code: 'ERR_NYSACT_NON_FINITE' }, 'array: throws');
    const tensor = opt.tensor(count(where)).upload(xb[where]);
    t.throws(() => opt.observe(where, tensor, LAYERS[where].shape), { name: 'NysActError', code: 'ERR_NYSACT_NON_FINITE', message: (arrayError as Error).message }, 'tensor: the same error');
    t.equal(firstDifference(pending(opt), before), null, 'pending statistics untouched');
    tensor.dispose();
    opt.dispose();

    // 'skip': the step is skipped for the same reason, and the runs stay bit-identical.
    const plain = makeOptimizer('skip');
    const withTensors = makeOptimizer('skip');
    const pp = initial();
    const pt = initial();
    const xt = {} as Record<Name, DeviceTensor>;
    for (const name of NAMES) xt[name] = withTensors.tensor(count(name));
    let skipped = 0;
    for (let i = 0; i < 8; i++) {
      if (plain.needsActivations) {
        const x = i === 2 ? bad(activations(i)) : activations(i);
        for (const name of NAMES) {
          plain.observe(name, x[name], LAYERS[name].shape);
          withTensors.observe(name, xt[name].upload(x[name]), LAYERS[name].shape);
        }
      }
      const rp: StepResult = plain.step(grads(pp, i));
      const rt: StepResult = i % 2 ? withTensors.step(grads(pt, i)) : await withTensors.stepAsync(grads(pt, i));
      t.same(rt, rp, `step ${i}: same result`);
      if (rp.skipped) {
        skipped += 1;
        t.match(rp.reason, new RegExp(`non-finite activations for layer "${where}"`), `step ${i}: skipped for the activations`);
      }
    }
    t.equal(skipped, 1, 'exactly the step with the bad activations was skipped');
    for (const name of NAMES) t.equal(firstDifference(pt[name], pp[name]), null, `${name}: parameters bit-identical`);
    t.equal(firstDifference(withTensors.getState(), plain.getState()), null, 'state bit-identical');
    for (const v of Object.values(xt)) v.dispose();
    plain.dispose();
    withTensors.dispose();
  });
}
