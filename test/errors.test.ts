// Every invalid call, as a table: expected error class, `code`, and a message naming the
// argument. Calls on a live optimizer (observe / step / setState / ...) must also leave the
// optimizer state, the pending statistics and the caller's weights exactly as they were.
import t from 'tap';
import {
  NysAct,
  NysActError,
  type LayerUpdate,
  type NysActOptions,
  type NysActState,
} from '../dist/cjs/index.js';
import { firstDifference, mulberry32, randomArray } from './helpers';


const LAYERS = ['fc1', 'conv', 'sub', 'full', 'ln'] as const;

/**
 * A small optimizer with every layer kind: gaussian dense (p 5, r 3), a valid-padding conv
 * without bias (p 18, r 3), a subcolumns dense (p 7, r 3), a full-covariance dense (p 3 = r) and
 * a plain parameter. tcov 2, tinv 4.
 */
class Fixture {
  readonly opt: NysAct;
  readonly rand = mulberry32(1234);
  readonly params: Record<string, { weight: Float32Array; bias?: Float32Array }> = {
    fc1: { weight: randomArray(this.rand, 12), bias: randomArray(this.rand, 3) },
    conv: { weight: randomArray(this.rand, 36) },
    sub: { weight: randomArray(this.rand, 12), bias: randomArray(this.rand, 2) },
    full: { weight: randomArray(this.rand, 4), bias: randomArray(this.rand, 2) },
    ln: { weight: randomArray(this.rand, 5) },
  };

  constructor(options: NysActOptions = {}, warmSteps = 0) {
    this.opt = new NysAct({ tcov: 2, tinv: 4, rank: 3, seed: 7, lr: 0.05, ...options });
    this.opt.addDense('fc1', { inFeatures: 4, outFeatures: 3 });
    this.opt.addConv2d('conv', { kernelSize: 3, inChannels: 2, outChannels: 2, bias: false });
    this.opt.addDense('sub', { inFeatures: 6, outFeatures: 2, sketch: 'subcolumns' });
    this.opt.addDense('full', { inFeatures: 2, outFeatures: 2 });
    this.opt.addParam('ln', { size: 5 });
    for (let i = 0; i < warmSteps; i++) this.step();
  }

  activations(name: string): [Float32Array, number[]] {
    const shape = { fc1: [8, 4], conv: [2, 5, 5, 2], sub: [2, 4, 6], full: [4, 2] }[name] as number[];
    return [randomArray(this.rand, shape.reduce((a, b) => a * b, 1)), shape];
  }

  observe(name: string): void {
    const [x, shape] = this.activations(name);
    this.opt.observe(name, x, shape);
  }

  observeAll(except: string[] = []): void {
    for (const name of ['fc1', 'conv', 'sub', 'full']) if (!except.includes(name)) this.observe(name);
  }

  grads(): Record<string, LayerUpdate> {
    const out: Record<string, LayerUpdate> = {};
    for (const [name, p] of Object.entries(this.params)) {
      out[name] = { weight: p.weight, grad: randomArray(this.rand, p.weight.length, 0.1) };
      if (p.bias) {
        out[name].bias = p.bias;
        out[name].biasGrad = randomArray(this.rand, p.bias.length, 0.1);
      }
    }
    return out;
  }

  step(): void {
    if (this.opt.needsActivations) this.observeAll();
    this.opt.step(this.grads());
  }

  weightsSnapshot(): Record<string, Float32Array[]> {
    return Object.fromEntries(
      Object.entries(this.params).map(([k, p]) => [k, p.bias ? [p.weight.slice(), p.bias.slice()] : [p.weight.slice()]]),
    );
  }

  pendingSnapshot(): Record<string, Float32Array | null> {
    const out: Record<string, Float32Array | null> = {};
    for (const name of ['fc1', 'conv', 'sub', 'full']) {
      try {
        out[name] = this.opt.pendingCovariance(name);
      } catch {
        out[name] = null;
      }
    }
    return out;
  }
}

type ErrorClass = typeof TypeError | typeof RangeError | typeof NysActError;

interface Case {
  name: string;
  /** Where the call happens: 'fresh' (t 0, nothing observed), 'stats' (t 2, every layer observed) or 'plain' (t 3). */
  at?: 'fresh' | 'stats' | 'plain';
  call: (f: Fixture) => unknown;
  error: ErrorClass;
  code: string;
  message: RegExp;
  /** Check that the optimizer, the pending statistics and the weights are unchanged. */
  unchanged?: boolean;
  /** Layers left unobserved on the 'stats' step. */
  notObserved?: string[];
}

function fixtureAt(at: Case['at'], options: NysActOptions = {}, notObserved: string[] = []): Fixture {
  if (at === 'stats') {
    const f = new Fixture(options, 2);
    f.observeAll(notObserved); // pending statistics that a failed call must not lose
    return f;
  }
  if (at === 'plain') return new Fixture(options, 3);
  return new Fixture(options, 0);
}

function checkCase(t: tap.Test, c: Case, options: NysActOptions = {}): void {
  const f = fixtureAt(c.at, options, c.notObserved);
  const before = c.unchanged === false ? null : { state: f.opt.getState(), weights: f.weightsSnapshot(), pending: f.pendingSnapshot() };
  let thrown: unknown;
  try {
    c.call(f);
  } catch (error) {
    thrown = error;
  }
  t.ok(thrown instanceof c.error, `${c.name}: throws ${c.error.name} (got ${thrown instanceof Error ? thrown.name : String(thrown)})`);
  const e = thrown as Error & { code?: unknown };
  t.equal(e?.code, c.code, `${c.name}: code ${c.code}`);
  t.match(e?.message, c.message, `${c.name}: message ${JSON.stringify(e?.message)}`);
  if (before) {
    t.equal(firstDifference(f.opt.getState(), before.state), null, `${c.name}: optimizer state unchanged`);
    t.equal(firstDifference(f.weightsSnapshot(), before.weights), null, `${c.name}: weights unchanged`);
    t.equal(firstDifference(f.pendingSnapshot(), before.pending), null, `${c.name}: pending statistics unchanged`);
  }
  f.opt.dispose();
}

