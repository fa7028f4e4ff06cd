'use strict';
// Seeded fuzz of the raw native binding (lib/native.ts), run in a child process by
// test/fuzz.test.ts so that a native crash shows up as a signal / exit code instead of killing tap.
//
// Every call must either return or throw an Error carrying a string `code` (or rethrow the
// sentinel error thrown by a hostile getter we planted). Prints one JSON line with the counts.
//
// usage: node test/native-fuzz.js [calls=3000] [seed=20240601]
// NYSACT_FUZZ_BACKEND=cuda makes the well-formed layers, tensors and buffers CUDA ones (default cpu).

const path = require('node:path');

const root = path.resolve(__dirname, '..');
const native = require('node-gyp-build')(root);

const BACKEND = process.env.NYSACT_FUZZ_BACKEND || 'cpu';
const totalCalls = Number(process.argv[2] ?? 3000);
let seed = Number(process.argv[3] ?? 20240601) >>> 0;

// mulberry32
function random() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (n) => Math.floor(random() * n);
const pick = (arr) => arr[int(arr.length)];
const chance = (p) => random() < p;

const SENTINEL = new Error('hostile getter');

function detachedFloat32() {
  const buffer = new ArrayBuffer(64);
  const view = new Float32Array(buffer);
  structuredClone(buffer, { transfer: [buffer] });
  return view;
}

function randomFloats(n, bad = false) {
  const a = new Float32Array(Math.max(0, n));
  for (let i = 0; i < n; i++) a[i] = random() * 2 - 1;
  if (bad && n > 0) a[int(n)] = pick([NaN, Infinity, -Infinity]);
  return a;
}

// Numbers outside every native range, or not integers (never "valid but huge": those would
// allocate gigabytes legitimately).
const BAD_NUMBERS = [-1, -(2 ** 31), 0.5, 1.5, NaN, Infinity, -Infinity, 2 ** 40 + 1, 2 ** 53, 2 ** 53 + 2, 1e300, Number.MAX_VALUE, -1e-300];
const SMALL_NUMBERS = [0, -0, 1, 2, 3];

