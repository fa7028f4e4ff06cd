// The CUDA backend as JavaScript sees it: loaded on demand (never on the CPU path), a clear
// ERR_NYSACT_BACKEND_UNAVAILABLE naming the cause where it cannot be used, 'auto' choosing and
// reporting the backend, and — where a GPU is present — CPU/CUDA agreement and bit-identical Philox
// sketches.  The fixture parity of test/parity.test.ts runs on CUDA too when it is available.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { DeviceTensor, NysAct, NysActError, hostBuffer, nativeInfo, tensor, type LayerUpdate, type StepArray } from '../dist/cjs/index.js';
import { firstDifference, mulberry32, randomArray } from './helpers';

const root = join(__dirname, '..');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const nodeGypBuild = require('node-gyp-build') as { resolve(dir: string): string };
const addonPath = nodeGypBuild.resolve(root);
// The library the loader opens: NYSACT_CUDA_LIBRARY (the host emulation's run sets it:
// scripts/test-cuda-emulation.js), else nysact_cuda.so beside the addon.
const cudaLibrary = process.env.NYSACT_CUDA_LIBRARY || join(dirname(addonPath), 'nysact_cuda.so');

/** Runs a CommonJS snippet in a fresh node process (with extra environment) and parses its JSON output. */
function child(script: string, env: Record<string, string> = {}): Record<string, unknown> {
  const out = execFileSync(process.execPath, ['-e', script], {
    cwd: root,
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  return JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
}

const mapped = `require('node:fs').readFileSync('/proc/self/maps', 'utf8').includes(${JSON.stringify(basename(cudaLibrary))})`;

t.test('the CPU path never loads the CUDA library', async (t) => {
  const r = child(`
    const { NysAct, nativeInfo } = require('./dist/cjs/index.js');
    const native = require('node-gyp-build')(${JSON.stringify(root)});
    const opt = new NysAct({ backend: 'cpu', tcov: 1, tinv: 1, rank: 2 });
    opt.addDense('fc', { inFeatures: 4, outFeatures: 3 });
    opt.addConv2d('conv', { kernelSize: 2, inChannels: 2, outChannels: 2 });
    opt.addParam('p', { size: 5 });
    const w = new Float32Array(12).fill(0.1), b = new Float32Array(3), wc = new Float32Array(16).fill(0.1), bc = new Float32Array(2);
    opt.observe('fc', new Float32Array(8).fill(0.5), [2, 4]);
    opt.observe('conv', new Float32Array(2 * 3 * 3 * 2).fill(0.5), [2, 3, 3, 2]);
    opt.step({ fc: { weight: w, grad: w.slice(), bias: b, biasGrad: b.slice() },
               conv: { weight: wc, grad: wc.slice(), bias: bc, biasGrad: bc.slice() },
               p: { weight: new Float32Array(5), grad: new Float32Array(5).fill(1) } });
    opt.getState();
    opt.dispose();
    const before = { attempted: native.cudaLoadAttempted(), mapped: ${mapped} };
    nativeInfo();
    const after = { attempted: native.cudaLoadAttempted(), mapped: ${mapped} };
    console.log(JSON.stringify({ before, after }));
  `);
  t.same(r.before, { attempted: false, mapped: false }, 'a CPU optimizer (observe, step, state) never dlopens nysact_cuda.so');
  t.same(
    r.after,
    { attempted: true, mapped: existsSync(cudaLibrary) },
    `nativeInfo() does load it (${existsSync(cudaLibrary) ? 'present' : 'absent'} beside the addon): the check above can see a load`,
  );
});

const cuda = nativeInfo().backends.find((b) => b.name === 'cuda');

t.test('backends() describes the CUDA backend truthfully', async (t) => {
  t.ok(cuda, 'a cuda entry');
  if (!cuda) return;
  t.type(cuda.available, 'boolean');
  if (cuda.available) {
    t.equal(cuda.reason, '');
    t.match(cuda.device, /compute capability \d+\.\d+/);
  } else {
    t.not(cuda.reason, '', 'a reason');
    // What is missing, whichever it is on this machine: the library, a CUDA library, the driver, a device.
    t.match(cuda.reason, /does not exist|could not load|no usable CUDA device|compute capability|lacks the entry points|interface/);
    t.comment(`cuda unavailable here: ${cuda.reason}`);
  }
});

t.test("backend 'cuda' where it cannot be used", { skip: cuda?.available ? 'a CUDA device is available here' : false }, async (t) => {
  let caught: unknown;
  try {
    new NysAct({ backend: 'cuda' });
  } catch (error) {
    caught = error;
  }
  t.ok(caught instanceof NysActError, 'NysActError');
  t.equal((caught as NysActError).code, 'ERR_NYSACT_BACKEND_UNAVAILABLE');
  const message = (caught as Error).message;
  t.ok(message.includes(cuda!.reason), 'the message carries the reason');
  t.match(message, /use 'cpu' or 'auto'/, 'and the way out');
  if (existsSync(cudaLibrary)) {
    // Here the library was built (nvcc and the cuBLAS wheels present) but no GPU driver or device exists.
    t.match(message, /cudaGetDeviceCount|no CUDA device|compute capability|could not load/, `names the cause: ${message}`);
  } else {
    t.match(message, /no CUDA backend: .*nysact_cuda\.so does not exist/, 'names the missing library');
  }
  // The raw binding says the same without the TypeScript layer.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root) as { Layer: new (spec: object, backend: string) => unknown };
  const spec = {
    kind: 0, fanIn: 3, fanOut: 2, bias: false, rank: 2, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0,
    strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, seedHi: 0, seedLo: 0, layerKey: 0,
  };
  t.throws(() => new native.Layer(spec, 'cuda'), { code: 'ERR_NYSACT_BACKEND_UNAVAILABLE', message: /The CUDA backend is not available: / });
  t.throws(() => new native.Layer(spec, 'gpu'), { code: 'ERR_NYSACT_BACKEND_UNAVAILABLE', message: /Backend 'gpu' does not exist/ });
});

t.test("tensors and host buffers on 'cuda' where it cannot be used", { skip: cuda?.available ? 'a CUDA device is available here' : false }, async (t) => {
  t.throws(() => tensor(4, { backend: 'cuda' }), { name: 'NysActError', code: 'ERR_NYSACT_BACKEND_UNAVAILABLE', message: /use 'cpu' or 'auto'/ });
  t.throws(() => hostBuffer(4, { backend: 'cuda' }), { name: 'NysActError', code: 'ERR_NYSACT_BACKEND_UNAVAILABLE' });
  t.equal(tensor(4, { backend: 'auto' }).backend, 'cpu', "'auto' falls back to the CPU");
  t.equal(tensor(4).backend, 'cpu', "the default is 'auto'");
  // The raw binding says the same.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root) as { Tensor: new (n: number, b: string) => unknown; hostBuffer(n: number, b: string): unknown };
  t.throws(() => new native.Tensor(4, 'cuda'), { code: 'ERR_NYSACT_BACKEND_UNAVAILABLE' });
  t.throws(() => native.hostBuffer(4, 'cuda'), { code: 'ERR_NYSACT_BACKEND_UNAVAILABLE' });
});

t.test("backend 'auto' chooses and reports", async (t) => {
  const opt = new NysAct({ backend: 'auto' });
  t.equal(opt.backend, cuda?.available ? 'cuda' : 'cpu', `auto chose ${opt.backend}`);
  t.equal(opt.options.backend, 'auto', 'options keep the request');
  opt.dispose();
});

t.test('the loader explains each way loading can fail', async (t) => {
  const probe = `
    const { nativeInfo } = require('./dist/cjs/index.js');
    console.log(JSON.stringify(nativeInfo().backends.find((b) => b.name === 'cuda')));
  `;
  const missing = child(probe, { NYSACT_CUDA_LIBRARY: join(tmpdir(), 'nysact-no-such-dir', 'nysact_cuda.so') });
  t.equal(missing.available, false);
  t.match(missing.reason as string, /this build has no CUDA backend: .*nysact-no-such-dir\/nysact_cuda\.so does not exist/);
  t.match(missing.reason as string, /cuBLAS\/cuSOLVER/, 'says what the build needs');

  const dir = mkdtempSync(join(tmpdir(), 'nysact-cuda-'));
  const garbage = join(dir, 'nysact_cuda.so');
  writeFileSync(garbage, 'not a shared library\n');
  const broken = child(probe, { NYSACT_CUDA_LIBRARY: garbage });
  t.equal(broken.available, false);
  t.match(broken.reason as string, new RegExp(`could not load ${garbage.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `), 'carries the dlerror text');
});

// ---- with a GPU ------------------------------------------------------------------------------

const gpuSkip = cuda?.available ? false : `no CUDA backend here: ${cuda?.reason ?? 'not reported'}`;

t.test('CUDA draws the CPU Philox sketches bit for bit', { skip: gpuSkip }, async (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root) as {
    Layer: new (spec: object, backend: string) => {
      sketchCovarianceDense(x: Float32Array, rows: number, s: null): boolean;
      commitStatistics(b: number): void;
      exportState(): { sketch: Float32Array; indices: Int32Array };
      dispose(): void;
    };
    philoxGaussianSketch(hi: number, lo: number, key: number, step: number, p: number, r: number): Float32Array;
    philoxSubcolumns(hi: number, lo: number, key: number, step: number, p: number, r: number): Int32Array;
  };
  for (const [sketch, p, r] of [[0, 4, 2], [0, 301, 17], [1, 10, 4], [1, 500, 33]] as const) {
    const spec = {
      kind: 0, fanIn: p, fanOut: 3, bias: false, rank: r, sketch, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0,
      strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, seedHi: 0, seedLo: 1, layerKey: 7,
    };
    const layer = new native.Layer(spec, 'cuda');
    const x = randomArray(mulberry32(p), 5 * p);
    for (let step = 0; step < 3; step++) {
      t.ok(layer.sketchCovarianceDense(x, 5, null));
      layer.commitStatistics(0.9);
      const st = layer.exportState();
      if (sketch === 0) {
        t.same(st.sketch, native.philoxGaussianSketch(0, 1, 7, step, p, r), `gaussian p=${p} r=${r} step ${step}`);
      } else {
        t.same(st.indices, native.philoxSubcolumns(0, 1, 7, step, p, r), `subcolumns p=${p} r=${r} step ${step}`);
      }
    }
    layer.dispose();
  }
});

t.test('CPU and CUDA optimizers agree, and state moves between them', { skip: gpuSkip }, async (t) => {
  const make = (backend: 'cpu' | 'cuda') => {
    const opt = new NysAct({ backend, seed: 5, tcov: 2, tinv: 3, rank: 6, lr: 0.05, nesterov: true });
    opt.addConv2d('conv', { kernelSize: 3, inChannels: 3, outChannels: 8, padding: 'same', strides: 2 });
    opt.addDense('fc', { inFeatures: 40, outFeatures: 5, layout: 'outIn' });
    opt.addParam('gamma', { size: 8 });
    return opt;
  };
  const sizes = { conv: 3 * 3 * 3 * 8, convB: 8, fc: 40 * 5, fcB: 5, gamma: 8 };
  const init = (seed: number) => {
    const r = mulberry32(seed);
    return Object.fromEntries(Object.entries(sizes).map(([k, n]) => [k, randomArray(r, n, 0.3)])) as Record<string, Float32Array>;
  };
  const run = (opt: NysAct, params: Record<string, Float32Array>, from: number, to: number) => {
    for (let i = from; i < to; i++) {
      const r = mulberry32(1000 + i);
      if (opt.needsActivations) {
        opt.observe('conv', randomArray(r, 4 * 10 * 10 * 3), [4, 10, 10, 3]);
        opt.observe('fc', randomArray(r, 16 * 40), [16, 40]);
      }
      const g = (n: number) => randomArray(r, n, 0.05);
      opt.step({
        conv: { weight: params.conv, grad: g(sizes.conv), bias: params.convB, biasGrad: g(sizes.convB) },
        fc: { weight: params.fc, grad: g(sizes.fc), bias: params.fcB, biasGrad: g(sizes.fcB) },
        gamma: { weight: params.gamma, grad: g(sizes.gamma) },
      });
    }
  };
  const worst = (a: Record<string, Float32Array>, b: Record<string, Float32Array>) => {
    let w = 0;
    for (const k of Object.keys(a)) {
      let scale = 0, d = 0;
      for (let i = 0; i < a[k].length; i++) {
        scale = Math.max(scale, Math.abs(a[k][i]));
        d = Math.max(d, Math.abs(a[k][i] - b[k][i]));
      }
      w = Math.max(w, d / scale);
    }
    return w;
  };
  const cpu = make('cpu'), gpu = make('cuda');
  t.equal(gpu.backend, 'cuda');
  const pc = init(1), pg = init(1);
  run(cpu, pc, 0, 10);
  run(gpu, pg, 0, 10);
  t.ok(worst(pc, pg) <= 1e-4, `10 steps: parameters within 1e-4 relative (${worst(pc, pg).toExponential(2)})`);
  // CPU state into a fresh CUDA optimizer: both continue alike.
  const resumed = make('cuda');
  resumed.setState(cpu.getState());
  const pr = Object.fromEntries(Object.entries(pc).map(([k, v]) => [k, v.slice()]));
  run(cpu, pc, 10, 16);
  run(resumed, pr, 10, 16);
  t.ok(worst(pc, pr) <= 1e-4, `resumed on CUDA from CPU state: within 1e-4 (${worst(pc, pr).toExponential(2)})`);
  for (const o of [cpu, gpu, resumed]) o.dispose();
});

// ---- asynchronous steps, device tensors and page-locked host buffers on CUDA ----------------------

/** A CUDA (or CPU) optimizer with a conv, a dense layer with bias and a plain parameter. */
function memoryOptimizer(backend: 'cpu' | 'cuda'): NysAct {
  const opt = new NysAct({ backend, seed: 8, tcov: 2, tinv: 3, rank: 5, lr: 0.05 });
  opt.addConv2d('conv', { kernelSize: 3, inChannels: 2, outChannels: 4, padding: 'same' });
  opt.addDense('fc', { inFeatures: 20, outFeatures: 6 });
  opt.addParam('gamma', { size: 4 });
  return opt;
}
const MEMORY_SIZES: Record<string, [number, number]> = { conv: [72, 4], fc: [120, 6], gamma: [4, 0] };

function memoryParams(): Record<string, { weight: Float32Array; bias?: Float32Array }> {
  const r = mulberry32(77);
  return Object.fromEntries(
    Object.entries(MEMORY_SIZES).map(([k, [w, b]]) => [k, { weight: randomArray(r, w, 0.3), ...(b ? { bias: randomArray(r, b, 0.1) } : {}) }]),
  );
}

function memoryGrads(i: number): Record<string, { grad: Float32Array; biasGrad?: Float32Array }> {
  const r = mulberry32(4000 + i);
  return Object.fromEntries(
    Object.entries(MEMORY_SIZES).map(([k, [w, b]]) => [k, { grad: randomArray(r, w, 0.05), ...(b ? { biasGrad: randomArray(r, b, 0.05) } : {}) }]),
  );
}

function memoryObserve(opt: NysAct, i: number): void {
  if (!opt.needsActivations) return;
  const r = mulberry32(5000 + i);
  opt.observe('conv', randomArray(r, 2 * 6 * 6 * 2), [2, 6, 6, 2]);
  opt.observe('fc', randomArray(r, 12 * 20), [12, 20]);
}

function hostUpdate(p: ReturnType<typeof memoryParams>, g: ReturnType<typeof memoryGrads>): Record<string, LayerUpdate<StepArray>> {
  return Object.fromEntries(
    Object.keys(MEMORY_SIZES).map((k) => [k, { weight: p[k].weight, grad: g[k].grad, ...(p[k].bias ? { bias: p[k].bias, biasGrad: g[k].biasGrad } : {}) }]),
  );
}

t.test('CUDA: stepAsync gives the bits of step', { skip: gpuSkip }, async (t) => {
  const a = memoryOptimizer('cuda');
  const b = memoryOptimizer('cuda');
  const pa = memoryParams();
  const pb = memoryParams();
  for (let i = 0; i < 12; i++) {
    memoryObserve(a, i);
    memoryObserve(b, i);
    const g = memoryGrads(i);
    const ra = a.step(hostUpdate(pa, g));
    const promise = b.stepAsync(hostUpdate(pb, g));
    t.throws(() => b.getState(), { code: 'ERR_NYSACT_BUSY' }, `step ${i}: busy while in flight`);
    t.same(await promise, ra, `step ${i}: same result`);
  }
  t.equal(firstDifference(pa, pb), null, 'parameters bit-identical');
  t.equal(firstDifference(a.getState(), b.getState()), null, 'state bit-identical');
  a.dispose();
  b.dispose();
});

t.test('CUDA: device tensors (round trip, fill, device-resident steps)', { skip: gpuSkip }, async (t) => {
  const x = tensor(1000, { backend: 'cuda' });
  t.equal(x.backend, 'cuda');
  const values = randomArray(mulberry32(3), 1000);
  t.equal(firstDifference(x.upload(values).download(), values), null, 'round trip bit for bit');
  t.ok(x.fill(1.25).download().every((v) => v === 1.25), 'fill on the device');
  x.upload(new Float32Array([7, 8]), 998);
  t.same([...x.download().slice(996)], [1.25, 1.25, 7, 8], 'upload at an offset');
  x.dispose();
  t.throws(() => x.download(), { code: 'ERR_NYSACT_DISPOSED' });

  // Weights resident on the device across steps, gradients uploaded (or left on the device): the
  // same bits as the host-array path on CUDA, and within the parity bound of the CPU.
  const hostRun = memoryOptimizer('cuda');
  const deviceRun = memoryOptimizer('cuda');
  const cpuRun = memoryOptimizer('cpu');
  const ph = memoryParams();
  const pc = memoryParams();
  const init = memoryParams();
  const dw: Record<string, { weight: DeviceTensor; bias?: DeviceTensor; grad: DeviceTensor; biasGrad?: DeviceTensor }> = {};
  for (const [k, v] of Object.entries(init)) {
    dw[k] = { weight: deviceRun.tensor(v.weight.length).upload(v.weight), grad: deviceRun.tensor(v.weight.length) };
    if (v.bias) Object.assign(dw[k], { bias: deviceRun.tensor(v.bias.length).upload(v.bias), biasGrad: deviceRun.tensor(v.bias.length) });
  }
  for (let i = 0; i < 10; i++) {
    for (const o of [hostRun, deviceRun, cpuRun]) memoryObserve(o, i);
    const g = memoryGrads(i);
    for (const [k, v] of Object.entries(g)) {
      dw[k].grad.upload(v.grad);
      if (v.biasGrad) dw[k].biasGrad!.upload(v.biasGrad);
    }
    const rh = hostRun.step(hostUpdate(ph, g));
    const rd = i % 2 ? deviceRun.step(dw) : await deviceRun.stepAsync(dw);
    cpuRun.step(hostUpdate(pc, g));
    t.same(rd, rh, `step ${i}: same result`);
  }
  for (const k of Object.keys(MEMORY_SIZES)) {
    t.equal(firstDifference(dw[k].weight.download(), ph[k].weight), null, `${k}: device-resident weights bit-identical to the host-array path`);
    if (ph[k].bias) t.equal(firstDifference(dw[k].bias!.download(), ph[k].bias), null, `${k}: bias bit-identical`);
    let scale = 0;
    let diff = 0;
    for (let j = 0; j < pc[k].weight.length; j++) {
      scale = Math.max(scale, Math.abs(pc[k].weight[j]));
      diff = Math.max(diff, Math.abs(pc[k].weight[j] - ph[k].weight[j]));
    }
    t.ok(diff / scale <= 1e-4, `${k}: CUDA within 1e-4 relative of the CPU (${(diff / scale).toExponential(2)})`);
  }
  // Backends must match.
  const cpuTensor = tensor(120, { backend: 'cpu' });
  const g0 = memoryGrads(0);
  t.throws(
    () => hostRun.step({ ...hostUpdate(ph, g0), fc: { weight: ph.fc.weight, grad: cpuTensor, bias: ph.fc.bias, biasGrad: g0.fc.biasGrad } }),
    { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /backend \('cuda'\) for grads\.fc\.grad/ },
  );
  t.throws(
    () => cpuRun.step({ ...hostUpdate(pc, g0), fc: { weight: pc.fc.weight, grad: dw.fc.grad, bias: pc.fc.bias, biasGrad: g0.fc.biasGrad } }),
    { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /backend \('cpu'\) for grads\.fc\.grad/ },
  );
  cpuTensor.dispose();
  for (const v of Object.values(dw)) for (const d of Object.values(v)) (d as DeviceTensor).dispose();
  for (const o of [hostRun, deviceRun, cpuRun]) o.dispose();
});

t.test('CUDA: page-locked host buffers', { skip: gpuSkip }, async (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root) as { byteAlignment(x: Float32Array): number };
  const b = hostBuffer(1000, { backend: 'cuda' });
  t.equal(b.length, 1000);
  t.ok(b.every((v) => v === 0), 'zeroed');
  t.ok(native.byteAlignment(b) >= 64, `aligned (${native.byteAlignment(b)})`);
  const a = memoryOptimizer('cuda');
  const c = memoryOptimizer('cuda');
  const pa = memoryParams();
  const pinned: Record<string, LayerUpdate<StepArray>> = {};
  for (const [k, v] of Object.entries(memoryParams())) {
    const weight = c.hostBuffer(v.weight.length);
    weight.set(v.weight);
    pinned[k] = { weight, grad: c.hostBuffer(v.weight.length) };
    if (v.bias) {
      const bias = c.hostBuffer(v.bias.length);
      bias.set(v.bias);
      Object.assign(pinned[k], { bias, biasGrad: c.hostBuffer(v.bias.length) });
    }
  }
  for (let i = 0; i < 8; i++) {
    memoryObserve(a, i);
    memoryObserve(c, i);
    const g = memoryGrads(i);
    for (const [k, v] of Object.entries(g)) {
      (pinned[k].grad as Float32Array).set(v.grad);
      if (v.biasGrad) (pinned[k].biasGrad as Float32Array).set(v.biasGrad);
    }
    a.step(hostUpdate(pa, g));
    if (i % 2) c.step(pinned);
    else await c.stepAsync(pinned);
  }
  for (const k of Object.keys(MEMORY_SIZES)) {
    t.equal(firstDifference(pinned[k].weight, pa[k].weight), null, `${k}: pinned-buffer steps bit-identical to pageable arrays`);
  }
  a.dispose();
  c.dispose();
});

