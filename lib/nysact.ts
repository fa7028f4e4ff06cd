/**
 * The framework-free NysAct optimizer (SPEC §1). It owns one native layer per registered layer,
 * validates every call completely before touching native state (a failed call changes nothing),
 * and drives the schedule: statistics every `tcov` steps, factors every `tinv` steps, the fused
 * preconditioned momentum step every step.
 */
import { ErrorCodes, NysActError, callNative, fromNative, invalidCall, invalidRange, invalidType } from './errors.js';
import { loadNative } from './loader.js';
import type { NativeBinding, NativeLayer, NativeLayerSpec, NativeOperand, NativeStepPlan, NativeStepPlanResult } from './native.js';
import {
  OPTION_KEYS,
  layerGeometry,
  nativeLayerSpec,
  resolveConv2dOptions,
  resolveDenseOptions,
  resolveOptions,
  resolveParamOptions,
  validateDamping,
  validateLayerName,
  validateLr,
  validateMomentum,
  validateWeightDecay,
  type Conv2dOptions,
  type DenseOptions,
  type LayerGeometry,
  type LayerSpec,
  type NysActOptions,
  type ParamOptions,
  type ResolvedNysActOptions,
} from './options.js';
import {
  STATE_FORMAT,
  STATE_VERSION,
  decodeState,
  encodeState,
  stateError,
  validateLayerState,
  type LayerState,
  type NysActState,
} from './state.js';
import { chooseBackend } from './runtime.js';
import { DeviceTensor, hostBuffer, tensorInternals, type TensorInternals } from './tensor.js';
import { assertFloat32Array, assertKnownKeys, assertObject, isObject } from './validate.js';

/** Options of {@link NysAct.observe}. */
export interface ObserveOptions {
  /**
   * An explicit sketch instead of the Philox draw (tests, comparisons with the reference):
   * gaussian layers take a `Float32Array` of p·r values (p × r row-major, bias row last),
   * subcolumn layers an `Int32Array` of r distinct column indices in [0, p). Full-covariance
   * layers (r == p) take none.
   */
  sketch?: Float32Array | Int32Array;
}

/** An array a step reads or updates: a `Float32Array` or a {@link DeviceTensor}. */
export type StepArray = Float32Array | DeviceTensor;

/**
 * The parameters and gradients of one layer for {@link NysAct.step}, updated in place. `step` and
 * `stepAsync` take `LayerUpdate<StepArray>`: each array a `Float32Array` (any, or one from
 * {@link NysAct.hostBuffer}) or a {@link DeviceTensor} of the optimizer's backend (with CUDA
 * tensors the step copies nothing between host and device). The default type parameter keeps
 * plain `Float32Array` fields.
 */
export interface LayerUpdate<A extends StepArray = Float32Array> {
  /** The weight (dense `[in, out]` or `[out, in]` per layout; conv `[kh, kw, inC, outC]`; plain: `size`). */
  weight: A;
  /** The gradient of the weight, same layout and length. */
  grad: A;
  /** The bias (length = fan-out), present iff the layer has a bias. */
  bias?: A;
  /** The gradient of the bias, present iff the layer has a bias. */
  biasGrad?: A;
}

/** Options of {@link NysAct.step}. */
export interface StepOptions {
  /**
   * What to do with registered layers that have no entry in `grads`: `'throw'` (default) or
   * `'skip'` (leave them untouched this step, like PyTorch parameters whose gradient is None).
   */
  missing?: 'throw' | 'skip';
}

/** Why a factorisation did not go as SPEC §1 step 2 describes. */
export type FallbackStatus = 'shift-enlarged' | 'kept-previous' | 'identity';

/** One layer whose preconditioner rebuild needed a fallback. */
export interface FallbackInfo {
  /** Layer name. */
  layer: string;
  /** `'shift-enlarged'`: Cholesky needed a larger shift; `'kept-previous'`: the old factors stay;
   * `'identity'`: no factors yet, P = I/ρ. */
  status: FallbackStatus;
  /** The shift finally used. */
  shift: number;
  /** Cholesky attempts. */
  attempts: number;
  /** Native explanation. */
  detail: string;
}

/** What {@link NysAct.step} did. */
export interface StepResult {
  /** The step counter t this call executed (or, when skipped, attempted). */
  iteration: number;
  /** True when the step was skipped for non-finite values (`nonFinite: 'skip'`); nothing changed. */
  skipped: boolean;
  /** Why the step was skipped; null otherwise. */
  reason: string | null;
  /** Whether statistics were committed (t % tcov === 0 and not skipped). */
  statistics: boolean;
  /** Whether the preconditioners were rebuilt (t % tinv === 0 and not skipped). */
  inverse: boolean;
  /** Layers whose rebuild needed a fallback (empty when all went as SPEC §1 says). */
  fallbacks: FallbackInfo[];
}

/** A copy of one layer's native state plus its sizes. */
export interface LayerStateInfo extends LayerState {
  /** p = fan-in + bias (0 for plain parameters). */
  p: number;
  /** r = min(rank, p) (0 for plain parameters). */
  r: number;
  /** r == p: full covariance, no sketch. */
  fullCovariance: boolean;
}

/** A validated step: its native plan, or the result of a skipped step. */
interface PreparedStep {
  skipped: StepResult | null;
  plan: NativeStepPlan;
  records: LayerRecord[];
  tensors: TensorInternals[];
  iteration: number;
  statistics: boolean;
  inverse: boolean;
}

const EMPTY_PLAN: NativeStepPlan = {
  layers: [],
  weights: [],
  biases: [],
  grads: [],
  biasGrads: [],
  statistics: false,
  inverse: false,
  statDecay: 0,
  damping: 1,
  variant: 0,
  scalars: new Float64Array(5),
};

interface LayerRecord {
  readonly name: string;
  readonly spec: Readonly<LayerSpec>;
  readonly geometry: LayerGeometry;
  readonly nativeSpec: NativeLayerSpec;
  readonly native: NativeLayer;
}

const FALLBACK_STATUS: Record<number, FallbackStatus> = { 1: 'shift-enlarged', 2: 'kept-previous', 3: 'identity' };

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