const INVALID = 'ERR_NYSACT_INVALID_ARGUMENT';
const STATE = 'ERR_NYSACT_STATE';

// ---------------------------------------------------------------------------------------------
// constructor options

const ctor = (options: unknown) => () => new NysAct(options as NysActOptions);

const constructorCases: [string, () => unknown, ErrorClass, RegExp][] = [
  ['options null', ctor(null), TypeError, /Expected an object for options but received null/],
  ['options array', ctor([]), TypeError, /for options but received Array\(0\)/],
  ['options number', ctor(3), TypeError, /for options but received 3/],
  ['unknown key', ctor({ lrr: 0.1 }), TypeError, /options\.lrr/],
  ['unknown key (case)', ctor({ LR: 0.1 }), TypeError, /options\.LR/],
];
const numericOptions: [key: string, bad: unknown[], good: RegExp][] = [
  ['lr', [-0.1, NaN, Infinity, -Infinity], /a finite number >= 0 for options\.lr/],
  ['momentum', [-0.1, 1, 1.5, NaN, Infinity], /a number in \[0, 1\) for options\.momentum/],
  ['statDecay', [-1e-9, 1, NaN, -Infinity], /a number in \[0, 1\) for options\.statDecay/],
  ['damping', [0, -1, NaN, Infinity], /a finite number > 0 for options\.damping/],
  ['weightDecay', [-1, NaN, Infinity], /a finite number >= 0 for options\.weightDecay/],
  ['tcov', [0, -1, 1.5, NaN, Infinity, 2 ** 31], /a positive integer for options\.tcov/],
  ['tinv', [0, 2.5, NaN, -Infinity], /a positive integer for options\.tinv/],
  ['rank', [0, -1, 0.5, NaN, Infinity, 65537], /for options\.rank/],
  ['seed', [-1, 1.5, NaN, Infinity, 2 ** 53, -1n, 2n ** 64n], /a non-negative safe integer or a bigint in \[0, 2\^64\) for options\.seed/],
];
for (const [key, bads, message] of numericOptions) {
  for (const bad of bads) {
    constructorCases.push([`${key} = ${String(bad)}`, ctor({ [key]: bad }), RangeError, message]);
  }
  for (const wrongType of ['1', null, true, {}]) {
    constructorCases.push([`${key} = ${JSON.stringify(wrongType)}`, ctor({ [key]: wrongType }), TypeError, new RegExp(`for options\\.${key} but received`)]);
  }
}
const enumOptions: [key: string, bad: string][] = [
  ['sketch', 'column'],
  ['backend', 'gpu'],
  ['nonFinite', 'ignore'],
  ['nystrom', 'exact'],
  ['weightDecayMode', 'adamw'],
];
for (const [key, bad] of enumOptions) {
  constructorCases.push([`${key} = '${bad}'`, ctor({ [key]: bad }), RangeError, new RegExp(`Expected one of .* for options\\.${key} but received "${bad}"`)]);
  constructorCases.push([`${key} = 1`, ctor({ [key]: 1 }), TypeError, new RegExp(`for options\\.${key} but received 1`)]);
}
constructorCases.push(['nesterov = 1', ctor({ nesterov: 1 }), TypeError, /Expected a boolean for options\.nesterov but received 1/]);
constructorCases.push(['nesterov = "yes"', ctor({ nesterov: 'yes' }), TypeError, /options\.nesterov/]);

t.test('constructor options', async (t) => {
  for (const [name, call, cls, message] of constructorCases) {
    checkCase(t, { name, call: () => call(), error: cls, code: INVALID, message, unchanged: false });
  }
  t.ok(constructorCases.length >= 60, `${constructorCases.length} constructor cases`);
});

t.test('cuda backend', async (t) => {
  const probe = new NysAct({ backend: 'auto' });
  t.ok(probe.backend === 'cpu' || probe.backend === 'cuda', `auto chose ${probe.backend}`);
  probe.dispose();
  let cudaAvailable = false;
  try {
    const o = new NysAct({ backend: 'cuda' });
    cudaAvailable = o.backend === 'cuda';
    o.dispose();
  } catch (error) {
    t.ok(error instanceof NysActError, 'NysActError');
    t.equal((error as NysActError).code, 'ERR_NYSACT_BACKEND_UNAVAILABLE');
    t.match((error as Error).message, /backend 'cuda'.*use 'cpu' or 'auto'/);
  }
  t.comment(`cuda available: ${cudaAvailable}`);
  const cpu = new NysAct({ backend: 'cpu' });
  t.equal(cpu.backend, 'cpu');
  cpu.dispose();
});

// ---------------------------------------------------------------------------------------------
// layers