/** Dense layers with and without bias (64 features: the in-place tile path; 7: the copied one) and a conv layer. */
function observeOptimizer(backend: 'cpu' | 'cuda', nonFinite: 'throw' | 'skip' = 'throw'): NysAct {
  const opt = new NysAct({ backend, seed: 12, tcov: 2, tinv: 3, rank: 5, lr: 0.05, nonFinite });
  opt.addConv2d('conv', { kernelSize: 3, inChannels: 2, outChannels: 4, padding: 'same', strides: 2 });
  opt.addDense('fc', { inFeatures: 20, outFeatures: 6 });
  opt.addDense('wide', { inFeatures: 64, outFeatures: 3, bias: false });
  opt.addDense('odd', { inFeatures: 7, outFeatures: 2, bias: false, sketch: 'subcolumns' });
  return opt;
}
const OBSERVE_LAYERS: Record<string, { weight: number; bias: number; shape: number[] }> = {
  conv: { weight: 72, bias: 4, shape: [2, 7, 6, 2] },
  fc: { weight: 120, bias: 6, shape: [3, 4, 20] },
  wide: { weight: 192, bias: 0, shape: [33, 64] },
  odd: { weight: 14, bias: 0, shape: [9, 7] },
};
const observeCount = (k: string): number => OBSERVE_LAYERS[k].shape.reduce((a, b) => a * b, 1);
function observeValues(i: number): Record<string, Float32Array> {
  const r = mulberry32(6000 + i);
  return Object.fromEntries(Object.keys(OBSERVE_LAYERS).map((k) => [k, randomArray(r, observeCount(k))]));
}
function observeParams(): Record<string, { weight: Float32Array; bias?: Float32Array }> {
  const r = mulberry32(61);
  return Object.fromEntries(
    Object.entries(OBSERVE_LAYERS).map(([k, l]) => [k, { weight: randomArray(r, l.weight, 0.3), ...(l.bias ? { bias: randomArray(r, l.bias, 0.1) } : {}) }]),
  );
}
function observeGrads(p: ReturnType<typeof observeParams>, i: number): Record<string, LayerUpdate<StepArray>> {
  const r = mulberry32(6500 + i);
  return Object.fromEntries(
    Object.entries(OBSERVE_LAYERS).map(([k, l]) => [
      k,
      { weight: p[k].weight, grad: randomArray(r, l.weight, 0.05), ...(p[k].bias ? { bias: p[k].bias, biasGrad: randomArray(r, l.bias, 0.05) } : {}) },
    ]),
  );
}

