'use strict';
// Run by test/cuda.test.ts in a fresh process (a fresh CUDA context, whose scratch regions have
// never grown) on the CUDA host emulation: the first step of an optimizer tried under growing
// device-memory limits (NYSACT_CUDA_EMU_FAULTS=malloc>N, cuda/emu/emu.h) until one is enough, then
// a second step under a 1-byte limit, then a reference optimizer that was never short of memory;
// then setState short of memory.
// Prints one JSON line; the assertions are the test's.
const { NysAct } = require('../dist/cjs/index.js');
const { mulberry32 } = require('../dist/cjs/cli/train.js');  // the seeded RNG the tests share

const randomArray = (r, n, scale = 1) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);

// Layers of every kind a step plan handles: conv and dense (batched factors), a full-covariance
// layer (per-layer factors), a plain parameter; host arrays and a device tensor as operands.  The
// fc weight (48000 floats, staged from a host array) makes the step need more scratch memory than
// the statistics did, so that a range of limits fails inside the step.
const sizes = { conv: [216, 8], fc: [48000, 400], small: [12, 3], gamma: [8, 0] };
function make() {
  const o = new NysAct({ backend: 'cuda', seed: 9, tcov: 1, tinv: 1, rank: 6, lr: 0.05 });
  o.addConv2d('conv', { kernelSize: 3, inChannels: 3, outChannels: 8, padding: 'same' });
  o.addDense('fc', { inFeatures: 120, outFeatures: 400 });
  o.addDense('small', { inFeatures: 4, outFeatures: 3, rank: 8 });
  o.addParam('gamma', { size: 8 });
  return o;
}
function params() {
  const r = mulberry32(17);
  return Object.fromEntries(Object.entries(sizes).map(([k, [w, b]]) => [k, { weight: randomArray(r, w, 0.3), bias: b ? randomArray(r, b, 0.1) : undefined }]));
}
function observe(o, i) {
  const r = mulberry32(100 + i);
  o.observe('conv', randomArray(r, 2 * 6 * 6 * 3), [2, 6, 6, 3]);
  o.observe('fc', randomArray(r, 16 * 120), [16, 120]);
  o.observe('small', randomArray(r, 16 * 4), [16, 4]);
}
function grads(i) {
  const r = mulberry32(200 + i);
  return Object.fromEntries(Object.entries(sizes).map(([k, [w, b]]) => [k, { grad: randomArray(r, w, 0.05), biasGrad: b ? randomArray(r, b, 0.05) : undefined }]));
}
function update(p, g, fcGrad) {
  const u = {};
  for (const k of Object.keys(sizes)) {
    u[k] = { weight: p[k].weight, grad: k === 'fc' && fcGrad ? fcGrad : g[k].grad };
    if (p[k].bias) Object.assign(u[k], { bias: p[k].bias, biasGrad: g[k].biasGrad });
  }
  return u;
}
const bytesOf = (v) => Buffer.from(JSON.stringify(v, (_, x) => (ArrayBuffer.isView(x) ? Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString('base64') : x)));
const weightsOf = (p) => bytesOf(Object.values(p).map((v) => [v.weight, v.bias ?? null]));

const out = { failures: [], succeededAt: -1, secondStep: null, sameAsReference: {} };
const o = make();
const p = params();
const fcGrad = o.tensor(sizes.fc[0]);
fcGrad.upload(grads(0).fc.grad);
observe(o, 0);
const before = bytesOf(o.getState());
const weightsBefore = weightsOf(p);
for (const limit of [256, 1024, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 64 << 20]) {
  process.env.NYSACT_CUDA_EMU_FAULTS = `malloc>${limit}`;
  try {
    o.step(update(p, grads(0), fcGrad));
    out.succeededAt = limit;
  } catch (e) {
    out.failures.push({
      limit,
      code: e.code,
      message: String(e.message),
      stateUnchanged: bytesOf(o.getState()).equals(before),
      weightsUnchanged: weightsOf(p).equals(weightsBefore),
    });
  } finally {
    delete process.env.NYSACT_CUDA_EMU_FAULTS;
  }
  if (out.succeededAt >= 0) break;
}
observe(o, 1);
fcGrad.upload(grads(1).fc.grad);
process.env.NYSACT_CUDA_EMU_FAULTS = 'malloc>1';
try {
  o.step(update(p, grads(1), fcGrad));
  out.secondStep = 'ok';
} catch (e) {
  out.secondStep = `${e.code}: ${e.message}`;
} finally {
  delete process.env.NYSACT_CUDA_EMU_FAULTS;
}
const reference = make();
const pr = params();
for (let i = 0; i < 2; i++) {
  observe(reference, i);
  reference.step(update(pr, grads(i)));
}
for (const k of Object.keys(sizes)) {
  out.sameAsReference[k] = weightsOf({ [k]: p[k] }).equals(weightsOf({ [k]: pr[k] }));
}
// setState into a fresh optimizer (no factors yet, so the import must allocate them) under a limit
// that lets the first layer's arrays through but not the second's: the first layer is rolled back,
// the second left as it was.
const saved = o.getState();
const fresh = make();
const freshBefore = bytesOf(fresh.getState());
process.env.NYSACT_CUDA_EMU_FAULTS = 'malloc>1024';
try {
  fresh.setState(saved);
  out.setState = { code: null };
} catch (e) {
  out.setState = { code: e.code, message: String(e.message), unchanged: bytesOf(fresh.getState()).equals(freshBefore) };
} finally {
  delete process.env.NYSACT_CUDA_EMU_FAULTS;
}
fresh.setState(saved);
out.setState.thenRestored = bytesOf(fresh.getState()).equals(bytesOf(saved));
fresh.dispose();
fcGrad.dispose();
o.dispose();
reference.dispose();
console.log(JSON.stringify(out));