const layerCases: Case[] = [
  { name: 'addDense name number', call: (f) => f.opt.addDense(3 as never, { inFeatures: 2, outFeatures: 2 }), error: TypeError, code: INVALID, message: /Expected a non-empty string for name but received 3/ },
  { name: 'addDense name empty', call: (f) => f.opt.addDense('', { inFeatures: 2, outFeatures: 2 }), error: RangeError, code: INVALID, message: /non-empty string for name but received ""/ },
  { name: 'addDense __proto__', call: (f) => f.opt.addDense('__proto__', { inFeatures: 2, outFeatures: 2 }), error: RangeError, code: INVALID, message: /other than '__proto__' for name/ },
  { name: 'addDense duplicate', call: (f) => f.opt.addDense('fc1', { inFeatures: 2, outFeatures: 2 }), error: RangeError, code: INVALID, message: /for name but received "fc1".*already exists/ },
  { name: 'addParam duplicate of dense', call: (f) => f.opt.addParam('conv', { size: 3 }), error: RangeError, code: INVALID, message: /"conv" already exists/ },
  { name: 'addDense no options', call: (f) => f.opt.addDense('x', undefined as never), error: TypeError, code: INVALID, message: /Expected an object for options but received undefined/ },
  { name: 'addDense inFeatures 0', call: (f) => f.opt.addDense('x', { inFeatures: 0, outFeatures: 2 }), error: RangeError, code: INVALID, message: /a positive integer for options\.inFeatures but received 0/ },
  { name: 'addDense inFeatures 1.5', call: (f) => f.opt.addDense('x', { inFeatures: 1.5, outFeatures: 2 }), error: RangeError, code: INVALID, message: /options\.inFeatures but received 1\.5/ },
  { name: 'addDense inFeatures string', call: (f) => f.opt.addDense('x', { inFeatures: '4' as never, outFeatures: 2 }), error: TypeError, code: INVALID, message: /options\.inFeatures but received "4"/ },
  { name: 'addDense outFeatures NaN', call: (f) => f.opt.addDense('x', { inFeatures: 2, outFeatures: NaN }), error: RangeError, code: INVALID, message: /options\.outFeatures but received NaN/ },
  { name: 'addDense outFeatures missing', call: (f) => f.opt.addDense('x', { inFeatures: 2 } as never), error: TypeError, code: INVALID, message: /options\.outFeatures but received undefined/ },
  { name: 'addDense too many weights', call: (f) => f.opt.addDense('x', { inFeatures: 2 ** 20, outFeatures: 2 ** 20 }), error: RangeError, code: INVALID, message: /at most 4294967295 weights/ },
  { name: 'addDense bias 1', call: (f) => f.opt.addDense('x', { inFeatures: 2, outFeatures: 2, bias: 1 as never }), error: TypeError, code: INVALID, message: /a boolean for options\.bias but received 1/ },
  { name: 'addDense layout', call: (f) => f.opt.addDense('x', { inFeatures: 2, outFeatures: 2, layout: 'rowMajor' as never }), error: RangeError, code: INVALID, message: /one of 'inOut', 'outIn' for options\.layout/ },
  { name: 'addDense rank 0', call: (f) => f.opt.addDense('x', { inFeatures: 2, outFeatures: 2, rank: 0 }), error: RangeError, code: INVALID, message: /for options\.rank but received 0/ },
  { name: 'addDense sketch', call: (f) => f.opt.addDense('x', { inFeatures: 2, outFeatures: 2, sketch: 'srht' as never }), error: RangeError, code: INVALID, message: /options\.sketch but received "srht"/ },
  { name: 'addDense unknown key', call: (f) => f.opt.addDense('x', { inFeatures: 2, outFeatures: 2, units: 3 } as never), error: TypeError, code: INVALID, message: /options\.units/ },
  { name: 'addConv2d kernelSize 0', call: (f) => f.opt.addConv2d('x', { kernelSize: 0, inChannels: 1, outChannels: 1 }), error: RangeError, code: INVALID, message: /options\.kernelSize but received 0/ },
  { name: 'addConv2d kernelSize triple', call: (f) => f.opt.addConv2d('x', { kernelSize: [3, 3, 3] as never, inChannels: 1, outChannels: 1 }), error: RangeError, code: INVALID, message: /options\.kernelSize but received Array\(3\)/ },
  { name: 'addConv2d kernelSize[1] -1', call: (f) => f.opt.addConv2d('x', { kernelSize: [3, -1], inChannels: 1, outChannels: 1 }), error: RangeError, code: INVALID, message: /options\.kernelSize\[1\] but received -1/ },
  { name: 'addConv2d kernelSize string', call: (f) => f.opt.addConv2d('x', { kernelSize: '3' as never, inChannels: 1, outChannels: 1 }), error: TypeError, code: INVALID, message: /options\.kernelSize but received "3"/ },
  { name: 'addConv2d inChannels 0', call: (f) => f.opt.addConv2d('x', { kernelSize: 3, inChannels: 0, outChannels: 1 }), error: RangeError, code: INVALID, message: /options\.inChannels but received 0/ },
  { name: 'addConv2d outChannels missing', call: (f) => f.opt.addConv2d('x', { kernelSize: 3, inChannels: 1 } as never), error: TypeError, code: INVALID, message: /options\.outChannels but received undefined/ },
  { name: 'addConv2d strides 0', call: (f) => f.opt.addConv2d('x', { kernelSize: 3, inChannels: 1, outChannels: 1, strides: 0 }), error: RangeError, code: INVALID, message: /options\.strides but received 0/ },
  { name: 'addConv2d strides[0] 1.5', call: (f) => f.opt.addConv2d('x', { kernelSize: 3, inChannels: 1, outChannels: 1, strides: [1.5, 1] }), error: RangeError, code: INVALID, message: /options\.strides\[0\]/ },
  { name: 'addConv2d padding', call: (f) => f.opt.addConv2d('x', { kernelSize: 3, inChannels: 1, outChannels: 1, padding: 'full' as never }), error: RangeError, code: INVALID, message: /one of 'valid', 'same' for options\.padding/ },
  { name: 'addConv2d dilation NaN', call: (f) => f.opt.addConv2d('x', { kernelSize: 3, inChannels: 1, outChannels: 1, dilation: NaN }), error: RangeError, code: INVALID, message: /options\.dilation but received NaN/ },
  { name: 'addConv2d kernel too large', call: (f) => f.opt.addConv2d('x', { kernelSize: 5000, inChannels: 1, outChannels: 1 }), error: RangeError, code: INVALID, message: /options\.kernelSize but received 5000/ },
  { name: 'addConv2d unknown key', call: (f) => f.opt.addConv2d('x', { kernelSize: 3, inChannels: 1, outChannels: 1, filters: 3 } as never), error: TypeError, code: INVALID, message: /options\.filters/ },
  { name: 'addParam size 0', call: (f) => f.opt.addParam('x', { size: 0 }), error: RangeError, code: INVALID, message: /a positive integer for options\.size but received 0/ },
  { name: 'addParam size Infinity', call: (f) => f.opt.addParam('x', { size: Infinity }), error: RangeError, code: INVALID, message: /options\.size but received Infinity/ },
  { name: 'addParam options array', call: (f) => f.opt.addParam('x', [5] as never), error: TypeError, code: INVALID, message: /an object for options but received Array\(1\)/ },
  { name: 'addParam after first step', at: 'plain', call: (f) => f.opt.addParam('late', { size: 3 }), error: NysActError, code: INVALID, message: /only be added before the first step.*"late"/ },
  { name: 'addDense after first step', at: 'plain', call: (f) => f.opt.addDense('late', { inFeatures: 2, outFeatures: 2 }), error: NysActError, code: INVALID, message: /before the first step/ },
];