t.test('CUDA: observe from device tensors and page-locked buffers gives the bits of host arrays', { skip: gpuSkip }, async (t) => {
  const hostRun = observeOptimizer('cuda');
  const deviceRun = observeOptimizer('cuda');
  const pinnedRun = observeOptimizer('cuda');
  const cpuRun = observeOptimizer('cpu');
  const ph = observeParams();
  const pd = observeParams();
  const pp = observeParams();
  const pc = observeParams();
  const xd: Record<string, DeviceTensor> = {};
  const xp: Record<string, Float32Array> = {};
  for (const k of Object.keys(OBSERVE_LAYERS)) {
    xd[k] = deviceRun.tensor(observeCount(k));
    xp[k] = pinnedRun.hostBuffer(observeCount(k));
  }
  for (let i = 0; i < 10; i++) {
    if (hostRun.needsActivations) {
      const x = observeValues(i);
      for (const k of Object.keys(OBSERVE_LAYERS)) {
        const shape = OBSERVE_LAYERS[k].shape;
        hostRun.observe(k, x[k], shape);
        cpuRun.observe(k, x[k], shape);
        deviceRun.observe(k, xd[k].upload(x[k]), shape);
        xp[k].set(x[k]);
        pinnedRun.observe(k, xp[k], shape);
        const c = hostRun.pendingCovariance(k);
        t.equal(firstDifference(deviceRun.pendingCovariance(k), c), null, `step ${i} ${k}: device activations, pending C bit-identical`);
        t.equal(firstDifference(pinnedRun.pendingCovariance(k), c), null, `step ${i} ${k}: pinned activations, pending C bit-identical`);
      }
    }
    const rh = hostRun.step(observeGrads(ph, i));
    const rd = i % 2 ? deviceRun.step(observeGrads(pd, i)) : await deviceRun.stepAsync(observeGrads(pd, i));
    const rp = i % 2 ? await pinnedRun.stepAsync(observeGrads(pp, i)) : pinnedRun.step(observeGrads(pp, i));
    cpuRun.step(observeGrads(pc, i));
    t.same(rd, rh, `step ${i}: device activations, same result`);
    t.same(rp, rh, `step ${i}: pinned activations, same result`);
  }
  t.equal(firstDifference(deviceRun.getState(), hostRun.getState()), null, 'device activations: state bit-identical');
  t.equal(firstDifference(pinnedRun.getState(), hostRun.getState()), null, 'pinned activations: state bit-identical');
  for (const k of Object.keys(OBSERVE_LAYERS)) {
    t.equal(firstDifference(pd[k], ph[k]), null, `${k}: parameters bit-identical (device activations)`);
    let scale = 0;
    let diff = 0;
    for (let j = 0; j < pc[k].weight.length; j++) {
      scale = Math.max(scale, Math.abs(pc[k].weight[j]));
      diff = Math.max(diff, Math.abs(pc[k].weight[j] - pd[k].weight[j]));
    }
    t.ok(diff / scale <= 1e-4, `${k}: within 1e-4 relative of the CPU (${(diff / scale).toExponential(2)})`);
  }
  for (const v of Object.values(xd)) v.dispose();
  for (const o of [hostRun, deviceRun, pinnedRun, cpuRun]) o.dispose();
});

