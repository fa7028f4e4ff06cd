/**
 * `nysact/tfjs`: NysAct as a TensorFlow.js optimizer (a tfjs-core `Optimizer`).
 *
 * ```js
 * const tf = require('@tensorflow/tfjs-node'); // or '@tensorflow/tfjs'
 * const { NysActOptimizer } = require('nysact/tfjs');
 * model.compile({ optimizer: new NysActOptimizer({ learningRate: 0.05 }).attach(model), loss: 'categoricalCrossentropy' });
 * await model.fit(xs, ys, { epochs: 3 });
 * ```
 *
 * How it works:
 * - `attach(model)` finds every Dense and Conv2D layer (nested models included) and registers it
 *   as a preconditioned layer of a {@link NysAct} core; every other trainable variable gets
 *   SGD-momentum (as the reference does), DepthwiseConv2D included.
 * - The layers' `call` methods are wrapped so that, on statistics steps only (iteration % tcov
 *   == 0) and only in training passes, the layer input is handed to the native sketch right away
 *   (no copy is kept). A pass is a training pass when tfjs says `training: true`, or when it runs
 *   inside a gradient computation (`minimize`, `computeGradients`, `tf.variableGrads`) and does
 *   not say `training: false`. `predict` and `evaluate` never feed statistics.
 * - `applyGradients` reads the gradients and weights, runs one native step and writes the weights
 *   back. Several training passes before one `applyGradients` (gradient accumulation, shared
 *   layers) are averaged, weighted by rows, into one statistics sample.
 *
 * `@tensorflow/tfjs-core` 4.x is a peer dependency: this module uses the application's copy.
 */
import type * as tfc from '@tensorflow/tfjs-core';

import { ErrorCodes, NysActError, invalidCall, invalidRange, invalidType } from './errors.js';
import { NysAct, type StepResult } from './nysact.js';
import type { NysActOptions, ResolvedNysActOptions } from './options.js';
import type { LayerState, NysActState } from './state.js';
import { isObject } from './validate.js';

type TfjsCore = typeof tfc;

/** A named tensor, as tfjs optimizers exchange weights (`{ name, tensor }`). */
export interface NamedTensor {
  name: string;
  tensor: tfc.Tensor;
}

function loadTfjsCore(): TfjsCore {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('@tensorflow/tfjs-core') as TfjsCore;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code !== 'MODULE_NOT_FOUND') throw error;
    throw new NysActError(
      ErrorCodes.PEER_MISSING,
      "nysact/tfjs needs its peer dependency @tensorflow/tfjs-core 4.x, which is not installed. " +
        'Install TensorFlow.js beside nysact: `npm install @tensorflow/tfjs` (pure JS) or `npm install @tensorflow/tfjs-node`.',
      { cause: error },
    );
  }
}

const tf = loadTfjsCore();

// ---------------------------------------------------------------------------------------------
// The parts of tfjs-layers objects this module uses (structural, so tfjs-layers is not a
// compile-time dependency).

/** A tfjs-layers `LayerVariable`. */
export interface LayerVariableLike {
  readonly name: string;
  readonly originalName: string;
  readonly shape: readonly (number | null)[];
  readonly dtype: string;
  readonly trainable: boolean;
  /** The underlying tfjs-core `Variable` (typed `Tensor` by tfjs-layers). */
  read(): tfc.Tensor;
}

/** A tfjs-layers `Layer` (or a nested `LayersModel`, which has `layers`). */
export interface LayerLike {
  readonly name: string;
  getClassName(): string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  call(inputs: any, kwargs: any): any;
  readonly built?: boolean;
  readonly trainableWeights: LayerVariableLike[];
  readonly layers?: LayerLike[];
}

/** A tfjs-layers `LayersModel` (Sequential or functional). */
export interface LayersModelLike extends LayerLike {
  readonly layers: LayerLike[];
  readonly trainableWeights: LayerVariableLike[];
}

interface DenseLayerLike extends LayerLike {
  kernel: LayerVariableLike | null;
  bias: LayerVariableLike | null;
  useBias: boolean;
}