t.test('addDense / addConv2d / addParam', async (t) => {
  for (const c of layerCases) checkCase(t, { unchanged: c.at !== undefined, ...c });
});

t.test('hyperparameter setters', async (t) => {
  const f = new Fixture();
  const cases: [string, () => void, ErrorClass, RegExp][] = [
    ['lr = -1', () => (f.opt.lr = -1), RangeError, /for lr but received -1/],
    ['lr = NaN', () => (f.opt.lr = NaN), RangeError, /for lr but received NaN/],
    ['lr = "0.1"', () => (f.opt.lr = '0.1' as never), TypeError, /for lr but received "0\.1"/],
    ['momentum = 1', () => (f.opt.momentum = 1), RangeError, /for momentum but received 1/],
    ['weightDecay = Infinity', () => (f.opt.weightDecay = Infinity), RangeError, /for weightDecay but received Infinity/],
    ['damping = 0', () => (f.opt.damping = 0), RangeError, /for damping but received 0/],
  ];
  for (const [name, call, cls, message] of cases) {
    checkCase(t, { name, call: () => call(), error: cls, code: INVALID, message, unchanged: false });
  }
  t.equal(f.opt.lr, 0.05, 'lr unchanged after failed sets');
  f.opt.lr = 0.01;
  t.equal(f.opt.lr, 0.01, 'valid set works');
  f.opt.dispose();
});

// ---------------------------------------------------------------------------------------------
// observe

const x84 = (f: Fixture) => f.activations('fc1')[0];

const observeCases: Case[] = [
  { name: 'observe on a non-statistics step', at: 'plain', call: (f) => f.opt.observe('fc1', x84(f), [8, 4]), error: NysActError, code: INVALID, message: /only taken on statistics steps.*needsActivations.*iteration 3/ },
  { name: 'observe unknown layer', at: 'stats', call: (f) => f.opt.observe('nope', x84(f), [8, 4]), error: RangeError, code: INVALID, message: /registered layer name .* for name but received "nope"/ },
  { name: 'observe name not a string', at: 'stats', call: (f) => f.opt.observe(1 as never, x84(f), [8, 4]), error: TypeError, code: INVALID, message: /for name but received 1/ },
  { name: 'observe plain parameter', at: 'stats', call: (f) => f.opt.observe('ln', x84(f), [8, 4]), error: RangeError, code: INVALID, message: /"ln" is a plain parameter/ },
  { name: 'observe Float64Array', at: 'stats', call: (f) => f.opt.observe('fc1', new Float64Array(32) as never, [8, 4]), error: TypeError, code: INVALID, message: /Expected a Float32Array or DeviceTensor for activations but received Float64Array\(32\)/ },
  { name: 'observe plain array', at: 'stats', call: (f) => f.opt.observe('fc1', Array.from(x84(f)) as never, [8, 4]), error: TypeError, code: INVALID, message: /a Float32Array or DeviceTensor for activations but received Array\(32\)/ },
  { name: 'observe null activations', at: 'stats', call: (f) => f.opt.observe('fc1', null as never, [8, 4]), error: TypeError, code: INVALID, message: /for activations but received null/ },
  { name: 'observe wrong length', at: 'stats', call: (f) => f.opt.observe('fc1', new Float32Array(31), [8, 4]), error: RangeError, code: INVALID, message: /length 32 .*for activations but received Float32Array\(31\)/ },
  { name: 'observe shape not an array', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), new Int32Array([8, 4]) as never), error: TypeError, code: INVALID, message: /for shape but received Int32Array\(2\)/ },
  { name: 'observe shape rank 1', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [32]), error: RangeError, code: INVALID, message: /\[rows, inFeatures\] or \[batch, tokens, inFeatures\] for shape/ },
  { name: 'observe dense shape rank 4', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [2, 2, 2, 4]), error: RangeError, code: INVALID, message: /for shape but received Array\(4\)/ },
  { name: 'observe dense wrong inFeatures', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [4, 8]), error: RangeError, code: INVALID, message: /inFeatures \(4\) of layer "fc1" for shape\[1\] but received 8/ },
  { name: 'observe shape zero', at: 'stats', call: (f) => f.opt.observe('fc1', new Float32Array(0), [0, 4]), error: RangeError, code: INVALID, message: /positive integer for shape\[0\] but received 0/ },
  { name: 'observe shape NaN', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [NaN, 4]), error: RangeError, code: INVALID, message: /shape\[0\] but received NaN/ },
  { name: 'observe shape string', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), ['8', 4] as never), error: TypeError, code: INVALID, message: /shape\[0\] but received "8"/ },
  { name: 'observe conv shape rank 3', at: 'stats', call: (f) => f.opt.observe('conv', new Float32Array(50), [5, 5, 2]), error: RangeError, code: INVALID, message: /\[batch, height, width, inChannels\] \(NHWC\) for shape/ },
  { name: 'observe conv wrong channels', at: 'stats', call: (f) => f.opt.observe('conv', new Float32Array(75), [1, 5, 5, 3]), error: RangeError, code: INVALID, message: /inChannels \(2\) of layer "conv" for shape\[3\] but received 3/ },
  { name: 'observe conv output empty', at: 'stats', call: (f) => f.opt.observe('conv', new Float32Array(16), [2, 2, 2, 2]), error: RangeError, code: INVALID, message: /output of at least 1x1 for shape.*gives 0x0/ },
  { name: 'observe non-finite (throw)', at: 'stats', call: (f) => { const x = x84(f); x[5] = NaN; f.opt.observe('fc1', x, [8, 4]); }, error: NysActError, code: 'ERR_NYSACT_NON_FINITE', message: /finite values for activations of layer "fc1"/ },
  { name: 'observe Infinity (throw)', at: 'stats', call: (f) => { const [x, s] = f.activations('conv'); x[0] = -Infinity; f.opt.observe('conv', x, s); }, error: NysActError, code: 'ERR_NYSACT_NON_FINITE', message: /activations of layer "conv"/ },
  { name: 'observe options not an object', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [8, 4], 3 as never), error: TypeError, code: INVALID, message: /an object for options but received 3/ },
  { name: 'observe unknown option', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [8, 4], { sketchMatrix: 1 } as never), error: TypeError, code: INVALID, message: /options\.sketchMatrix/ },
  { name: 'sketch wrong length', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [8, 4], { sketch: new Float32Array(14) }), error: RangeError, code: INVALID, message: /a Float32Array of length 15 for options\.sketch but received Float32Array\(14\)/ },
  { name: 'sketch wrong dtype (gaussian)', at: 'stats', call: (f) => f.opt.observe('fc1', x84(f), [8, 4], { sketch: new Int32Array(3) }), error: TypeError, code: INVALID, message: /a Float32Array for options\.sketch but received Int32Array\(3\)/ },
  { name: 'sketch non-finite', at: 'stats', call: (f) => { const s = new Float32Array(15); s[3] = NaN; f.opt.observe('fc1', x84(f), [8, 4], { sketch: s }); }, error: RangeError, code: INVALID, message: /finite values for options\.sketch/ },
  { name: 'subcolumns Float32Array', at: 'stats', call: (f) => { const [x, s] = f.activations('sub'); f.opt.observe('sub', x, s, { sketch: new Float32Array(21) }); }, error: TypeError, code: INVALID, message: /an Int32Array of 3 column indices .* for options\.sketch/ },
  { name: 'subcolumns wrong length', at: 'stats', call: (f) => { const [x, s] = f.activations('sub'); f.opt.observe('sub', x, s, { sketch: new Int32Array([0, 1]) }); }, error: RangeError, code: INVALID, message: /an Int32Array of length 3 for options\.sketch but received Int32Array\(2\)/ },
  { name: 'subcolumns duplicate', at: 'stats', call: (f) => { const [x, s] = f.activations('sub'); f.opt.observe('sub', x, s, { sketch: new Int32Array([4, 1, 4]) }); }, error: RangeError, code: INVALID, message: /distinct column indices for options\.sketch\[2\] but received 4/ },
  { name: 'subcolumns out of range', at: 'stats', call: (f) => { const [x, s] = f.activations('sub'); f.opt.observe('sub', x, s, { sketch: new Int32Array([0, 7, 1]) }); }, error: RangeError, code: INVALID, message: /column index in \[0, 7\) for options\.sketch\[1\] but received 7/ },
  { name: 'subcolumns negative', at: 'stats', call: (f) => { const [x, s] = f.activations('sub'); f.opt.observe('sub', x, s, { sketch: new Int32Array([-1, 2, 1]) }); }, error: RangeError, code: INVALID, message: /options\.sketch\[0\] but received -1/ },
  { name: 'sketch on full-covariance layer', at: 'stats', call: (f) => { const [x, s] = f.activations('full'); f.opt.observe('full', x, s, { sketch: new Float32Array(9) }); }, error: TypeError, code: INVALID, message: /no sketch for options\.sketch .*full covariance/ },
];