t.test('CUDA: bad device tensors for activations, and NaN on the device', { skip: gpuSkip }, async (t) => {
  const opt = observeOptimizer('cuda');
  const cpuOpt = observeOptimizer('cpu');
  const x = observeValues(0);
  for (const k of Object.keys(OBSERVE_LAYERS)) opt.observe(k, x[k], OBSERVE_LAYERS[k].shape);
  const before = opt.pendingCovariance('fc');
  const cpuTensor = tensor(observeCount('fc'), { backend: 'cpu' }).upload(x.fc);
  const cudaTensor = tensor(observeCount('fc'), { backend: 'cuda' }).upload(x.fc);
  t.throws(() => opt.observe('fc', cpuTensor, OBSERVE_LAYERS.fc.shape), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /backend \('cuda'\) for activations/ });
  t.throws(() => cpuOpt.observe('fc', cudaTensor, OBSERVE_LAYERS.fc.shape), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /backend \('cpu'\) for activations/ });
  const short = tensor(observeCount('fc') - 1, { backend: 'cuda' });
  t.throws(() => opt.observe('fc', short, OBSERVE_LAYERS.fc.shape), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /for activations/ });
  const bad = x.fc.slice();
  bad[5] = NaN;
  t.throws(() => opt.observe('fc', cudaTensor.upload(bad), OBSERVE_LAYERS.fc.shape), { name: 'NysActError', code: 'ERR_NYSACT_NON_FINITE' }, 'NaN found on the device');
  t.equal(firstDifference(opt.pendingCovariance('fc'), before), null, 'pending statistics untouched');
  // The raw binding refuses a tensor of another backend too.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const native = require('node-gyp-build')(root) as {
    Layer: new (spec: object, backend: string) => { sketchCovarianceDense(x: unknown, rows: number, s: null): boolean; dispose(): void };
    Tensor: new (n: number, backend: string) => { fill(v: number): void; dispose(): void };
  };
  const spec = {
    kind: 0, fanIn: 4, fanOut: 3, bias: false, rank: 2, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0,
    strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, seedHi: 0, seedLo: 0, layerKey: 0,
  };
  const layer = new native.Layer(spec, 'cuda');
  const hostTensor = new native.Tensor(8, 'cpu');
  hostTensor.fill(1);
  t.throws(() => layer.sketchCovarianceDense(hostTensor, 2, null), { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /another backend/ });
  const deviceTensor = new native.Tensor(8, 'cuda');
  deviceTensor.fill(1);
  t.equal(layer.sketchCovarianceDense(deviceTensor, 2, null), true, 'a device tensor is read');
  for (const d of [hostTensor, deviceTensor, layer]) d.dispose();
  for (const d of [cpuTensor, cudaTensor, short]) d.dispose();
  opt.dispose();
  cpuOpt.dispose();
});