interface Conv2DLayerLike extends DenseLayerLike {
  kernelSize: number[];
  strides: number[];
  padding: string;
  dilationRate: number | number[];
  dataFormat: string;
}

// ---------------------------------------------------------------------------------------------
// Options

/** Options of {@link NysActOptimizer}: the {@link NysActOptions} of the core plus tfjs ones. */
export interface NysActOptimizerOptions extends NysActOptions {
  /** Learning rate (the tfjs name; same as `lr`, give one of them). Default 0.1. */
  learningRate?: number;
  /**
   * Dense / Conv2D layers to leave out of preconditioning, by exact name or pattern; their
   * weights get SGD-momentum like every other variable.
   */
  exclude?: readonly (string | RegExp)[];
}

/** What {@link NysActOptimizer.getConfig} returns: JSON-safe options. */
export interface NysActOptimizerConfig {
  [key: string]: string | number | boolean | null | (string | { regexp: string; flags: string })[];
}

const CONFIG_KEYS = [
  'momentum',
  'statDecay',
  'damping',
  'weightDecay',
  'tcov',
  'tinv',
  'rank',
  'sketch',
  'nesterov',
  'backend',
  'nonFinite',
  'nystrom',
  'weightDecayMode',
] as const;

function splitOptions(options: unknown): { core: NysActOptions; exclude: (string | RegExp)[] } {
  if (options === undefined) return { core: {}, exclude: [] };
  if (!isObject(options)) throw invalidType('an options object', 'options', options);
  const { learningRate, exclude, ...rest } = options as NysActOptimizerOptions & Record<string, unknown>;
  const core: NysActOptions & Record<string, unknown> = { ...rest };
  if (learningRate !== undefined) {
    if (rest.lr !== undefined) {
      throw invalidRange('only one of options.learningRate and options.lr', 'options.learningRate', learningRate, 'they are the same setting');
    }
    core.lr = learningRate;
  }
  const patterns: (string | RegExp)[] = [];
  if (exclude !== undefined) {
    if (!Array.isArray(exclude)) throw invalidType('an array of layer names or RegExps', 'options.exclude', exclude);
    exclude.forEach((p: unknown, i: number) => {
      if (typeof p === 'string' || p instanceof RegExp) patterns.push(p);
      else if (isObject(p) && typeof p.regexp === 'string') patterns.push(new RegExp(p.regexp, typeof p.flags === 'string' ? p.flags : ''));
      else throw invalidType('a layer name (string) or a RegExp', `options.exclude[${i}]`, p);
    });
  }
  return { core, exclude: patterns };
}

// ---------------------------------------------------------------------------------------------
// Model inspection

interface Capture {
  /** Row-weighted sum of the pending covariances seen so far (only once a second pass arrives). */
  sum: Float32Array | null;
  rows: number;
  passes: number;
}

interface PreconditionedRecord {
  readonly kind: 'dense' | 'conv2d';
  readonly layer: DenseLayerLike | Conv2DLayerLike;
  /** The core layer name: the kernel variable's original name. */
  readonly key: string;
  readonly kernel: LayerVariableLike;
  readonly bias: LayerVariableLike | null;
  readonly channelsFirst: boolean;
  readonly originalCall: LayerLike['call'];
  /** Position among the preconditioned layers (the Philox stream key). */
  readonly index: number;
  /** Registered with the core (at attach when the model is built, else at its first call). */
  registered: boolean;
  capture: Capture | null;
}

interface PlainRecord {
  readonly key: string;
  readonly variable: tfc.Variable;
}

function walkLayers(layers: readonly LayerLike[], out: LayerLike[], seen: Set<LayerLike>): void {
  for (const layer of layers) {
    if (seen.has(layer)) continue;
    seen.add(layer);
    if (Array.isArray(layer.layers)) walkLayers(layer.layers, out, seen);
    else out.push(layer);
  }
}

function isModel(value: unknown): value is LayersModelLike {
  return (
    isObject(value) &&
    Array.isArray((value as { layers?: unknown }).layers) &&
    typeof (value as { getClassName?: unknown }).getClassName === 'function'
  );
}