t.test('observe', async (t) => {
  for (const c of observeCases) checkCase(t, { unchanged: true, ...c });
});

t.test('observe non-finite with nonFinite: skip', async (t) => {
  const f = fixtureAt('stats', { nonFinite: 'skip' });
  const before = { state: f.opt.getState(), weights: f.weightsSnapshot() };
  const x = x84(f);
  x[0] = NaN;
  f.opt.observe('fc1', x, [8, 4]); // no throw; replaces the pending statistics of fc1
  const result = f.opt.step(f.grads());
  t.equal(result.skipped, true, 'step skipped');
  t.match(result.reason, /non-finite activations for layer "fc1"/);
  t.equal(result.iteration, 2);
  t.equal(f.opt.iteration, 2, 'iteration unchanged');
  t.equal(firstDifference(f.opt.getState(), before.state), null, 'state unchanged');
  t.equal(firstDifference(f.weightsSnapshot(), before.weights), null, 'weights unchanged');
  t.same(Object.values(f.pendingSnapshot()), [null, null, null, null], 'pending statistics discarded');
  f.observeAll();
  const next = f.opt.step(f.grads());
  t.equal(next.skipped, false, 'next step works');
  t.equal(f.opt.iteration, 3);
  f.opt.dispose();
});

// ---------------------------------------------------------------------------------------------
// step

function withGrads(mutate: (g: Record<string, LayerUpdate>, f: Fixture) => void): (f: Fixture) => unknown {
  return (f) => {
    const g = f.grads();
    mutate(g, f);
    return f.opt.step(g);
  };
}