t.test('CUDA: a tfjs model.fit with nysact matches the CPU backend', { skip: gpuSkip }, async (t) => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const tf = require('@tensorflow/tfjs') as typeof import('@tensorflow/tfjs');
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { nysact } = require('../dist/cjs/tfjs.js') as typeof import('../dist/cjs/tfjs.js');
  await tf.setBackend('cpu');
  const fit = async (backend: 'cpu' | 'cuda') => {
    const m = tf.sequential();
    m.add(tf.layers.conv2d({ inputShape: [8, 8, 2], filters: 4, kernelSize: 3, padding: 'same', activation: 'relu',
                             kernelInitializer: tf.initializers.glorotUniform({ seed: 3 }) }));
    m.add(tf.layers.flatten());
    m.add(tf.layers.dense({ units: 5, kernelInitializer: tf.initializers.glorotUniform({ seed: 4 }) }));
    const opt = nysact(m, { backend, lr: 0.05, tcov: 1, tinv: 2, rank: 6, damping: 0.3 });
    m.compile({ optimizer: opt, loss: 'meanSquaredError' });
    const x = tf.randomUniform([32, 8, 8, 2], -1, 1, 'float32', 1);
    const y = tf.randomUniform([32, 5], -1, 1, 'float32', 2);
    const h = await m.fit(x, y, { epochs: 4, batchSize: 8, shuffle: false, verbose: 0 });
    const weights = m.getWeights().map((w) => w.dataSync().slice());
    const chosen = opt.backend;
    tf.dispose([x, y]);
    opt.dispose();
    m.dispose();
    return { chosen, loss: h.history.loss as number[], weights };
  };
  const a = await fit('cpu');
  const b = await fit('cuda');
  t.equal(b.chosen, 'cuda', 'the optimizer ran on CUDA');
  let worst = 0;
  let scale = 0;
  a.weights.forEach((w, i) => w.forEach((v, j) => {
    worst = Math.max(worst, Math.abs(v - b.weights[i][j]));
    scale = Math.max(scale, Math.abs(v));
  }));
  t.ok(worst <= 1e-4 * scale, `weights after 16 steps within 1e-4 relative (worst ${(worst / scale).toExponential(2)})`);
  t.ok(b.loss[b.loss.length - 1] < b.loss[0], `the loss fell on CUDA (${b.loss[0].toFixed(4)} -> ${b.loss[b.loss.length - 1].toFixed(4)})`);
});