function pair(value: number | number[], name: string): [number, number] {
  if (typeof value === 'number') return [value, value];
  if (Array.isArray(value) && value.length === 2) return [value[0], value[1]];
  throw invalidRange('a number or a pair', name, value);
}

/**
 * The Philox stream key of the i-th preconditioned layer: its position, not its name, so that
 * two builds of one architecture draw the same sketches whatever names tfjs generated.
 */
function sketchKey(index: number): string {
  return `tfjs-layer-${index}`;
}

function asVariable(v: LayerVariableLike): tfc.Variable {
  return v.read() as tfc.Variable;
}

function gradientDepth(): number {
  const state = (tf.engine() as unknown as { state?: { gradientDepth?: number } }).state;
  return state?.gradientDepth ?? 0;
}

function float64Bits(x: number): [number, number] {
  const f = new Float64Array([x]);
  const i = new Int32Array(f.buffer);
  return [i[0], i[1]];
}

function bitsFloat64(lo: number, hi: number): number {
  return new Float64Array(new Int32Array([lo, hi]).buffer)[0];
}

const STATE_ARRAYS = [
  ['ema', 'float32'],
  ['sketch', 'float32'],
  ['indices', 'int32'],
  ['basis', 'float32'],
  ['coefficients', 'float32'],
  ['momentum', 'float32'],
  ['biasMomentum', 'float32'],
] as const;

// ---------------------------------------------------------------------------------------------

/**
 * NysAct as a tfjs `Optimizer`: attach it to a model, then use it wherever tfjs takes an
 * optimizer (`model.compile`, `optimizer.minimize`, custom loops).
 */
export class NysActOptimizer extends tf.Optimizer {
  /** The name `tf.serialization` registers this class under. */
  static className = 'NysAct';

  readonly #core: NysAct;
  readonly #exclude: (string | RegExp)[];
  #model: LayersModelLike | null = null;
  #layers: PreconditionedRecord[] = [];
  #byVariable = new Map<string, { rec: PreconditionedRecord; role: 'kernel' | 'bias' } | { plain: PlainRecord }>();
  #plains: PlainRecord[] = [];
  #registered = false;
  #gradientScopes = 0;
  #pendingWeights: { name: string; data: Float32Array | Int32Array }[] | null = null;
  #lastStep: StepResult | null = null;
  #disposed = false;

  /**
   * @param options hyperparameters (SPEC §1 reference defaults) plus `learningRate` / `exclude`.
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad option.
   */
  constructor(options?: NysActOptimizerOptions) {
    super();
    const { core, exclude } = splitOptions(options);
    this.#core = new NysAct(core);
    this.#exclude = exclude;
  }

  /**
   * Called by `tf.serialization` (and `tf.loadLayersModel` with a saved optimizer). Keys tfjs
   * adds to the config (`customObjects`) are dropped; everything else is validated as options.
   */
  static override fromConfig<T extends tfc.serialization.Serializable>(
    cls: tfc.serialization.SerializableConstructor<T>,
    config: tfc.serialization.ConfigDict,
  ): T {
    const { customObjects: _ignored, ...options } = config as tfc.serialization.ConfigDict & { customObjects?: unknown };
    void _ignored;
    return new cls(options);
  }

  /** The core optimizer (its options, `layerState`, `stateBytes`, ...). */
  get core(): NysAct {
    return this.#core;
  }

  /** The backend the core runs on (`'cpu'` or `'cuda'`). */
  get backend(): 'cpu' | 'cuda' {
    return this.#core.backend;
  }

  /** The learning rate; may be changed between steps (schedules). */
  get learningRate(): number {
    return this.#core.lr;
  }

  set learningRate(value: number) {
    this.#core.lr = value;
  }

  /** Same as setting {@link learningRate} (the tfjs `SGDOptimizer` method name). */
  setLearningRate(value: number): void {
    this.#core.lr = value;
  }