const stepCases: Case[] = [
  { name: 'step null', at: 'plain', call: (f) => f.opt.step(null as never), error: TypeError, code: INVALID, message: /an object for grads but received null/ },
  { name: 'step array', at: 'plain', call: (f) => f.opt.step([] as never), error: TypeError, code: INVALID, message: /for grads but received Array\(0\)/ },
  { name: 'step missing layer', at: 'stats', call: withGrads((g) => delete g.conv), error: TypeError, code: INVALID, message: /for grads\.conv but received undefined/ },
  { name: 'step missing plain param', at: 'plain', call: withGrads((g) => delete g.ln), error: TypeError, code: INVALID, message: /for grads\.ln but received undefined/ },
  { name: 'step unknown name', at: 'stats', call: withGrads((g) => (g.fc9 = g.fc1)), error: TypeError, code: INVALID, message: /registered layer name .* for grads\.fc9/ },
  { name: 'step entry not an object', at: 'plain', call: withGrads((g) => (g.fc1 = new Float32Array(12) as never)), error: TypeError, code: INVALID, message: /for grads\.fc1 but received Float32Array\(12\)/ },
  { name: 'step unknown field', at: 'plain', call: withGrads((g) => ((g.fc1 as unknown as Record<string, unknown>).gradient = 1)), error: TypeError, code: INVALID, message: /grads\.fc1\.gradient/ },
  { name: 'step weight wrong length', at: 'stats', call: withGrads((g) => (g.fc1.weight = new Float32Array(11))), error: RangeError, code: INVALID, message: /a Float32Array or DeviceTensor of length 12 for grads\.fc1\.weight but received Float32Array\(11\)/ },
  { name: 'step grad wrong length', at: 'plain', call: withGrads((g) => (g.conv.grad = new Float32Array(37))), error: RangeError, code: INVALID, message: /length 36 for grads\.conv\.grad/ },
  { name: 'step grad Float64Array', at: 'plain', call: withGrads((g) => (g.fc1.grad = new Float64Array(12) as never)), error: TypeError, code: INVALID, message: /a Float32Array or DeviceTensor for grads\.fc1\.grad but received Float64Array\(12\)/ },
  { name: 'step plain grad wrong length', at: 'stats', call: withGrads((g) => (g.ln.grad = new Float32Array(4))), error: RangeError, code: INVALID, message: /length 5 for grads\.ln\.grad/ },
  { name: 'step missing bias', at: 'plain', call: withGrads((g) => delete g.fc1.bias), error: TypeError, code: INVALID, message: /a Float32Array or DeviceTensor for grads\.fc1\.bias but received undefined/ },
  { name: 'step missing biasGrad', at: 'stats', call: withGrads((g) => delete g.sub.biasGrad), error: TypeError, code: INVALID, message: /grads\.sub\.biasGrad but received undefined/ },
  { name: 'step bias wrong length', at: 'plain', call: withGrads((g) => (g.full.bias = new Float32Array(3))), error: RangeError, code: INVALID, message: /length 2 for grads\.full\.bias/ },
  { name: 'step bias on a layer without bias', at: 'plain', call: withGrads((g) => (g.conv.bias = new Float32Array(2))), error: TypeError, code: INVALID, message: /undefined for grads\.conv\.bias .*"conv" has no bias/ },
  { name: 'step biasGrad on a plain parameter', at: 'plain', call: withGrads((g) => (g.ln.biasGrad = new Float32Array(5))), error: TypeError, code: INVALID, message: /grads\.ln\.biasGrad/ },
  { name: 'step weight shared by two layers', at: 'stats', call: withGrads((g) => (g.sub.weight = g.fc1.weight)), error: RangeError, code: INVALID, message: /an array sharing no memory with grads\.(sub|fc1)\.weight for grads\.(fc1|sub)\.weight .*a step writes weights and biases in place/ },
  { name: 'step weight that is its own grad', at: 'plain', call: withGrads((g) => (g.conv.grad = g.conv.weight)), error: RangeError, code: INVALID, message: /sharing no memory with grads\.conv\.grad for grads\.conv\.weight/ },
  {
    name: 'step bias overlapping a weight in one buffer',
    at: 'plain',
    call: withGrads((g) => {
      const buffer = new Float32Array(14);
      g.fc1.weight = buffer.subarray(0, 12);
      g.fc1.bias = buffer.subarray(11, 14);
    }),
    error: RangeError,
    code: INVALID,
    message: /sharing no memory with grads\.fc1\.(weight|bias) for grads\.fc1\.(bias|weight)/,
  },
  { name: 'step NaN grad (throw)', at: 'stats', call: withGrads((g) => (g.fc1.grad[3] = NaN)), error: NysActError, code: 'ERR_NYSACT_NON_FINITE', message: /finite values for grads\.fc1\.grad/ },
  { name: 'step Infinity biasGrad (throw)', at: 'plain', call: withGrads((g) => ((g.sub.biasGrad as Float32Array)[1] = Infinity)), error: NysActError, code: 'ERR_NYSACT_NON_FINITE', message: /grads\.sub\.biasGrad/ },
  { name: 'step NaN in last layer (throw)', at: 'stats', call: withGrads((g) => (g.ln.grad[4] = NaN)), error: NysActError, code: 'ERR_NYSACT_NON_FINITE', message: /grads\.ln\.grad/ },
  {
    name: 'step missing activations',
    at: 'stats',
    notObserved: ['sub'],
    call: (f) => f.opt.step(f.grads()),
    error: NysActError,
    code: 'ERR_NYSACT_MISSING_ACTIVATIONS',
    message: /Missing activations for layer "sub" on statistics step 2/,
  },
  {
    name: 'step missing activations at t = 0',
    at: 'fresh',
    call: (f) => f.opt.step(f.grads()),
    error: NysActError,
    code: 'ERR_NYSACT_MISSING_ACTIVATIONS',
    message: /layer "fc1" on statistics step 0/,
    unchanged: true,
  },
];

t.test('step', async (t) => {
  for (const c of stepCases) checkCase(t, { unchanged: true, ...c });
});

t.test('arrays a step only reads may be shared; adjacent views of one buffer are fine', async (t) => {
  const f = fixtureAt('plain');
  const g = f.grads();
  g.sub.grad = g.fc1.grad; // one gradient array read by two layers
  const buffer = new Float32Array(15);
  buffer.set(f.params.fc1.weight, 0);
  buffer.set(f.params.fc1.bias as Float32Array, 12);
  g.fc1.weight = buffer.subarray(0, 12);
  g.fc1.bias = buffer.subarray(12, 15);
  const result = f.opt.step(g);
  t.equal(result.skipped, false);
  t.not(buffer[0], f.params.fc1.weight[0], 'the weight view was updated in place');
});