function badValue() {
  switch (int(24)) {
    case 0: return undefined;
    case 1: return null;
    case 2: return pick(BAD_NUMBERS);
    case 3: return pick(SMALL_NUMBERS);
    case 4: return pick(['', '3', 'abc', 'cpu', 'cuda']);
    case 5: return pick([true, false]);
    case 6: return {};
    case 7: return [];
    case 8: return [0.5, 1, 2];
    case 9: return new Float32Array(0);
    case 10: return detachedFloat32();
    case 11: return new Float64Array(int(40));
    case 12: return new Int32Array(int(40)).map(() => int(100) - 50);
    case 13: return new Uint8Array(int(40));
    case 14: return BigInt(int(10));
    case 15: return Symbol('fuzz');
    case 16: return () => 1;
    case 17: return new ArrayBuffer(16);
    case 18: return new DataView(new ArrayBuffer(16));
    case 19: return randomFloats(int(200), chance(0.5));
    case 20: return new Float32Array(new ArrayBuffer(64), 4, 3); // offset view
    case 21: return new Float32Array(new SharedArrayBuffer(64));
    case 22: return { length: 10, 0: 1 };
    case 23: {
      // hostile object: every property read throws the sentinel
      return new Proxy({}, { get() { throw SENTINEL; }, has() { throw SENTINEL; } });
    }
    default: return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Valid baselines

const SEED = { seedHi: 0, seedLo: 7 };
const SPECS = {
  dense: { kind: 0, fanIn: 4, fanOut: 3, bias: true, rank: 2, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0, strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, ...SEED, layerKey: 11 },
  denseSub: { kind: 0, fanIn: 6, fanOut: 2, bias: false, rank: 3, sketch: 1, layout: 1, kernelH: 1, kernelW: 1, inChannels: 0, strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, ...SEED, layerKey: 12 },
  denseFull: { kind: 0, fanIn: 2, fanOut: 2, bias: true, rank: 8, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0, strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, ...SEED, layerKey: 13 },
  conv: { kind: 1, fanIn: 18, fanOut: 2, bias: false, rank: 3, sketch: 0, layout: 0, kernelH: 3, kernelW: 3, inChannels: 2, strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 0, ...SEED, layerKey: 14 },
  convSame: { kind: 1, fanIn: 8, fanOut: 3, bias: true, rank: 2, sketch: 1, layout: 0, kernelH: 2, kernelW: 2, inChannels: 2, strideH: 2, strideW: 1, dilationH: 1, dilationW: 2, padding: 1, size: 0, ...SEED, layerKey: 15 },
  plain: { kind: 2, fanIn: 0, fanOut: 0, bias: false, rank: 1, sketch: 0, layout: 0, kernelH: 1, kernelW: 1, inChannels: 0, strideH: 1, strideW: 1, dilationH: 1, dilationW: 1, padding: 0, size: 5, ...SEED, layerKey: 16 },
};
const SPEC_NAMES = Object.keys(SPECS);

function geometry(spec) {
  const p = spec.fanIn + (spec.bias ? 1 : 0);
  const r = Math.min(spec.rank, p);
  return { p, r, full: spec.kind !== 2 && r === p, weight: spec.kind === 2 ? spec.size : spec.fanIn * spec.fanOut, bias: spec.bias ? spec.fanOut : 0 };
}

// A valid input for the statistics call of each kind: activations in a Float32Array or (sometimes)
// in a CPU tensor of the right length.
function validActivations(spec) {
  const x = (n) => {
    const values = randomFloats(n);
    if (chance(0.7)) return values;
    const t = new native.Tensor(n, BACKEND);
    t.upload(values, 0);
    tensors.push(t);
    return t;
  };
  if (spec.kind === 0) {
    const rows = 1 + int(6);
    return { args: [x(rows * spec.fanIn), rows], method: 'sketchCovarianceDense' };
  }
  const b = 1 + int(2), h = 3 + int(4), w = 3 + int(4);
  return { args: [x(b * h * w * spec.inChannels), b, h, w], method: 'sketchCovarianceConv' };
}

function validSketch(spec) {
  const g = geometry(spec);
  if (g.full || chance(0.5)) return null;
  if (spec.sketch === 0) return randomFloats(g.p * g.r);
  const idx = new Int32Array(g.r);
  const cols = [...Array(g.p).keys()].sort(() => random() - 0.5);
  for (let j = 0; j < g.r; j++) idx[j] = cols[j];
  return idx;
}

function badSketch(spec) {
  const g = geometry(spec);
  switch (int(6)) {
    case 0: return randomFloats(g.p * g.r + pick([-1, 1]));
    case 1: return randomFloats(g.p * g.r, true);
    case 2: { const a = new Int32Array(g.r); a.fill(int(g.p)); return a; } // duplicates
    case 3: { const a = new Int32Array(g.r); for (let j = 0; j < g.r; j++) a[j] = j; a[int(g.r)] = pick([-1, g.p, 2 ** 31 - 1, -(2 ** 31)]); return a; }
    case 4: return new Int32Array(g.r + 1);
    default: return badValue();
  }
}

function stepArgs(spec) {
  const g = geometry(spec);
  const scalars = new Float64Array([0.01, 0.9, 1e-4, int(2), int(2)]);
  return [randomFloats(g.weight), g.bias ? randomFloats(g.bias) : null, randomFloats(g.weight), g.bias ? randomFloats(g.bias) : null, scalars];
}

// ---------------------------------------------------------------------------------------------
// Harness

const stats = { calls: 0, returned: 0, threw: 0, sentinel: 0, engine: {}, codes: {}, violationCount: 0, violations: {} };

// Thrown by V8 itself before any native code runs (no addon can attach a code to these).
const ENGINE_ERRORS = [/^Class constructors? .*cannot be invoked without 'new'/, /^Illegal invocation$/];

function attempt(label, fn) {
  stats.calls++;
  try {
    fn();
    stats.returned++;
  } catch (error) {
    stats.threw++;
    if (error === SENTINEL) {
      stats.sentinel++;
      return;
    }
    const ok = error instanceof Error && typeof error.code === 'string' && error.code.length > 0;
    if (ok) {
      stats.codes[error.code] = (stats.codes[error.code] ?? 0) + 1;
      return;
    }
    if (error instanceof TypeError && error.code === undefined && ENGINE_ERRORS.some((re) => re.test(error.message))) {
      stats.engine[error.message] = (stats.engine[error.message] ?? 0) + 1;
      return;
    }
    stats.violationCount++;
    const what = error instanceof Error ? `${error.name}: ${error.message} (code ${String(error.code)})` : `non-Error thrown: ${String(error)}`;
    const key = `${label} -> ${what}`;
    if (key in stats.violations || Object.keys(stats.violations).length < 30) stats.violations[key] = (stats.violations[key] ?? 0) + 1;
  }
}

function mutateArgs(args, count = 1 + int(2)) {
  const out = args.slice();
  for (let k = 0; k < count; k++) out[int(Math.max(out.length, 1))] = badValue();
  if (chance(0.15)) out.length = int(out.length + 1); // missing arguments
  return out;
}

function mutateSpec(spec) {
  if (chance(0.1)) return badValue();
  const out = { ...spec };
  const keys = Object.keys(out);
  for (let k = 0, n = 1 + int(3); k < n; k++) {
    const key = pick(keys);
    if (chance(0.15)) delete out[key];
    else out[key] = badValue();
  }
  return out;
}

const live = []; // { spec, layer }
function freshLayer(name = pick(SPEC_NAMES)) {
  const spec = SPECS[name];
  const layer = new native.Layer(spec, BACKEND);
  const entry = { spec, layer };
  live.push(entry);
  return entry;
}
for (const name of SPEC_NAMES) freshLayer(name);

function anyLayer() {
  let entry = pick(live);
  if (entry.layer.isDisposed()) entry = freshLayer();
  return entry;
}

// Valid operations, so that the bad ones hit layers in every state (pending, factors, momentum).
function validOperation(entry) {
  const { spec, layer } = entry;
  if (spec.kind === 2) {
    layer.preconditionedMomentumStep(...stepArgs(spec));
    return;
  }
  switch (int(4)) {
    case 0: {
      const { method, args } = validActivations(spec);
      layer[method](...args, validSketch(spec));
      break;
    }
    case 1:
      if (layer.hasPendingStatistics()) layer.commitStatistics(0.95);
      break;
    case 2:
      layer.nystromFactors(1.0, int(2));
      break;
    default:
      layer.preconditionedMomentumStep(...stepArgs(spec));
  }
}

const METHODS = [
  'sketchCovarianceDense', 'sketchCovarianceConv', 'hasPendingStatistics', 'discardPendingStatistics',
  'readPendingCovariance', 'writePendingCovariance', 'commitStatistics', 'nystromFactors',
  'preconditionedMomentumStep', 'exportState', 'importState', 'stateBytes', 'dispose',
];

function validArgsFor(method, spec, layer) {
  const g = geometry(spec);
  switch (method) {
    case 'sketchCovarianceDense':
    case 'sketchCovarianceConv': {
      const a = spec.kind === 2 ? { args: [randomFloats(8), 2] } : validActivations(spec);
      return [...a.args, chance(0.5) ? badSketch(spec) : validSketch(spec)];
    }
    case 'writePendingCovariance': return [randomFloats(g.p * g.r, chance(0.3))];
    case 'commitStatistics': return [0.95];
    case 'nystromFactors': return [1.0, 0];
    case 'preconditionedMomentumStep': return stepArgs(spec);
    case 'importState': {
      try { return [layer.exportState()]; } catch { return [{}]; }
    }
    default: return [];
  }
}

function mutateState(state) {
  if (chance(0.1)) return badValue();
  const out = { ...state };
  const keys = Object.keys(out);
  for (let k = 0, n = 1 + int(2); k < n; k++) {
    const key = pick(keys);
    switch (int(5)) {
      case 0: delete out[key]; break;
      case 1: out[key] = badValue(); break;
      case 2: if (ArrayBuffer.isView(out[key])) out[key] = out[key].slice(0, Math.max(0, out[key].length - 1 - int(3))); else out[key] = badValue(); break;
      case 3: if (out[key] instanceof Int32Array && out[key].length) { out[key] = out[key].slice(); out[key][0] = pick([-1, 2 ** 31 - 1, 1000]); } else out[key] = badValue(); break;
      default: if (ArrayBuffer.isView(out[key])) { const a = new Float32Array(out[key].length + 1 + int(3)); out[key] = a; } else out[key] = pick(BAD_NUMBERS);
    }
  }
  return out;
}

const categories = [
  // constructor with a mutated spec and/or backend
  () => {
    const spec = mutateSpec(SPECS[pick(SPEC_NAMES)]);
    const backend = chance(0.7) ? BACKEND : badValue();
    attempt('new Layer', () => {
      const layer = chance(0.1) ? new native.Layer() : new native.Layer(spec, backend);
      layer.dispose(); // a mutated spec that happened to be valid: not used further
    });
    attempt('Layer() without new', () => native.Layer(SPECS.dense, BACKEND).dispose());
  },
  // a method with mutated or missing arguments
  () => {
    const entry = anyLayer();
    const method = pick(METHODS.filter((m) => m !== 'dispose'));
    const args = mutateArgs(validArgsFor(method, entry.spec, entry.layer));
    attempt(`layer.${method}(bad)`, () => entry.layer[method](...args));
  },
  // a method with valid arguments on the wrong kind of layer
  () => {
    const entry = anyLayer();
    const other = SPECS[pick(SPEC_NAMES)];
    const method = pick(METHODS.filter((m) => m !== 'dispose'));
    const args = validArgsFor(method, other, entry.layer);
    attempt(`layer.${method}(other kind)`, () => entry.layer[method](...args));
  },
  // disposed layers
  () => {
    const entry = freshLayer();
    if (chance(0.5)) attempt('valid op', () => validOperation(entry));
    entry.layer.dispose();
    attempt('dispose twice', () => entry.layer.dispose());
    const method = pick(METHODS);
    const args = validArgsFor(method, entry.spec, entry.layer);
    attempt(`disposed.${method}`, () => entry.layer[method](...args));
    attempt('disposed.isDisposed', () => entry.layer.isDisposed());
  },
  // wrong `this`
  () => {
    const entry = anyLayer();
    const method = pick(METHODS);
    const self = pick([{}, null, undefined, native, new Float32Array(4), Object.create(native.Layer.prototype), pick(live).layer]);
    const args = validArgsFor(method, entry.spec, entry.layer);
    attempt(`${method}.call(wrong this)`, () => native.Layer.prototype[method].call(self, ...args));
    attempt('isDisposed (wrong this)', () => native.Layer.prototype.isDisposed.call(self));
  },
  // importState with a mutated state
  () => {
    const entry = anyLayer();
    let state;
    try { state = entry.layer.exportState(); } catch { state = {}; }
    const bad = mutateState(state);
    attempt('importState(mutated)', () => entry.layer.importState(bad));
  },
  // free functions
  () => {
    attempt('allFinite', () => native.allFinite(...mutateArgs([randomFloats(int(50), chance(0.5))])));
  },
  () => {
    const fn = pick(['philoxGaussianSketch', 'philoxSubcolumns']);
    const args = mutateArgs([0, 7, 11, int(5), 6, 3], 1 + int(3));
    attempt(fn, () => native[fn](...args));
  },
  () => {
    const args = chance(0.5) ? [mutateSpec(SPECS.conv), 8, 8] : mutateArgs([SPECS[pick(SPEC_NAMES)], 8, 8]);
    attempt('convGeometry', () => native.convGeometry(...args));
  },
  () => {
    attempt('setThreads(bad)', () => native.setThreads(pick([0, -1, NaN, Infinity, 1.5, 2 ** 40 + 1, '2', null, undefined, {}, 1e300])));
  },
  // valid operations (state changes between the bad calls)
  () => {
    const entry = anyLayer();
    attempt('valid op', () => validOperation(entry));
  },
  // tensors: construction, methods with bad arguments, after dispose, wrong `this`
  () => {
    const args = chance(0.6) ? [1 + int(40), BACKEND] : mutateArgs([1 + int(40), BACKEND]);
    attempt('new Tensor', () => tensors.push(new native.Tensor(...args)));
    attempt('Tensor() without new', () => native.Tensor(4, BACKEND));
  },
  () => {
    const t = anyTensor();
    const method = pick(TENSOR_METHODS);
    const args = chance(0.3) ? validTensorArgs(method, t) : mutateArgs(validTensorArgs(method, t));
    attempt(`tensor.${method}`, () => t[method](...args));
    const self = pick([{}, null, undefined, native, new Float32Array(4), Object.create(native.Tensor.prototype), pick(live).layer]);
    attempt(`tensor.${method}.call(wrong this)`, () => native.Tensor.prototype[method].call(self, ...validTensorArgs(method, t)));
  },
  // step plans, synchronous and asynchronous, valid and mutated
  () => {
    const plan = chance(0.3) ? validPlan() : mutatePlan(validPlan());
    attempt('stepPlan', () => native.stepPlan(plan));
  },
  () => {
    const plan = chance(0.5) ? validPlan() : mutatePlan(validPlan());
    attempt('stepPlanAsync', () => {
      const promise = native.stepPlanAsync(plan);
      pending.push(promise.then(() => { asyncStats.resolved++; }, (error) => {
        asyncStats.rejected++;
        const ok = error instanceof Error && typeof error.code === 'string' && error.code.length > 0;
        if (!ok) asyncStats.rejectedWithoutCode++;
      }));
    });
  },
  () => {
    attempt('hostBuffer', () => native.hostBuffer(...(chance(0.3) ? [1 + int(40), BACKEND] : mutateArgs([1 + int(40), BACKEND]))));
    attempt('byteAlignment', () => native.byteAlignment(...mutateArgs([randomFloats(int(9))])));
    attempt('allFinite(tensor)', () => native.allFinite(chance(0.8) ? anyTensor() : Object.create(native.Tensor.prototype)));
  },
  // statistics from a tensor of any length (often wrong), possibly disposed, or a fake one
  () => {
    const entry = anyLayer();
    const a = entry.spec.kind === 2 ? { args: [randomFloats(8), 2], method: 'sketchCovarianceDense' } : validActivations(entry.spec);
    const x = chance(0.8) ? anyTensor() : Object.create(native.Tensor.prototype);
    attempt(`layer.${a.method}(tensor)`, () => entry.layer[a.method](x, ...a.args.slice(1), null));
  },
];

// ---- tensors and step plans ----

const TENSOR_METHODS = ['upload', 'download', 'fill', 'dispose', 'isDisposed', 'length', 'backend'];
const tensors = [];
const pending = [];
const asyncStats = { resolved: 0, rejected: 0, rejectedWithoutCode: 0 };

function anyTensor() {
  if (tensors.length === 0 || chance(0.2)) tensors.push(new native.Tensor(1 + int(40), BACKEND));
  return pick(tensors);
}

function validTensorArgs(method, t) {
  let n = 8;
  try { n = t.length(); } catch { /* disposed or wrong this */ }
  switch (method) {
    case 'upload': return [randomFloats(int(n + 1)), 0];
    case 'download': return [new Float32Array(n), 0];
    case 'fill': return [random()];
    default: return [];
  }
}

// An operand of the right length: a Float32Array or (sometimes) a CPU tensor.
function operand(n) {
  if (chance(0.7)) return randomFloats(n);
  const t = new native.Tensor(n, BACKEND);
  t.fill(0.01);
  tensors.push(t);
  return t;
}

function validPlan() {
  const count = 1 + int(3);
  const entries = [];
  const used = new Set();
  for (let i = 0; i < count; i++) {
    const entry = anyLayer();
    if (used.has(entry)) continue;
    used.add(entry);
    entries.push(entry);
  }
  const geometries = entries.map((e) => geometry(e.spec));
  return {
    layers: entries.map((e) => e.layer),
    weights: geometries.map((g) => operand(g.weight)),
    biases: geometries.map((g) => (g.bias ? operand(g.bias) : null)),
    grads: geometries.map((g) => operand(g.weight)),
    biasGrads: geometries.map((g) => (g.bias ? operand(g.bias) : null)),
    statistics: chance(0.2),
    inverse: chance(0.3),
    statDecay: 0.95,
    damping: 1,
    variant: int(2),
    scalars: new Float64Array([0.01, 0.9, 1e-4, int(2), int(2)]),
  };
}

function mutatePlan(plan) {
  if (chance(0.1)) return badValue();
  const out = { ...plan };
  const keys = Object.keys(out);
  for (let k = 0, n = 1 + int(2); k < n; k++) {
    const key = pick(keys);
    if (Array.isArray(out[key]) && out[key].length > 0 && chance(0.7)) {
      out[key] = out[key].slice();
      out[key][int(out[key].length)] = pick([
        badValue(), pick(tensors) ?? null, pick(live).layer, randomFloats(int(30)),
        // objects that merely inherit the native prototypes (no native object behind them)
        Object.create(native.Layer.prototype), Object.create(native.Tensor.prototype),
      ]);
    } else if (chance(0.2)) {
      delete out[key];
    } else {
      out[key] = badValue();
    }
  }
  return out;
}

const threadsBefore = native.threads();
const before = native.liveObjects();
(async () => {
  while (stats.calls < totalCalls) {
    pick(categories)();
    // Let asynchronous steps settle now and then, so later calls meet layers both busy and idle.
    if (chance(0.02)) await new Promise((resolve) => setImmediate(resolve));
  }
  await Promise.all(pending);
  for (const { layer } of live) {
    try { layer.dispose(); } catch { /* counted above if it mattered */ }
  }
  for (const t of tensors) {
    try { t.dispose(); } catch { /* wrong kinds were pushed only by valid constructors */ }
  }
  const after = native.liveObjects();
  stats.liveBefore = before;
  stats.liveAfter = after;
  stats.async = asyncStats;
  stats.threadsUnchanged = native.threads() === threadsBefore;
  process.stdout.write(`${JSON.stringify(stats)}\n`);
})();