// Fault injection (NYSACT_CUDA_EMU_FAULTS, cuda/emu/emu.h) exists only in the CUDA host emulation.
const emulated = Boolean(cuda?.available && /host emulation/.test(cuda.device));
const emulationSkip = gpuSkip || (emulated ? false : 'needs the CUDA host emulation (device memory limits are injected)');

t.test('CUDA: a step or setState short of device memory fails before it changes anything', { skip: emulationSkip }, async (t) => {
  // In a fresh process: the context's scratch regions (shared by every layer of a process, and
  // never shrinking) must not have grown yet.  test/cuda-memory-child.js says what it runs.
  const r = child(`require('./test/cuda-memory-child.js')`) as {
    failures: { limit: number; code: string; message: string; stateUnchanged: boolean; weightsUnchanged: boolean }[];
    succeededAt: number;
    secondStep: string;
    sameAsReference: Record<string, boolean>;
    setState: { code: string | null; message?: string; unchanged?: boolean; thenRestored: boolean };
  };
  t.ok(r.failures.length >= 3, `several limits were too small for the first step (${r.failures.map((f) => f.limit).join(', ')})`);
  for (const f of r.failures) {
    t.match(f, { code: 'ERR_NYSACT_NATIVE', message: /memory/ }, `malloc>${f.limit}: ERR_NYSACT_NATIVE naming memory (${f.message})`);
    t.ok(f.stateUnchanged, `malloc>${f.limit}: the optimizer state is unchanged (getState, bit for bit)`);
    t.ok(f.weightsUnchanged, `malloc>${f.limit}: the weights are unchanged`);
  }
  t.ok(r.succeededAt > 0, `a large enough limit let the step through (${r.succeededAt} bytes)`);
  t.equal(r.secondStep, 'ok', 'the second step allocates no device memory (it passes under a 1-byte limit)');
  t.same(r.sameAsReference, { conv: true, fc: true, small: true, gamma: true },
    'after the failed tries and two steps, every weight has the bits of an optimizer never short of memory');
  t.match(r.setState, { code: 'ERR_NYSACT_NATIVE', message: /memory/ }, `setState short of device memory: ERR_NYSACT_NATIVE (${r.setState.message})`);
  t.equal(r.setState.unchanged, true, 'setState short of device memory: the optimizer unchanged (the layer imported before it rolled back)');
  t.equal(r.setState.thenRestored, true, 'with memory back, setState restores the state bit for bit');
});