t.test('a failed step can be retried', async (t) => {
  const f = fixtureAt('stats');
  const g = f.grads();
  g.conv.grad[0] = NaN;
  t.throws(() => f.opt.step(g), { code: 'ERR_NYSACT_NON_FINITE' });
  g.conv.grad[0] = 0;
  const result = f.opt.step(g);
  t.same([result.iteration, result.skipped, result.statistics, result.inverse], [2, false, true, false]);
  f.opt.dispose();
});

t.test('non-finite gradients with nonFinite: skip', async (t) => {
  const f = fixtureAt('stats', { nonFinite: 'skip' });
  const before = { state: f.opt.getState(), weights: f.weightsSnapshot() };
  const g = f.grads();
  g.full.grad[1] = NaN;
  const result = f.opt.step(g);
  t.same(
    { skipped: result.skipped, iteration: result.iteration, statistics: result.statistics, inverse: result.inverse },
    { skipped: true, iteration: 2, statistics: false, inverse: false },
  );
  t.match(result.reason, /grads\.full\.grad/);
  t.equal(f.opt.iteration, 2);
  t.equal(firstDifference(f.opt.getState(), before.state), null, 'state unchanged');
  t.equal(firstDifference(f.weightsSnapshot(), before.weights), null, 'weights unchanged');
  t.throws(() => f.opt.step(f.grads()), { code: 'ERR_NYSACT_MISSING_ACTIVATIONS' }, 'pending statistics were discarded');
  f.observeAll();
  t.equal(f.opt.step(f.grads()).skipped, false);
  f.opt.dispose();
});

// ---------------------------------------------------------------------------------------------
// pending covariance hooks

const pendingCases: Case[] = [
  { name: 'pendingCovariance without observe', at: 'stats', notObserved: ['conv'], call: (f) => f.opt.pendingCovariance('conv'), error: NysActError, code: INVALID, message: /"conv" has no pending statistics/ },
  { name: 'pendingCovariance of a plain parameter', at: 'stats', call: (f) => f.opt.pendingCovariance('ln'), error: RangeError, code: INVALID, message: /"ln" is a plain parameter/ },
  { name: 'setPendingCovariance wrong length', at: 'stats', call: (f) => f.opt.setPendingCovariance('fc1', new Float32Array(16)), error: RangeError, code: INVALID, message: /length 15 for c but received Float32Array\(16\)/ },
  { name: 'setPendingCovariance non-finite', at: 'stats', call: (f) => f.opt.setPendingCovariance('fc1', new Float32Array(15).fill(NaN)), error: NysActError, code: 'ERR_NYSACT_NON_FINITE', message: /finite values for c/ },
  { name: 'setPendingCovariance Float64Array', at: 'stats', call: (f) => f.opt.setPendingCovariance('fc1', new Float64Array(15) as never), error: TypeError, code: INVALID, message: /a Float32Array for c/ },
];

t.test('pending covariance hooks', async (t) => {
  for (const c of pendingCases) checkCase(t, { unchanged: true, ...c });
});

// ---------------------------------------------------------------------------------------------
// setState / deserializeState

function stateCase(name: string, mutate: (s: NysActState & Record<string, unknown>) => unknown, message: RegExp): Case {
  return {
    name,
    at: 'plain',
    call: (f) => {
      const s = f.opt.getState() as NysActState & Record<string, unknown>;
      const replaced = mutate(s);
      return f.opt.setState((replaced === undefined ? s : replaced) as NysActState);
    },
    error: NysActError,
    code: STATE,
    message,
  };
}

const L = (s: NysActState, name: string) => s.layers[name] as unknown as { spec: Record<string, unknown>; state: Record<string, unknown> };