  /** The result of the last step (statistics / inverse flags, fallbacks, skips), or null. */
  get lastStep(): StepResult | null {
    return this.#lastStep;
  }

  /** The attached model's preconditioned layers (names) and SGD-momentum variables. */
  get layout(): {
    preconditioned: { layer: string; kind: 'dense' | 'conv2d'; variables: string[]; sketchKey: string }[];
    momentumSgd: string[];
  } {
    return {
      preconditioned: this.#layers.map((r, i) => ({
        layer: r.layer.name,
        kind: r.kind,
        sketchKey: sketchKey(i),
        variables: r.bias ? [r.kernel.originalName, r.bias.originalName] : [r.kernel.originalName],
      })),
      momentumSgd: this.#plains.map((p) => p.key),
    };
  }

  /**
   * Attaches the optimizer to a model (once, before training): Dense and Conv2D layers are
   * preconditioned, every other trainable variable gets SGD-momentum. Returns `this`.
   *
   * @throws {TypeError} `ERR_NYSACT_INVALID_ARGUMENT` when `model` is not a tfjs LayersModel.
   * @throws {NysActError} `ERR_NYSACT_INVALID_ARGUMENT` when already attached or after dispose.
   */
  attach(model: LayersModelLike): this {
    this.#checkDisposed();
    if (!isModel(model)) throw invalidType('a tf.LayersModel (Sequential or functional)', 'model', model);
    if (this.#model !== null) {
      throw invalidCall(`This optimizer is already attached to model ${JSON.stringify(this.#model.name)}; create one optimizer per model`);
    }
    const layers: LayerLike[] = [];
    walkLayers(model.layers, layers, new Set());
    const records: PreconditionedRecord[] = [];
    for (const layer of layers) {
      const cls = layer.getClassName();
      if (cls !== 'Dense' && cls !== 'Conv2D') continue;
      if (this.#exclude.some((p) => (typeof p === 'string' ? p === layer.name : p.test(layer.name)))) continue;
      records.push(this.#wrapLayer(layer as DenseLayerLike, cls === 'Dense' ? 'dense' : 'conv2d', records.length));
    }
    this.#model = model;
    this.#layers = records;
    if (layers.every((l) => l.built !== false)) this.#register();
    return this;
  }

  #wrapLayer(layer: DenseLayerLike, kind: 'dense' | 'conv2d', index: number): PreconditionedRecord {
    const originalCall = layer.call;
    const rec: PreconditionedRecord = {
      kind,
      layer,
      get key() {
        return (layer.kernel as LayerVariableLike).originalName;
      },
      get kernel() {
        return layer.kernel as LayerVariableLike;
      },
      get bias() {
        return layer.useBias ? layer.bias : null;
      },
      channelsFirst: kind === 'conv2d' && (layer as Conv2DLayerLike).dataFormat === 'channelsFirst',
      originalCall,
      index,
      registered: false,
      capture: null,
    };
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    layer.call = function wrappedCall(this: unknown, inputs: unknown, kwargs: unknown) {
      self.#maybeCapture(rec, inputs, kwargs);
      return originalCall.call(this, inputs, kwargs);
    };
    return rec;
  }

  /** Registers one preconditioned layer with the core (its kernel must exist). */
  #registerLayer(rec: PreconditionedRecord): void {
    if (rec.registered) return;
    const layer = rec.layer;
    if (rec.kernel === null || rec.kernel === undefined) {
      throw invalidCall(`Layer ${JSON.stringify(layer.name)} is not built yet; build the model (call it once) before training`);
    }
    const core = this.#core;
    const shape = rec.kernel.shape as number[];
    if (rec.kind === 'dense') {
      core.addDense(rec.key, { inFeatures: shape[0], outFeatures: shape[1], bias: rec.bias !== null, sketchKey: sketchKey(rec.index) });
    } else {
      const conv = layer as Conv2DLayerLike;
      if (conv.padding !== 'same' && conv.padding !== 'valid') {
        throw invalidRange("'same' or 'valid'", `padding of layer ${JSON.stringify(layer.name)}`, conv.padding);
      }
      core.addConv2d(rec.key, {
        kernelSize: [shape[0], shape[1]],
        inChannels: shape[2],
        outChannels: shape[3],
        strides: pair(conv.strides, 'strides'),
        padding: conv.padding,
        dilation: pair(conv.dilationRate, 'dilationRate'),
        bias: rec.bias !== null,
        sketchKey: sketchKey(rec.index),
      });
    }
    this.#byVariable.set(asVariable(rec.kernel).name, { rec, role: 'kernel' });
    if (rec.bias !== null) this.#byVariable.set(asVariable(rec.bias).name, { rec, role: 'bias' });
    rec.registered = true;
  }

  /**
   * Registers every layer and variable with the core: at attach when the model is built, else at
   * the first step (a model built lazily registers each preconditioned layer at its first call).
   */
  #register(): void {
    if (this.#registered || this.#model === null) return;
    for (const rec of this.#layers) this.#registerLayer(rec);
    for (const v of this.#model.trainableWeights) {
      const variable = asVariable(v);
      if (this.#byVariable.has(variable.name)) continue;
      this.#addPlain(v.originalName, variable);
    }
    this.#registered = true;
    if (this.#pendingWeights !== null) {
      const pending = this.#pendingWeights;
      this.#pendingWeights = null;
      this.#restore(pending);
    }
  }

  #addPlain(key: string, variable: tfc.Variable): void {
    if (variable.dtype !== 'float32') return;
    this.#core.addParam(key, { size: variable.size });
    const plain = { key, variable };
    this.#plains.push(plain);
    this.#byVariable.set(variable.name, { plain });
  }

  // -------------------------------------------------------------------------------------------
  // Statistics capture

  #maybeCapture(rec: PreconditionedRecord, inputs: unknown, kwargs: unknown): void {
    if (this.#disposed || !this.#core.needsActivations) return;
    const training = isObject(kwargs) ? kwargs.training : undefined;
    if (training === false) return;
    if (training !== true && this.#gradientScopes === 0 && gradientDepth() === 0) return;
    if (!rec.registered) this.#registerLayer(rec);
    const x = (Array.isArray(inputs) ? inputs[0] : inputs) as tfc.Tensor;
    if (!(x instanceof tf.Tensor)) return;
    const core = this.#core;
    let data: Float32Array;
    let shape: number[];
    if (rec.kind === 'conv2d') {
      if (x.rank !== 4) throw invalidRange('a 4-D input', `input of layer ${JSON.stringify(rec.layer.name)}`, x.shape);
      const nhwc = tf.tidy(() => {
        const f = x.dtype === 'float32' ? x : tf.cast(x, 'float32');
        return rec.channelsFirst ? tf.transpose(f, [0, 2, 3, 1]) : f;
      });
      data = nhwc.dataSync() as Float32Array;
      shape = nhwc.shape.slice();
      if (nhwc !== x) nhwc.dispose();
    } else {
      const f = x.dtype === 'float32' ? x : tf.tidy(() => tf.cast(x, 'float32'));
      data = f.dataSync() as Float32Array;
      const inFeatures = x.shape[x.rank - 1];
      shape = x.rank === 2 || x.rank === 3 ? x.shape.slice() : [x.size / inFeatures, inFeatures];
      if (f !== x) f.dispose();
    }
    const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const previous = rec.capture;
    if (previous !== null && previous.sum === null) {
      // A second pass in this step: keep the first pass's covariance before it is replaced.
      const first = core.pendingCovariance(rec.key);
      for (let i = 0; i < first.length; i++) first[i] *= previous.rows;
      previous.sum = first;
    }
    core.observe(rec.key, data, shape);
    if (previous === null) {
      rec.capture = { sum: null, rows, passes: 1 };
    } else {
      const c = core.pendingCovariance(rec.key);
      const sum = previous.sum as Float32Array;
      for (let i = 0; i < c.length; i++) sum[i] += rows * c[i];
      previous.rows += rows;
      previous.passes += 1;
    }
  }

  /** Marks gradient computations started through this optimizer as training passes. */
  override computeGradients(f: () => tfc.Scalar, varList?: tfc.Variable[]): { value: tfc.Scalar; grads: tfc.NamedTensorMap } {
    this.#checkDisposed();
    this.#gradientScopes++;
    try {
      return super.computeGradients(f, varList);
    } finally {
      this.#gradientScopes--;
    }
  }

  // -------------------------------------------------------------------------------------------
  // The step

  /**
   * One NysAct step on the given gradients (keyed by variable name). Variables without a
   * gradient are left untouched. Every check runs before any state or weight changes.
   *
   * @throws {NysActError} `ERR_NYSACT_INVALID_ARGUMENT` when not attached or for an unknown
   *   variable after the first step; the core's errors (non-finite values, missing statistics).
   */
  override applyGradients(variableGradients: tfc.NamedTensorMap | NamedTensor[]): void {
    this.#checkDisposed();
    if (this.#model === null) {
      throw invalidCall('NysActOptimizer is not attached to a model: call optimizer.attach(model) before training');
    }
    this.#register();
    const entries: [string, tfc.Tensor][] = [];
    if (Array.isArray(variableGradients)) {
      for (const { name, tensor } of variableGradients) if (tensor != null) entries.push([name, tensor]);
    } else {
      for (const [name, tensor] of Object.entries(variableGradients)) if (tensor != null) entries.push([name, tensor]);
    }

    const core = this.#core;
    const perLayer = new Map<PreconditionedRecord, { kernel?: tfc.Tensor; bias?: tfc.Tensor }>();
    const plainGrads: [PlainRecord, tfc.Tensor][] = [];
    for (const [name, grad] of entries) {
      let slot = this.#byVariable.get(name);
      if (slot === undefined) {
        const variable = tf.engine().registeredVariables[name];
        if (variable === undefined) throw invalidRange('the name of a variable', `variableGradients[${JSON.stringify(name)}]`, name);
        if (core.iteration > 0) {
          throw invalidCall(
            `Variable ${JSON.stringify(name)} is not part of the attached model and appeared after the first step; ` +
              'NysAct registers every variable before its first step (attach the optimizer to the model that owns it)',
          );
        }
        this.#addPlain(name, variable);
        slot = this.#byVariable.get(name);
        if (slot === undefined) throw invalidType('a float32 variable', `variableGradients[${JSON.stringify(name)}]`, variable.dtype);
      }
      if (grad.dtype !== 'float32') throw invalidType('a float32 gradient', `variableGradients[${JSON.stringify(name)}]`, grad.dtype);
      if ('plain' in slot) plainGrads.push([slot.plain, grad]);
      else {
        const g = perLayer.get(slot.rec) ?? {};
        g[slot.role] = grad;
        perLayer.set(slot.rec, g);
      }
    }

    // Statistics of this step: average several passes into one sample.
    if (core.needsActivations) {
      for (const rec of this.#layers) {
        const capture = rec.capture;
        if (capture === null || !perLayer.get(rec)?.kernel) continue;
        if (capture.sum !== null) {
          const avg = capture.sum;
          for (let i = 0; i < avg.length; i++) avg[i] /= capture.rows;
          core.setPendingCovariance(rec.key, avg);
        }
      }
      for (const [rec, g] of perLayer) {
        if (g.kernel && rec.capture === null) {
          throw new NysActError(
            ErrorCodes.MISSING_ACTIVATIONS,
            `No training pass of layer ${JSON.stringify(rec.layer.name)} was seen on statistics step ${core.iteration}: ` +
              'run the forward pass inside optimizer.minimize / computeGradients / tf.variableGrads, or with { training: true }',
          );
        }
      }
    }

    const updates: Record<string, { weight: Float32Array; grad: Float32Array; bias?: Float32Array; biasGrad?: Float32Array }> = {};
    const writes: [tfc.Variable, Float32Array][] = [];
    for (const [rec, g] of perLayer) {
      if (!g.kernel) continue; // a bias gradient alone: the layer is skipped with its kernel
      const kernel = asVariable(rec.kernel);
      const weight = Float32Array.from(kernel.dataSync() as Float32Array);
      const update: (typeof updates)[string] = { weight, grad: g.kernel.dataSync() as Float32Array };
      writes.push([kernel, weight]);
      if (rec.bias !== null) {
        const biasVar = asVariable(rec.bias);
        const bias = Float32Array.from(biasVar.dataSync() as Float32Array);
        update.bias = bias;
        update.biasGrad = g.bias ? (g.bias.dataSync() as Float32Array) : new Float32Array(bias.length);
        writes.push([biasVar, bias]);
      }
      updates[rec.key] = update;
    }
    for (const [plain, grad] of plainGrads) {
      const weight = Float32Array.from(plain.variable.dataSync() as Float32Array);
      updates[plain.key] = { weight, grad: grad.dataSync() as Float32Array };
      writes.push([plain.variable, weight]);
    }

    let result: StepResult;
    try {
      result = core.step(updates, { missing: 'skip' });
    } finally {
      for (const rec of this.#layers) rec.capture = null;
    }
    this.#lastStep = result;
    if (result.skipped) return;
    tf.tidy(() => {
      for (const [variable, values] of writes) variable.assign(tf.tensor(values, variable.shape, 'float32'));
    });
    this.incrementIterations();
  }

  // -------------------------------------------------------------------------------------------
  // State

  /**
   * The complete optimizer state as named tensors: `iter` first, then for every core layer
   * (keyed by its kernel's / variable's original name) `<name>/<field>` for the EMA, sketch,
   * factors and momentum, and `<name>/scalars` (int32: counters and float64 bit patterns), so
   * `model.save(..., { includeOptimizer: true })` round-trips bit-exactly.
   */
  override async getWeights(): Promise<NamedTensor[]> {
    this.#checkDisposed();
    const out: NamedTensor[] = [await this.saveIterations()];
    if (!this.#registered) return out;
    const state = this.#core.getState();
    for (const [key, entry] of Object.entries(state.layers)) {
      const s = entry.state;
      for (const [field, dtype] of STATE_ARRAYS) {
        const arr = s[field];
        if (arr.length > 0) out.push({ name: `${key}/${field}`, tensor: tf.tensor1d(arr, dtype) });
      }
      const emaSteps = s.emaSteps;
      const fallbacks = s.factorFallbacks;
      const scalars = new Int32Array([
        emaSteps % 2 ** 32 | 0,
        Math.floor(emaSteps / 2 ** 32),
        fallbacks % 2 ** 32 | 0,
        Math.floor(fallbacks / 2 ** 32),
        s.hasFactors ? 1 : 0,
        ...float64Bits(s.inverseDamping),
        ...float64Bits(s.decayProduct),
      ]);
      out.push({ name: `${key}/scalars`, tensor: tf.tensor1d(scalars, 'int32') });
    }
    return out;
  }

  /**
   * Restores a state from {@link getWeights} (iterations first). Before the optimizer is attached
   * (e.g. `tf.loadLayersModel` of a model saved with its optimizer), the values are kept and
   * applied by `attach`. Validated completely first: on failure nothing changes.
   *
   * @throws {NysActError} `ERR_NYSACT_STATE` naming the offending weight.
   */
  override async setWeights(weightValues: NamedTensor[]): Promise<void> {
    this.#checkDisposed();
    if (!Array.isArray(weightValues) || weightValues.length === 0 || weightValues[0]?.name !== 'iter') {
      throw new NysActError(ErrorCodes.STATE, "Expected the optimizer weights from getWeights() (starting with 'iter') for weightValues");
    }
    const copies: { name: string; data: Float32Array | Int32Array }[] = [];
    for (const { name, tensor } of weightValues) {
      const data = await tensor.data();
      copies.push({ name, data: data instanceof Int32Array ? data.slice() : Float32Array.from(data as Float32Array) });
    }
    if (this.#registered) this.#restore(copies);
    else this.#pendingWeights = copies;
  }

  #restore(copies: { name: string; data: Float32Array | Int32Array }[]): void {
    const iteration = copies[0].data[0];
    const current = this.#core.getState();
    const byName = new Map(copies.slice(1).map((c) => [c.name, c.data]));
    const layers: NysActState['layers'] = {};
    for (const [key, entry] of Object.entries(current.layers)) {
      const scalars = byName.get(`${key}/scalars`);
      if (!(scalars instanceof Int32Array) || scalars.length !== 9) {
        throw new NysActError(ErrorCodes.STATE, `Expected an int32 weight ${JSON.stringify(`${key}/scalars`)} of 9 values in the optimizer weights but it is missing or malformed`);
      }
      byName.delete(`${key}/scalars`);
      const state: Partial<LayerState> = {
        emaSteps: (scalars[0] >>> 0) + scalars[1] * 2 ** 32,
        factorFallbacks: (scalars[2] >>> 0) + scalars[3] * 2 ** 32,
        hasFactors: scalars[4] === 1,
        inverseDamping: bitsFloat64(scalars[5], scalars[6]),
        decayProduct: bitsFloat64(scalars[7], scalars[8]),
      };
      for (const [field, dtype] of STATE_ARRAYS) {
        const data = byName.get(`${key}/${field}`);
        byName.delete(`${key}/${field}`);
        const ctor = dtype === 'int32' ? Int32Array : Float32Array;
        if (data !== undefined && !(data instanceof ctor)) {
          throw new NysActError(ErrorCodes.STATE, `Expected ${dtype} values for optimizer weight ${JSON.stringify(`${key}/${field}`)}`);
        }
        (state as Record<string, unknown>)[field] = data ?? new ctor(0);
      }
      layers[key] = { spec: entry.spec, state: state as LayerState };
    }
    if (byName.size > 0) {
      throw new NysActError(
        ErrorCodes.STATE,
        `Unexpected optimizer weight ${JSON.stringify(byName.keys().next().value)}: it belongs to no layer or variable of the attached model`,
      );
    }
    const options: ResolvedNysActOptions = { ...current.options };
    this.#core.setState({ ...current, iteration, options, layers });
    this.iterations_ = iteration;
  }

  /** JSON-safe options, for `tf.serialization` and saved models. */
  override getConfig(): tfc.serialization.ConfigDict {
    const o = this.#core.options;
    const config: NysActOptimizerConfig = { learningRate: o.lr };
    for (const key of CONFIG_KEYS) config[key] = o[key] as string | number | boolean;
    config.seed = typeof o.seed === 'bigint' ? o.seed.toString() : o.seed;
    config.exclude = this.#exclude.map((p) => (typeof p === 'string' ? p : { regexp: p.source, flags: p.flags }));
    return config as unknown as tfc.serialization.ConfigDict;
  }

  /** Frees the native state and unwraps the model's layers. Safe to call twice. */
  override dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const rec of this.#layers) {
      if (rec.layer.call !== rec.originalCall) {
        // The wrapper is an own property; removing it restores the class method.
        delete (rec.layer as { call?: unknown }).call;
        if (rec.layer.call !== rec.originalCall) rec.layer.call = rec.originalCall;
      }
    }
    this.#layers = [];
    this.#plains = [];
    this.#byVariable.clear();
    this.#core.dispose();
    super.dispose();
  }

  /** True after {@link dispose}. */
  get disposed(): boolean {
    return this.#disposed;
  }

  #checkDisposed(): void {
    if (this.#disposed) throw new NysActError(ErrorCodes.DISPOSED, 'This NysActOptimizer has been disposed');
  }
}

tf.serialization.registerClass(NysActOptimizer);

/**
 * Shorthand: `new NysActOptimizer(options).attach(model)`.
 *
 * @example
 * model.compile({ optimizer: nysact(model, { learningRate: 0.05 }), loss: 'categoricalCrossentropy' });
 */
export function nysact(model: LayersModelLike, options?: NysActOptimizerOptions): NysActOptimizer {
  return new NysActOptimizer(options).attach(model);
}