function sameValue(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * NysAct: momentum SGD preconditioned by a Nyström approximation of each layer's activation
 * covariance (SPEC §1), on a native backend.
 *
 * @example
 * const opt = new NysAct({ lr: 0.05 });
 * opt.addDense('fc1', { inFeatures: 784, outFeatures: 256 });
 * // each training step:
 * if (opt.needsActivations) opt.observe('fc1', x, [batch, 784]);
 * opt.step({ fc1: { weight, grad, bias, biasGrad } });
 */
interface StepOperandUse {
  value: unknown; // what the caller passed
  operand: NativeOperand | null; // what the plan holds (null: no bias)
  name: string;
  written: boolean;
}

// A step writes weights and biases in place, and may update many layers at once (CUDA shares
// kernel launches between layers): an array it writes must share no memory with any other array of
// the step, or the result would depend on the order of the updates.  Read-only gradients may be
// shared.  Float32Arrays overlap when they view overlapping bytes of one buffer; DeviceTensors
// when they are the same tensor.
function requireNoWrittenOverlap(uses: StepOperandUse[]): void {
  const byMemory = new Map<unknown, { begin: number; end: number; use: StepOperandUse }[]>();
  for (const use of uses) {
    if (use.operand === null) continue;
    const view = use.value instanceof Float32Array ? use.value : null;
    const memory = view !== null ? view.buffer : use.operand;
    const begin = view !== null ? view.byteOffset : 0;
    const end = view !== null ? view.byteOffset + view.byteLength : Number.POSITIVE_INFINITY;
    if (end <= begin) continue;
    let list = byMemory.get(memory);
    if (list === undefined) byMemory.set(memory, (list = []));
    list.push({ begin, end, use });
  }
  for (const list of byMemory.values()) {
    list.sort((a, b) => a.begin - b.begin);
    for (let i = 0; i < list.length; ++i) {
      for (let j = i + 1; j < list.length && list[j].begin < list[i].end; ++j) {
        if (!list[i].use.written && !list[j].use.written) continue;
        const [a, b] = list[i].use.written ? [list[i].use, list[j].use] : [list[j].use, list[i].use];
        throw invalidRange(
          `an array sharing no memory with ${b.name}`,
          a.name,
          a.value,
          'a step writes weights and biases in place, so they must not overlap any other array of the step',
        );
      }
    }
  }
}

export class NysAct {
  readonly #native: NativeBinding;
  readonly #options: ResolvedNysActOptions;
  readonly #seed: bigint;
  readonly #backend: 'cpu' | 'cuda';
  readonly #layers = new Map<string, LayerRecord>();
  #iteration = 0;
  #frozen = false;
  #disposed = false;
  /** Settles (never rejects) when the asynchronous step in flight does; null when none is. */
  #inFlight: Promise<void> | null = null;
  /** Layers whose last activations were non-finite (only with nonFinite 'skip'). */
  readonly #nonFiniteActivations = new Map<string, string>();

  /**
   * @param options hyperparameters; every field optional (SPEC §1 reference defaults).
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad or unknown option.
   * @throws {NysActError} `ERR_NYSACT_BACKEND_UNAVAILABLE` when `backend: 'cuda'` cannot be used;
   *   `ERR_NYSACT_LOAD` when the native addon does not load.
   */
  constructor(options?: NysActOptions) {
    const { seedBig, ...resolved } = resolveOptions(options);
    this.#options = resolved;
    this.#seed = seedBig;
    this.#native = loadNative();
    this.#backend = chooseBackend(this.#native, resolved.backend);
  }

  // -------------------------------------------------------------------------------------------
  // Configuration and schedule

  /**
   * The backend in use: `'cpu'` or `'cuda'` (what `backend: 'auto'` resolved to: CUDA when its library
   * loads and a device is present, else the CPU).
   */
  get backend(): 'cpu' | 'cuda' {
    return this.#backend;
  }

  /** A copy of the resolved options, with the current values of the mutable hyperparameters. */
  get options(): ResolvedNysActOptions {
    return { ...this.#options };
  }

  /** The step counter t of the next step (starts at 0; skipped steps do not count). */
  get iteration(): number {
    return this.#iteration;
  }

  /** True when the next step is a statistics step (t % tcov === 0): call `observe` for every layer. */
  get needsActivations(): boolean {
    return this.#iteration % this.#options.tcov === 0;
  }

  /** True when the next step rebuilds the preconditioners (t % tinv === 0). */
  get isInverseStep(): boolean {
    return this.#iteration % this.#options.tinv === 0;
  }

  /** Registered layer and parameter names, in registration order. */
  get layers(): string[] {
    return [...this.#layers.keys()];
  }

  /** Whether {@link dispose} was called. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /** Learning rate (validated; change it between steps for schedules). */
  get lr(): number {
    return this.#options.lr;
  }

  set lr(value: number) {
    this.#checkUsable('the lr setter');
    this.#options.lr = validateLr(value);
  }

  /** Momentum μ in [0, 1). */
  get momentum(): number {
    return this.#options.momentum;
  }

  set momentum(value: number) {
    this.#checkUsable('the momentum setter');
    this.#options.momentum = validateMomentum(value);
  }

  /** Weight decay >= 0. */
  get weightDecay(): number {
    return this.#options.weightDecay;
  }

  set weightDecay(value: number) {
    this.#checkUsable('the weightDecay setter');
    this.#options.weightDecay = validateWeightDecay(value);
  }

  /** Damping ρ > 0 (used by the next preconditioner rebuild). */
  get damping(): number {
    return this.#options.damping;
  }

  set damping(value: number) {
    this.#checkUsable('the damping setter');
    this.#options.damping = validateDamping(value);
  }

  /** Bytes of native state held by all layers. */
  get stateBytes(): number {
    this.#checkUsable('the stateBytes getter');
    let total = 0;
    for (const rec of this.#layers.values()) total += callNative(() => rec.native.stateBytes());
    return total;
  }

  // -------------------------------------------------------------------------------------------
  // Layers

  /**
   * Registers a dense layer. Weight `[inFeatures, outFeatures]` (`layout: 'inOut'`, tfjs) or
   * `[outFeatures, inFeatures]` (`'outIn'`, PyTorch); bias `[outFeatures]`.
   *
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for bad options or a duplicate name.
   * @throws {NysActError} `ERR_NYSACT_INVALID_ARGUMENT` after the first step.
   */
  addDense(name: string, options: DenseOptions): void {
    this.#checkCanAdd(name, 'addDense()');
    this.#addLayer(name, resolveDenseOptions(options, this.#options));
  }

  /**
   * Registers a 2-D convolution (tfjs conventions: input NHWC, kernel `[kh, kw, inC, outC]`,
   * TensorFlow 'valid' / 'same' padding). fan-in = kh·kw·inChannels, fan-out = outChannels.
   *
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for bad options or a duplicate name.
   * @throws {NysActError} `ERR_NYSACT_INVALID_ARGUMENT` after the first step.
   */
  addConv2d(name: string, options: Conv2dOptions): void {
    this.#checkCanAdd(name, 'addConv2d()');
    this.#addLayer(name, resolveConv2dOptions(options, this.#options));
  }

  /**
   * Registers a parameter updated with plain momentum SGD and weight decay (SPEC §1 step 4):
   * norms, embeddings, anything without a preconditioner.
   *
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for bad options or a duplicate name.
   * @throws {NysActError} `ERR_NYSACT_INVALID_ARGUMENT` after the first step.
   */
  addParam(name: string, options: ParamOptions): void {
    this.#checkCanAdd(name, 'addParam()');
    this.#addLayer(name, resolveParamOptions(options));
  }

  #checkCanAdd(name: unknown, method: string): asserts name is string {
    this.#checkUsable(method);
    name = validateLayerName(name);
    if (this.#layers.has(name as string)) {
      throw invalidRange('a name that is not registered yet', 'name', name, `a layer named ${JSON.stringify(name)} already exists`);
    }
    if (this.#frozen) {
      throw invalidCall(
        `Layers can only be added before the first step (or setState); cannot add ${JSON.stringify(name)} at iteration ${this.#iteration}`,
      );
    }
  }

  #addLayer(name: string, spec: LayerSpec): void {
    const nativeSpec = nativeLayerSpec(name, spec, this.#seed);
    const native = callNative(() => new this.#native.Layer(nativeSpec, this.#backend), `creating layer ${JSON.stringify(name)}`);
    this.#layers.set(name, { name, spec: deepFreeze(spec), geometry: layerGeometry(spec), nativeSpec, native });
  }

  #layer(name: unknown, argName = 'name'): LayerRecord {
    const rec = this.#layers.get(validateLayerName(name, argName));
    if (rec === undefined) {
      throw invalidRange(`a registered layer name (one of ${this.layers.join(', ') || 'none yet'})`, argName, name);
    }
    return rec;
  }

  #preconditioned(name: unknown, argName = 'name'): LayerRecord {
    const rec = this.#layer(name, argName);
    if (!rec.geometry.preconditioned) {
      throw invalidRange('the name of a dense or conv2d layer', argName, name, `${JSON.stringify(name)} is a plain parameter (addParam) and has no statistics`);
    }
    return rec;
  }

  // -------------------------------------------------------------------------------------------
  // Statistics

  /**
   * Feeds one layer's input activations on a statistics step (see {@link needsActivations}):
   * computes C = Xᵀ(X S)/n for the layer (SPEC §1 step 1) into a pending slot that the next
   * {@link step} commits. Observing a layer again in the same step replaces its pending statistics.
   *
   * `activations` is a `Float32Array` (any, or one from {@link hostBuffer}: page-locked on CUDA, so
   * the copy to the device is asynchronous) or a {@link DeviceTensor} of this optimizer's backend
   * (on CUDA read in place on the device: no host↔device copy). Either is read during the call
   * only; the values, the statistics and the errors are the same for both.
   *
   * @param name a dense or conv2d layer
   * @param activations the layer input, row-major: dense `[n, inFeatures]` or
   *   `[batch, tokens, inFeatures]`; conv NHWC `[batch, height, width, inChannels]`; of exactly
   *   the product of `shape` elements
   * @param shape the shape of `activations`
   * @param options an explicit sketch (see {@link ObserveOptions})
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for bad arguments (including a
   *   tensor of another backend, or of the wrong length).
   * @throws {NysActError} `ERR_NYSACT_INVALID_ARGUMENT` when not on a statistics step;
   *   `ERR_NYSACT_DISPOSED` for a disposed tensor; `ERR_NYSACT_BUSY` for a tensor in use by an
   *   asynchronous step in flight; `ERR_NYSACT_NON_FINITE` for NaN/Infinity in `activations` with
   *   `nonFinite: 'throw'` (with `'skip'` the next step is skipped instead).
   */
  observe(name: string, activations: StepArray, shape: readonly number[], options?: ObserveOptions): void {
    this.#checkUsable('observe()');
    const rec = this.#preconditioned(name);
    if (!this.needsActivations) {
      throw invalidCall(
        `Activations are only taken on statistics steps (iteration % tcov === 0, see needsActivations); ` +
          `iteration ${this.#iteration} is not one (tcov ${this.#options.tcov}), so observe(${JSON.stringify(name)}) is not allowed now`,
      );
    }
    const input = this.#activations(activations);
    const dims = this.#checkShape(rec, shape);
    const count = dims.reduce((a, b) => a * b, 1);
    if (input.length !== count) {
      const kind = activations instanceof DeviceTensor ? 'DeviceTensor' : 'Float32Array';
      throw invalidRange(`a ${kind} of length ${count} (the product of shape [${dims.join(', ')}])`, 'activations', activations);
    }
    const sketch = this.#checkSketch(rec, options);
    const data = input.data;

    // The native call scans for NaN/Infinity before touching anything: false leaves the layer's
    // pending statistics as they were.
    const ok = callNative(
      () =>
        rec.spec.kind === 'dense'
          ? rec.native.sketchCovarianceDense(data, count / rec.geometry.p0, sketch)
          : rec.native.sketchCovarianceConv(data, dims[0], dims[1], dims[2], sketch),
      `observe(${JSON.stringify(name)})`,
    );
    if (!ok) {
      this.#onNonFiniteActivations(rec);
      return;
    }
    this.#nonFiniteActivations.delete(rec.name);
  }

  // The activations of observe(): a Float32Array, or a usable DeviceTensor of this optimizer's
  // backend (its length is checked against the shape by the caller).
  #activations(value: unknown): { data: NativeOperand; length: number } {
    if (value instanceof DeviceTensor) {
      const state = tensorInternals(value);
      if (state.native.isDisposed()) {
        throw new NysActError(ErrorCodes.DISPOSED, 'Expected a live DeviceTensor for activations but received a disposed one');
      }
      if (value.backend !== this.#backend) {
        throw invalidRange(`a DeviceTensor of this optimizer's backend ('${this.#backend}')`, 'activations', value);
      }
      if (state.busy > 0) {
        throw new NysActError(ErrorCodes.BUSY, 'activations is a DeviceTensor in use by an asynchronous step in flight; await it first');
      }
      return { data: state.native, length: value.length };
    }
    if (!(value instanceof Float32Array)) throw invalidType('a Float32Array or DeviceTensor', 'activations', value);
    return { data: value, length: value.length };
  }

  #onNonFiniteActivations(rec: LayerRecord): void {
    const reason = `non-finite activations for layer ${JSON.stringify(rec.name)}`;
    if (this.#options.nonFinite === 'throw') {
      throw new NysActError(
        ErrorCodes.NON_FINITE,
        `Expected finite values for activations of layer ${JSON.stringify(rec.name)} but received NaN or Infinity; ` +
          `nothing was stored (use nonFinite: 'skip' to skip such steps)`,
      );
    }
    this.#nonFiniteActivations.set(rec.name, reason);
  }

  #checkShape(rec: LayerRecord, shape: unknown): number[] {
    if (!Array.isArray(shape)) throw invalidType('an array of positive integers', 'shape', shape);
    const dims = shape.map((d: unknown, i: number) => {
      if (typeof d !== 'number') throw invalidType('a positive integer', `shape[${i}]`, d);
      if (!Number.isSafeInteger(d) || d < 1) throw invalidRange('a positive integer', `shape[${i}]`, d);
      return d;
    });
    const text = `[${dims.join(', ')}]`;
    const spec = rec.spec;
    if (spec.kind === 'dense') {
      if (dims.length !== 2 && dims.length !== 3) {
        throw invalidRange('a shape [rows, inFeatures] or [batch, tokens, inFeatures]', 'shape', shape, `shape is ${text}`);
      }
      const last = dims.length - 1;
      if (dims[last] !== spec.inFeatures) {
        throw invalidRange(`inFeatures (${spec.inFeatures}) of layer ${JSON.stringify(rec.name)}`, `shape[${last}]`, dims[last]);
      }
      return dims;
    }
    if (spec.kind === 'conv2d') {
      if (dims.length !== 4) {
        throw invalidRange('a shape [batch, height, width, inChannels] (NHWC)', 'shape', shape, `shape is ${text}`);
      }
      if (dims[3] !== spec.inChannels) {
        throw invalidRange(`inChannels (${spec.inChannels}) of layer ${JSON.stringify(rec.name)}`, 'shape[3]', dims[3]);
      }
      const geometry = callNative(() => this.#native.convGeometry(rec.nativeSpec, dims[1], dims[2]), 'convGeometry');
      if (!(geometry.outH >= 1 && geometry.outW >= 1)) {
        throw invalidRange(
          'a height and width giving an output of at least 1x1',
          'shape',
          shape,
          `shape ${text} gives ${geometry.outH}x${geometry.outW} with kernelSize [${spec.kernelSize.join(', ')}], ` +
            `strides [${spec.strides.join(', ')}], dilation [${spec.dilation.join(', ')}], padding '${spec.padding}'`,
        );
      }
      return dims;
    }
    /* c8 ignore next */
    throw invalidCall('unreachable: plain parameters take no activations');
  }

  #checkSketch(rec: LayerRecord, options: unknown): Float32Array | Int32Array | null {
    if (options === undefined) return null;
    assertObject(options, 'options');
    assertKnownKeys(options, ['sketch'], 'options');
    const sketch = options.sketch;
    if (sketch === undefined) return null;
    const { p, r, fullCovariance } = rec.geometry;
    if (fullCovariance) {
      throw invalidType(
        'no sketch',
        'options.sketch',
        sketch,
        `layer ${JSON.stringify(rec.name)} keeps the full covariance (r == p == ${p})`,
      );
    }
    const spec = rec.spec as Exclude<LayerSpec, { kind: 'param' }>;
    if (spec.sketch === 'gaussian') {
      const s = assertFloat32Array(sketch, 'options.sketch', p * r);
      if (!callNative(() => this.#native.allFinite(s))) {
        throw invalidRange('finite values', 'options.sketch', sketch, 'it contains NaN or Infinity');
      }
      return s;
    }
    if (!(sketch instanceof Int32Array)) {
      throw invalidType(`an Int32Array of ${r} column indices (layer ${JSON.stringify(rec.name)} uses subcolumns)`, 'options.sketch', sketch);
    }
    if (sketch.length !== r) throw invalidRange(`an Int32Array of length ${r}`, 'options.sketch', sketch);
    const seen = new Set<number>();
    for (let j = 0; j < r; j++) {
      const v = sketch[j];
      if (v < 0 || v >= p) throw invalidRange(`a column index in [0, ${p})`, `options.sketch[${j}]`, v);
      if (seen.has(v)) throw invalidRange('distinct column indices', `options.sketch[${j}]`, v, `${v} appears twice`);
      seen.add(v);
    }
    return sketch;
  }

  /**
   * The pending covariance C of a layer (p × r row-major; full covariance: p × p), after
   * {@link observe} and before {@link step}. Data parallel: average C across workers here, then
   * write it back with {@link setPendingCovariance} (all workers draw the same sketch).
   *
   * @throws {NysActError} `ERR_NYSACT_INVALID_ARGUMENT` when the layer has no pending statistics.
   */
  pendingCovariance(name: string): Float32Array {
    this.#checkUsable('pendingCovariance()');
    const rec = this.#checkPending(name);
    return callNative(() => rec.native.readPendingCovariance(), `pendingCovariance(${JSON.stringify(name)})`);
  }

  /**
   * Replaces the pending covariance of a layer, e.g. with the average across data-parallel
   * workers (average C across workers here).
   *
   * @param c p·r finite values (full covariance: p·p)
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad array.
   * @throws {NysActError} `ERR_NYSACT_NON_FINITE` for NaN/Infinity; `ERR_NYSACT_INVALID_ARGUMENT`
   *   when the layer has no pending statistics.
   */
  setPendingCovariance(name: string, c: Float32Array): void {
    this.#checkUsable('setPendingCovariance()');
    const rec = this.#checkPending(name);
    const data = assertFloat32Array(c, 'c', rec.geometry.p * rec.geometry.r);
    if (!callNative(() => this.#native.allFinite(data))) {
      throw new NysActError(ErrorCodes.NON_FINITE, `Expected finite values for c but received NaN or Infinity`);
    }
    callNative(() => rec.native.writePendingCovariance(data), `setPendingCovariance(${JSON.stringify(name)})`);
  }

  #checkPending(name: unknown): LayerRecord {
    const rec = this.#preconditioned(name);
    if (!callNative(() => rec.native.hasPendingStatistics())) {
      throw invalidCall(
        `Layer ${JSON.stringify(rec.name)} has no pending statistics: call observe() on a statistics step (needsActivations) first`,
      );
    }
    return rec;
  }

  // -------------------------------------------------------------------------------------------
  // Step

  /**
   * One optimizer step (SPEC §1): on statistics steps commits the observed statistics, on inverse
   * steps rebuilds the preconditioners, then applies the fused preconditioned momentum update to
   * every weight (and bias) in place. Every argument is validated before any state changes: a
   * call that throws changes nothing. The native work of the whole step is one call.
   *
   * @param grads one entry per registered layer and parameter, keyed by name; each array may be a
   *   `Float32Array` (e.g. from {@link hostBuffer}) or a {@link DeviceTensor} of this optimizer's backend
   * @param options `missing: 'skip'` leaves layers absent from `grads` untouched this step (no
   *   statistics, factors, weight decay or momentum; their pending statistics are dropped), as
   *   PyTorch skips parameters whose `.grad` is None. Default `'throw'`.
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a missing (with
   *   `missing: 'throw'`), unknown or malformed entry, a tensor of the wrong length or backend, or
   *   a weight or bias sharing memory with any other array of the step (gradients may be shared).
   * @throws {NysActError} `ERR_NYSACT_MISSING_ACTIVATIONS` on a statistics step without
   *   activations for a layer; `ERR_NYSACT_NON_FINITE` for NaN/Infinity in a gradient with
   *   `nonFinite: 'throw'`; `ERR_NYSACT_DISPOSED` for a disposed tensor; `ERR_NYSACT_BUSY` while
   *   an asynchronous step is in flight (or uses a tensor passed here); `ERR_NYSACT_NATIVE` if the
   *   native update itself fails. A step short of memory (a GPU out of device memory) fails before
   *   it changes anything: all the memory a step uses is allocated first. Only a failure of the
   *   device itself part-way through the step (a CUDA execution error, after which the GPU context
   *   is unusable) may leave the layers before the failing one updated.
   */
  step(grads: Record<string, LayerUpdate<StepArray>>, options?: StepOptions): StepResult {
    this.#checkUsable('step()');
    const prepared = this.#prepareStep(grads, options);
    if (prepared.skipped !== null) return prepared.skipped;
    let reports: NativeStepPlanResult;
    try {
      reports = this.#native.stepPlan(prepared.plan);
    } catch (error) {
      throw this.#stepError(error, prepared);
    }
    return this.#finishStep(prepared, reports);
  }

  /**
   * {@link step} with the native work of the whole step (statistics, factors, fused updates of
   * every layer) on a libuv pool thread: the JS thread is free meanwhile. The result is the same,
   * bit for bit, as `step()` would give. On CUDA the pool thread enqueues the step and waits for
   * the stream.
   *
   * Validation is the same as `step()`'s and happens before any state changes: a rejected promise
   * means nothing changed, except for an `ERR_NYSACT_NATIVE` from a device failing part-way (as
   * with `step()`; a step short of memory changes nothing). Every error is a rejection, never a
   * synchronous throw.
   *
   * Until the promise settles the optimizer is busy: every method that changes or reads its state
   * (`step`, `stepAsync`, `observe`, `getState`, `setState`, `addDense`…, `layerState`,
   * `pendingCovariance`, the hyperparameter setters, `dispose`, …) throws `ERR_NYSACT_BUSY`, and so
   * do the methods of the {@link DeviceTensor}s passed. The arrays passed are kept alive until then
   * and are read and written by the pool thread: **JS must not write, transfer or detach them
   * until the promise settles.** `iteration` advances when it resolves.
   *
   * @returns a promise of the {@link StepResult}
   */
  async stepAsync(grads: Record<string, LayerUpdate<StepArray>>, options?: StepOptions): Promise<StepResult> {
    this.#checkUsable('stepAsync()');
    const prepared = this.#prepareStep(grads, options);
    if (prepared.skipped !== null) return prepared.skipped;
    for (const t of prepared.tensors) t.busy += 1;
    let settle!: () => void;
    this.#inFlight = new Promise<void>((resolve) => (settle = resolve));
    try {
      let reports: NativeStepPlanResult;
      try {
        reports = await this.#native.stepPlanAsync(prepared.plan);
      } catch (error) {
        throw this.#stepError(error, prepared);
      }
      return this.#finishStep(prepared, reports);
    } finally {
      for (const t of prepared.tensors) t.busy -= 1;
      this.#inFlight = null;
      settle();
    }
  }

  /**
   * Resolves when no asynchronous step is in flight: at once when none is, else when the one in
   * flight settles (it never rejects: the step's own promise carries its error).
   */
  synchronize(): Promise<void> {
    return this.#inFlight ?? Promise.resolve();
  }

  /** Whether an asynchronous step ({@link stepAsync}) is in flight. */
  get busy(): boolean {
    return this.#inFlight !== null;
  }

  // Validates a step completely (nothing changes before this returns) and builds its native plan;
  // `skipped` is the result when the step is skipped for non-finite values (pending discarded).
  #prepareStep(grads: Record<string, LayerUpdate<StepArray>>, options: StepOptions | undefined): PreparedStep {
    assertObject(grads, 'grads');
    let missing: 'throw' | 'skip' = 'throw';
    if (options !== undefined) {
      assertObject(options, 'options');
      assertKnownKeys(options, ['missing'], 'options', 'option');
      if (options.missing !== undefined) {
        if (typeof options.missing !== 'string') throw invalidType("'throw' or 'skip'", 'options.missing', options.missing);
        if (options.missing !== 'throw' && options.missing !== 'skip') throw invalidRange("'throw' or 'skip'", 'options.missing', options.missing);
        missing = options.missing;
      }
    }
    for (const key of Object.keys(grads)) {
      if (!this.#layers.has(key)) {
        throw invalidType(`a registered layer name (one of ${this.layers.join(', ') || 'none yet'})`, `grads.${key}`, grads[key], `unknown layer ${JSON.stringify(key)}`);
      }
    }
    const updates: { rec: LayerRecord; weight: NativeOperand; grad: NativeOperand; bias: NativeOperand | null; biasGrad: NativeOperand | null }[] = [];
    const skippedLayers: LayerRecord[] = [];
    const tensors = new Set<TensorInternals>();
    for (const rec of this.#layers.values()) {
      const where = `grads.${rec.name}`;
      const entry = grads[rec.name];
      if (entry === undefined && missing === 'skip') {
        skippedLayers.push(rec);
        continue;
      }
      if (!isObject(entry)) {
        throw invalidType(`an object { weight, grad${rec.geometry.biasSize ? ', bias, biasGrad' : ''} }`, where, entry);
      }
      assertKnownKeys(entry, ['weight', 'grad', 'bias', 'biasGrad'], where, 'field');
      const { weightSize, biasSize } = rec.geometry;
      const weight = this.#operand(entry.weight, `${where}.weight`, weightSize, tensors);
      const grad = this.#operand(entry.grad, `${where}.grad`, weightSize, tensors);
      let bias: NativeOperand | null = null;
      let biasGrad: NativeOperand | null = null;
      if (biasSize > 0) {
        bias = this.#operand(entry.bias, `${where}.bias`, biasSize, tensors);
        biasGrad = this.#operand(entry.biasGrad, `${where}.biasGrad`, biasSize, tensors);
      } else {
        for (const key of ['bias', 'biasGrad'] as const) {
          if (entry[key] !== undefined) {
            throw invalidType('undefined', `${where}.${key}`, entry[key], `${JSON.stringify(rec.name)} has no bias`);
          }
        }
      }
      updates.push({ rec, weight, grad, bias, biasGrad });
    }
    requireNoWrittenOverlap(
      updates.flatMap((u) => [
        { value: grads[u.rec.name].weight, operand: u.weight, name: `grads.${u.rec.name}.weight`, written: true },
        { value: grads[u.rec.name].bias, operand: u.bias, name: `grads.${u.rec.name}.bias`, written: true },
        { value: grads[u.rec.name].grad, operand: u.grad, name: `grads.${u.rec.name}.grad`, written: false },
        { value: grads[u.rec.name].biasGrad, operand: u.biasGrad, name: `grads.${u.rec.name}.biasGrad`, written: false },
      ]),
    );

    const t = this.#iteration;
    const statistics = t % this.#options.tcov === 0;
    const inverse = t % this.#options.tinv === 0;
    if (statistics) {
      for (const { rec } of updates) {
        if (!rec.geometry.preconditioned || this.#nonFiniteActivations.has(rec.name)) continue;
        if (!callNative(() => rec.native.hasPendingStatistics())) {
          throw new NysActError(
            ErrorCodes.MISSING_ACTIVATIONS,
            `Missing activations for layer ${JSON.stringify(rec.name)} on statistics step ${t}: ` +
              `call observe(${JSON.stringify(rec.name)}, ...) before step() whenever needsActivations is true`,
          );
        }
      }
    }

    let reason: string | null = null;
    for (const { rec } of updates) {
      reason = this.#nonFiniteActivations.get(rec.name) ?? null;
      if (reason !== null) break;
    }
    if (reason === null) {
      for (const u of updates) {
        for (const [key, arr] of [['grad', u.grad], ['biasGrad', u.biasGrad]] as const) {
          if (arr === null || callNative(() => this.#native.allFinite(arr))) continue;
          const field = `grads.${u.rec.name}.${key}`;
          if (this.#options.nonFinite === 'throw') {
            throw new NysActError(
              ErrorCodes.NON_FINITE,
              `Expected finite values for ${field} but received NaN or Infinity; the step was not applied ` +
                `(use nonFinite: 'skip' to skip such steps)`,
            );
          }
          reason = `non-finite gradient in ${field}`;
          break;
        }
        if (reason !== null) break;
      }
    }
    if (reason !== null) {
      this.#discardPending();
      const skipped: StepResult = { iteration: t, skipped: true, reason, statistics: false, inverse: false, fallbacks: [] };
      return { skipped, plan: EMPTY_PLAN, records: [], tensors: [], iteration: t, statistics: false, inverse: false };
    }

    // Validation is complete; from here on native state changes.
    this.#frozen = true;
    for (const rec of skippedLayers) {
      if (rec.geometry.preconditioned) callNative(() => rec.native.discardPendingStatistics());
      this.#nonFiniteActivations.delete(rec.name);
    }
    const o = this.#options;
    const plan: NativeStepPlan = {
      layers: updates.map((u) => u.rec.native),
      weights: updates.map((u) => u.weight),
      biases: updates.map((u) => u.bias),
      grads: updates.map((u) => u.grad),
      biasGrads: updates.map((u) => u.biasGrad),
      statistics,
      inverse,
      statDecay: o.statDecay,
      damping: o.damping,
      variant: o.nystrom === 'reference' ? 0 : 1,
      scalars: new Float64Array([o.lr, o.momentum, o.weightDecay, o.nesterov ? 1 : 0, o.weightDecayMode === 'decoupled' ? 1 : 0]),
    };
    return { skipped: null, plan, records: updates.map((u) => u.rec), tensors: [...tensors], iteration: t, statistics, inverse };
  }

  // A step operand: a Float32Array, or a usable DeviceTensor of this optimizer's backend.
  #operand(value: unknown, name: string, length: number, tensors: Set<TensorInternals>): NativeOperand {
    const expected = `a Float32Array or DeviceTensor of length ${length}`;
    if (value instanceof Float32Array) {
      if (value.length !== length) throw invalidRange(expected, name, value);
      return value;
    }
    if (!(value instanceof DeviceTensor)) throw invalidType('a Float32Array or DeviceTensor', name, value);
    const state = tensorInternals(value);
    if (state.native.isDisposed()) {
      throw new NysActError(ErrorCodes.DISPOSED, `Expected a live DeviceTensor for ${name} but received a disposed one`);
    }
    if (value.length !== length) throw invalidRange(expected, name, value);
    if (value.backend !== this.#backend) {
      throw invalidRange(`a DeviceTensor of this optimizer's backend ('${this.#backend}')`, name, value);
    }
    if (state.busy > 0) {
      throw new NysActError(ErrorCodes.BUSY, `${name} is a DeviceTensor in use by an asynchronous step in flight; await it first`);
    }
    tensors.add(state);
    return state.native;
  }

  #stepError(error: unknown, prepared: PreparedStep): Error {
    const index = (error as { layerIndex?: unknown } | null)?.layerIndex;
    const rec = typeof index === 'number' && index >= 0 ? prepared.records[index] : undefined;
    return fromNative(error, rec ? `step ${prepared.iteration}, layer ${JSON.stringify(rec.name)}` : `step ${prepared.iteration}`);
  }

  #finishStep(prepared: PreparedStep, reports: NativeStepPlanResult): StepResult {
    const fallbacks: FallbackInfo[] = [];
    reports.forEach((report, i) => {
      if (report === null || report.status === 0) return;
      fallbacks.push({
        layer: prepared.records[i].name,
        status: FALLBACK_STATUS[report.status] ?? 'identity',
        shift: report.shift,
        attempts: report.attempts,
        detail: report.detail,
      });
    });
    this.#iteration = prepared.iteration + 1;
    return { iteration: prepared.iteration, skipped: false, reason: null, statistics: prepared.statistics, inverse: prepared.inverse, fallbacks };
  }

  #discardPending(): void {
    for (const rec of this.#layers.values()) {
      if (rec.geometry.preconditioned) callNative(() => rec.native.discardPendingStatistics());
    }
    this.#nonFiniteActivations.clear();
  }

  // -------------------------------------------------------------------------------------------
  // State

  /**
   * A copy of one layer's native state (EMA, sketch, factors, momentum, counters) with its sizes.
   */
  layerState(name: string): LayerStateInfo {
    this.#checkUsable('layerState()');
    const rec = this.#layer(name);
    const state = callNative(() => rec.native.exportState(), `layerState(${JSON.stringify(name)})`);
    return { ...state, p: rec.geometry.p, r: rec.geometry.r, fullCovariance: rec.geometry.fullCovariance };
  }

  /** Everything needed to resume bit-exactly (copies). Pending statistics are not included. */
  getState(): NysActState {
    this.#checkUsable('getState()');
    const layers: NysActState['layers'] = {};
    for (const rec of this.#layers.values()) {
      const state = callNative(() => rec.native.exportState(), `getState: layer ${JSON.stringify(rec.name)}`);
      layers[rec.name] = { spec: structuredClone(rec.spec) as LayerSpec, state };
    }
    return { format: STATE_FORMAT, version: STATE_VERSION, iteration: this.#iteration, options: this.options, layers };
  }

  /**
   * Restores a state from {@link getState} (or {@link NysAct.deserializeState}). The state must
   * describe exactly this optimizer's layers with the same specs and the same seed. Restores the
   * iteration, every layer's native state and the mutable hyperparameters (lr, momentum,
   * weightDecay, damping); other options stay this optimizer's. Pending statistics are dropped.
   * Everything is validated first; on failure nothing changes.
   *
   * @throws {NysActError} `ERR_NYSACT_STATE` naming the offending field.
   */
  setState(state: NysActState): void {
    this.#checkUsable('setState()');
    const checked = this.#validateState(state);
    const backups = new Map<string, LayerState>();
    for (const rec of this.#layers.values()) {
      backups.set(rec.name, callNative(() => rec.native.exportState(), `setState: backing up ${JSON.stringify(rec.name)}`));
    }
    const touched: LayerRecord[] = [];
    for (const rec of this.#layers.values()) {
      touched.push(rec);
      try {
        rec.native.importState(checked.layers.get(rec.name) as LayerState);
      } catch (error) {
        for (const done of touched) {
          try {
            done.native.importState(backups.get(done.name) as LayerState);
          } catch {
            // best effort: the backup came from this very layer
          }
        }
        const code = (error as { code?: unknown }).code;
        if (code === ErrorCodes.STATE || code === ErrorCodes.INVALID_ARGUMENT) {
          throw new NysActError(
            ErrorCodes.STATE,
            `Invalid state.layers.${rec.name}.state: ${(error as Error).message}`,
            { cause: error },
          );
        }
        throw fromNative(error, `setState: layer ${JSON.stringify(rec.name)}`);
      }
    }
    this.#discardPending();
    this.#iteration = checked.iteration;
    this.#options.lr = checked.options.lr;
    this.#options.momentum = checked.options.momentum;
    this.#options.weightDecay = checked.options.weightDecay;
    this.#options.damping = checked.options.damping;
    this.#frozen = true;
  }

  #validateState(state: unknown): { iteration: number; options: ResolvedNysActOptions; layers: Map<string, LayerState> } {
    if (!isObject(state)) throw stateError('an object', 'state', state);
    if (state.format !== STATE_FORMAT) throw stateError(`'${STATE_FORMAT}'`, 'state.format', state.format);
    if (state.version !== STATE_VERSION) throw stateError(String(STATE_VERSION), 'state.version', state.version);
    const iteration = state.iteration;
    if (typeof iteration !== 'number' || !Number.isSafeInteger(iteration) || iteration < 0) {
      throw stateError('a non-negative safe integer', 'state.iteration', iteration);
    }
    const rawOptions = state.options;
    if (!isObject(rawOptions)) throw stateError('an object', 'state.options', rawOptions);
    for (const key of OPTION_KEYS) {
      if (rawOptions[key] === undefined) throw stateError('a value', `state.options.${key}`, undefined);
    }
    let options: ReturnType<typeof resolveOptions>;
    try {
      options = resolveOptions(rawOptions, 'state.options');
    } catch (error) {
      throw new NysActError(ErrorCodes.STATE, (error as Error).message, { cause: error });
    }
    if (options.seedBig !== this.#seed) {
      throw stateError(`${this.#options.seed} (this optimizer's seed; the sketches depend on it)`, 'state.options.seed', rawOptions.seed);
    }
    const rawLayers = state.layers;
    if (!isObject(rawLayers)) throw stateError('an object', 'state.layers', rawLayers);
    for (const key of Object.keys(rawLayers)) {
      if (!this.#layers.has(key)) {
        throw stateError(`only layers of this optimizer (${this.layers.join(', ') || 'none'})`, `state.layers.${key}`, rawLayers[key]);
      }
    }
    const layers = new Map<string, LayerState>();
    for (const rec of this.#layers.values()) {
      const where = `state.layers.${rec.name}`;
      const entry = rawLayers[rec.name];
      if (!isObject(entry)) throw stateError('an object { spec, state }', where, entry);
      if (!isObject(entry.spec)) throw stateError('an object', `${where}.spec`, entry.spec);
      const spec = entry.spec;
      for (const key of new Set([...Object.keys(rec.spec), ...Object.keys(spec)])) {
        const expected = (rec.spec as Record<string, unknown>)[key];
        if (!sameValue(spec[key], expected)) {
          throw stateError(`${JSON.stringify(expected)} (this optimizer's layer spec)`, `${where}.spec.${key}`, spec[key]);
        }
      }
      layers.set(rec.name, validateLayerState(entry.state, `${where}.state`, rec.spec, rec.geometry));
    }
    const { seedBig: _unused, ...resolved } = options;
    void _unused;
    return { iteration, options: resolved, layers };
  }

  /** The state in the lossless binary format of `lib/state.ts` (magic `NYSACT01`). */
  serializeState(): Uint8Array {
    return encodeState(this.getState());
  }

  /**
   * Restores this optimizer from bytes written by {@link serializeState} (parse + {@link setState}).
   *
   * @throws {NysActError} `ERR_NYSACT_STATE` for malformed bytes or a state that does not fit.
   */
  deserializeState(bytes: Uint8Array): void {
    this.#checkUsable('deserializeState()');
    this.setState(decodeState(bytes));
  }

  /**
   * Parses bytes written by {@link NysAct.serializeState} into a state object (no optimizer needed).
   *
   * @throws {NysActError} `ERR_NYSACT_STATE` for malformed bytes.
   */
  static deserializeState(bytes: Uint8Array): NysActState {
    return decodeState(bytes);
  }

  // -------------------------------------------------------------------------------------------
  // Memory

  /**
   * A zeroed `Float32Array` of `length` elements in native host memory of this optimizer's backend
   * (see {@link hostBuffer}: page-locked on CUDA, so the step's copies are asynchronous; 64-byte
   * aligned on the CPU), freed by the garbage collector.
   *
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad length.
   * @throws {NysActError} `ERR_NYSACT_UNSUPPORTED` where the runtime forbids external ArrayBuffers.
   */
  hostBuffer(length: number): Float32Array {
    this.#checkDisposed();
    return hostBuffer(length, { backend: this.#backend });
  }

  /**
   * A new {@link DeviceTensor} of `length` elements on this optimizer's backend (CUDA: device
   * memory; CPU: aligned host memory).
   *
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad length.
   */
  tensor(length: number): DeviceTensor {
    this.#checkDisposed();
    return new DeviceTensor(length, { backend: this.#backend });
  }

  // -------------------------------------------------------------------------------------------
  // Lifetime

  /**
   * Frees all native layers. Idempotent; any other call afterwards throws `ERR_NYSACT_DISPOSED`.
   *
   * @throws {NysActError} `ERR_NYSACT_BUSY` while an asynchronous step is in flight (nothing is
   *   freed then: await the step or {@link synchronize} first).
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#checkUsable('dispose()');
    this.#disposed = true;
    for (const rec of this.#layers.values()) {
      try {
        rec.native.dispose();
      } catch {
        // dispose is idempotent natively; nothing useful to report here
      }
    }
    this.#layers.clear();
    this.#nonFiniteActivations.clear();
  }

  #checkDisposed(): void {
    if (this.#disposed) {
      throw new NysActError(ErrorCodes.DISPOSED, 'This NysAct optimizer has been disposed');
    }
  }

  /** Not disposed, and no asynchronous step in flight (`method` names the caller in the error). */
  #checkUsable(method: string): void {
    this.#checkDisposed();
    if (this.#inFlight !== null) {
      throw new NysActError(
        ErrorCodes.BUSY,
        `Cannot call ${method} while an asynchronous step (stepAsync at iteration ${this.#iteration}) is in flight; ` +
          `await its promise or synchronize() first`,
      );
    }
  }
}