const stateCases: Case[] = [
  stateCase('state null', () => null, /an object for state but received null/),
  stateCase('wrong format', (s) => void (s.format = 'tfjs' as never), /'nysact-state' for state\.format but received "tfjs"/),
  stateCase('wrong version', (s) => void (s.version = 2 as never), /for state\.version but received 2/),
  stateCase('negative iteration', (s) => void (s.iteration = -1), /non-negative safe integer for state\.iteration but received -1/),
  stateCase('fractional iteration', (s) => void (s.iteration = 1.5), /state\.iteration but received 1\.5/),
  stateCase('options missing', (s) => void delete (s as Record<string, unknown>).options, /an object for state\.options but received undefined/),
  stateCase('options.lr negative', (s) => void (s.options.lr = -1), /state\.options\.lr but received -1/),
  stateCase('options.tcov missing', (s) => void delete (s.options as Partial<typeof s.options>).tcov, /a value for state\.options\.tcov/),
  stateCase('options unknown key', (s) => void ((s.options as unknown as Record<string, unknown>).beta = 1), /state\.options\.beta/),
  stateCase('other seed', (s) => void (s.options.seed = 8), /7 \(this optimizer's seed.* for state\.options\.seed but received 8/),
  stateCase('layers missing', (s) => void delete (s as Record<string, unknown>).layers, /an object for state\.layers but received undefined/),
  stateCase('layer missing', (s) => void delete s.layers.conv, /for state\.layers\.conv but received undefined/),
  stateCase('extra layer', (s) => void (s.layers.fc2 = s.layers.fc1), /only layers of this optimizer .* for state\.layers\.fc2/),
  stateCase('spec differs', (s) => void (L(s, 'fc1').spec.outFeatures = 4), /3 \(this optimizer's layer spec\) for state\.layers\.fc1\.spec\.outFeatures but received 4/),
  stateCase('spec rank differs', (s) => void (L(s, 'sub').spec.rank = 4), /state\.layers\.sub\.spec\.rank/),
  stateCase('spec kind differs', (s) => void (L(s, 'ln').spec.kind = 'dense'), /state\.layers\.ln\.spec\.kind/),
  stateCase('state not an object', (s) => void (L(s, 'fc1').state = 'x' as never), /an object for state\.layers\.fc1\.state but received "x"/),
  stateCase('ema too short', (s) => void (L(s, 'fc1').state.ema = new Float32Array(14)), /a Float32Array of length 15 for state\.layers\.fc1\.state\.ema but received Float32Array\(14\)/),
  stateCase('ema Float64Array', (s) => void (L(s, 'conv').state.ema = new Float64Array(54)), /state\.layers\.conv\.state\.ema but received Float64Array\(54\)/),
  stateCase('ema plain array', (s) => void (L(s, 'conv').state.ema = Array.from(L(s, 'conv').state.ema as Float32Array)), /state\.layers\.conv\.state\.ema but received Array\(54\)/),
  stateCase('sketch wrong size', (s) => void (L(s, 'fc1').state.sketch = new Float32Array(3)), /length 0 or 15 for state\.layers\.fc1\.state\.sketch/),
  stateCase('indices Float32Array', (s) => void (L(s, 'sub').state.indices = new Float32Array(3)), /an Int32Array of length 0 or 3 for state\.layers\.sub\.state\.indices/),
  stateCase('indices out of range', (s) => void (L(s, 'sub').state.indices = new Int32Array([0, 9, 1])), /column index in \[0, 7\) for state\.layers\.sub\.state\.indices\[1\] but received 9/),
  stateCase('indices duplicated', (s) => void (L(s, 'sub').state.indices = new Int32Array([2, 2, 1])), /distinct column indices for state\.layers\.sub\.state\.indices\[1\]/),
  stateCase('basis without factors', (s) => void (L(s, 'fc1').state.hasFactors = false), /length 0 for state\.layers\.fc1\.state\.basis .*hasFactors is false/),
  stateCase('momentum wrong length', (s) => void (L(s, 'ln').state.momentum = new Float32Array(6)), /length 5 for state\.layers\.ln\.state\.momentum/),
  stateCase('biasMomentum on a layer without bias', (s) => void (L(s, 'conv').state.biasMomentum = new Float32Array(2)), /length 0 for state\.layers\.conv\.state\.biasMomentum/),
  stateCase('emaSteps negative', (s) => void (L(s, 'fc1').state.emaSteps = -1), /non-negative safe integer for state\.layers\.fc1\.state\.emaSteps/),
  stateCase('factorFallbacks NaN', (s) => void (L(s, 'full').state.factorFallbacks = NaN), /state\.layers\.full\.state\.factorFallbacks but received NaN/),
  stateCase('hasFactors string', (s) => void (L(s, 'fc1').state.hasFactors = 'yes'), /a boolean for state\.layers\.fc1\.state\.hasFactors but received "yes"/),
  stateCase('decayProduct > 1', (s) => void (L(s, 'fc1').state.decayProduct = 1.5), /\[0, 1\] for state\.layers\.fc1\.state\.decayProduct/),
  stateCase('inverseDamping 0 with factors', (s) => void (L(s, 'fc1').state.inverseDamping = 0), /> 0 .* for state\.layers\.fc1\.state\.inverseDamping/),
  stateCase('unknown state field', (s) => void (L(s, 'fc1').state.bogus = 1), /state\.layers\.fc1\.state\.bogus/),
  {
    name: 'deserializeState bad magic',
    at: 'plain',
    call: (f) => {
      const bytes = f.opt.serializeState();
      bytes[0] = 0x58;
      f.opt.deserializeState(bytes);
    },
    error: NysActError,
    code: STATE,
    message: /the magic "NYSACT01"/,
  },
  {
    name: 'deserializeState truncated',
    at: 'plain',
    call: (f) => f.opt.deserializeState(f.opt.serializeState().subarray(0, 400)),
    error: NysActError,
    code: STATE,
    message: /header/,
  },
  {
    name: 'deserializeState one byte short',
    at: 'plain',
    call: (f) => {
      const bytes = f.opt.serializeState();
      f.opt.deserializeState(bytes.subarray(0, bytes.length - 1));
    },
    error: NysActError,
    code: STATE,
    message: /header\.dataBytes/,
  },
  {
    name: 'deserializeState not bytes',
    at: 'plain',
    call: (f) => f.opt.deserializeState('NYSACT01' as never),
    error: NysActError,
    code: STATE,
    message: /a Uint8Array for bytes but received "NYSACT01"/,
  },
  {
    name: 'deserializeState of another optimizer',
    at: 'plain',
    call: (f) => {
      const other = new NysAct({ seed: 7, rank: 3 });
      other.addDense('fc1', { inFeatures: 4, outFeatures: 3 });
      const bytes = other.serializeState();
      other.dispose();
      f.opt.deserializeState(bytes);
    },
    error: NysActError,
    code: STATE,
    message: /state\.layers\.conv but received undefined/,
  },
];

t.test('setState / deserializeState', async (t) => {
  for (const c of stateCases) checkCase(t, { unchanged: true, ...c });
});

// ---------------------------------------------------------------------------------------------
// disposed

t.test('calls after dispose', async (t) => {
  const f = new Fixture({}, 2);
  const state = f.opt.getState();
  f.opt.dispose();
  f.opt.dispose();
  const calls: [string, () => unknown][] = [
    ['observe', () => f.observe('fc1')],
    ['step', () => f.opt.step(f.grads())],
    ['getState', () => f.opt.getState()],
    ['setState', () => f.opt.setState(state)],
    ['serializeState', () => f.opt.serializeState()],
    ['addDense', () => f.opt.addDense('x', { inFeatures: 1, outFeatures: 1 })],
    ['layerState', () => f.opt.layerState('fc1')],
    ['pendingCovariance', () => f.opt.pendingCovariance('fc1')],
    ['stateBytes', () => f.opt.stateBytes],
    ['lr =', () => (f.opt.lr = 0.1)],
  ];
  for (const [name, call] of calls) {
    checkCase(t, { name, call: () => call(), error: NysActError, code: 'ERR_NYSACT_DISPOSED', message: /disposed/, unchanged: false });
  }
  t.equal(f.opt.disposed, true);
});
