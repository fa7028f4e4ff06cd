/**
 * Defaults and validation of every option (STYLE.md point 2: TypeScript owns the defaults; the
 * native side receives one flat, complete spec).
 */
import { invalidRange, invalidType } from './errors.js';
import type { NativeLayerSpec } from './native.js';
import {
  MAX_INT32,
  assertBoolean,
  assertInteger,
  assertKnownKeys,
  assertName,
  assertNumber,
  assertObject,
  assertOneOf,
  assertPair,
  assertPositiveInteger,
} from './validate.js';

/** How a statistics step sketches the covariance (SPEC §1 step 1). */
export type SketchKind = 'gaussian' | 'subcolumns';
/** Compute backend request; `'auto'` picks CUDA when available, else the CPU. */
export type BackendRequest = 'cpu' | 'cuda' | 'auto';
/** What to do with NaN/Infinity in activations or gradients. */
export type NonFiniteMode = 'throw' | 'skip';
/** Nyström variant: `'reference'` solves B L = Y (the paper's code), `'textbook'` uses B = Y L⁻ᵀ. */
export type NystromVariant = 'reference' | 'textbook';
/** `'coupled'`: d = V + wd·θ (SPEC §1 step 3); `'decoupled'`: θ ← θ − lr·wd·θ beside the update. */
export type WeightDecayMode = 'coupled' | 'decoupled';

/** Options of {@link NysAct}. Every field is optional; defaults are SPEC §1's reference values. */
export interface NysActOptions {
  /** Learning rate, >= 0. Default 0.1. */
  lr?: number;
  /** Heavy-ball momentum μ in [0, 1). Default 0.9. */
  momentum?: number;
  /** EMA decay β of the covariance statistics, in [0, 1). Default 0.95. */
  statDecay?: number;
  /** Damping ρ > 0. Default 1.0. */
  damping?: number;
  /** Weight decay, >= 0. Default 5e-4. */
  weightDecay?: number;
  /** Statistics every `tcov` steps (positive integer). Default 5. */
  tcov?: number;
  /** Preconditioner rebuilt every `tinv` steps (positive integer). Default 50. */
  tinv?: number;
  /** Sketch rank; a layer uses r = min(rank, p). Default 10. */
  rank?: number;
  /** Sketch kind. Default `'gaussian'`. */
  sketch?: SketchKind;
  /** Philox seed: a non-negative safe integer or a bigint below 2^64. Default 0. */
  seed?: number | bigint;
  /** Nesterov momentum. Default false. */
  nesterov?: boolean;
  /** Compute backend. Default `'auto'`. */
  backend?: BackendRequest;
  /** Non-finite activations or gradients: throw, or skip the step. Default `'throw'`. */
  nonFinite?: NonFiniteMode;
  /** Nyström variant. Default `'reference'`. */
  nystrom?: NystromVariant;
  /** Weight decay mode. Default `'coupled'`. */
  weightDecayMode?: WeightDecayMode;
}

/** {@link NysActOptions} with every default filled in. */
export interface ResolvedNysActOptions {
  /** See {@link NysActOptions.lr}. */
  lr: number;
  /** See {@link NysActOptions.momentum}. */
  momentum: number;
  /** See {@link NysActOptions.statDecay}. */
  statDecay: number;
  /** See {@link NysActOptions.damping}. */
  damping: number;
  /** See {@link NysActOptions.weightDecay}. */
  weightDecay: number;
  /** See {@link NysActOptions.tcov}. */
  tcov: number;
  /** See {@link NysActOptions.tinv}. */
  tinv: number;
  /** See {@link NysActOptions.rank}. */
  rank: number;
  /** See {@link NysActOptions.sketch}. */
  sketch: SketchKind;
  /** See {@link NysActOptions.seed}; a number when it is a safe integer, else a bigint. */
  seed: number | bigint;
  /** See {@link NysActOptions.nesterov}. */
  nesterov: boolean;
  /** See {@link NysActOptions.backend} (the request, not the chosen backend). */
  backend: BackendRequest;
  /** See {@link NysActOptions.nonFinite}. */
  nonFinite: NonFiniteMode;
  /** See {@link NysActOptions.nystrom}. */
  nystrom: NystromVariant;
  /** See {@link NysActOptions.weightDecayMode}. */
  weightDecayMode: WeightDecayMode;
}

/** SPEC §1's reference defaults (the README's CIFAR run). */
export const DEFAULT_OPTIONS: Readonly<ResolvedNysActOptions> = Object.freeze({
  lr: 0.1,
  momentum: 0.9,
  statDecay: 0.95,
  damping: 1.0,
  weightDecay: 5e-4,
  tcov: 5,
  tinv: 50,
  rank: 10,
  sketch: 'gaussian',
  seed: 0,
  nesterov: false,
  backend: 'auto',
  nonFinite: 'throw',
  nystrom: 'reference',
  weightDecayMode: 'coupled',
});

/** The option keys, in documentation order. */
export const OPTION_KEYS: readonly (keyof ResolvedNysActOptions)[] = Object.freeze(
  Object.keys(DEFAULT_OPTIONS) as (keyof ResolvedNysActOptions)[],
);

const SKETCHES: readonly SketchKind[] = ['gaussian', 'subcolumns'];
const BACKENDS: readonly BackendRequest[] = ['cpu', 'cuda', 'auto'];
const NON_FINITE: readonly NonFiniteMode[] = ['throw', 'skip'];
const NYSTROM: readonly NystromVariant[] = ['reference', 'textbook'];
const WD_MODES: readonly WeightDecayMode[] = ['coupled', 'decoupled'];

const TWO_64 = 1n << 64n;

/** Largest sketch rank (native limit). */
export const MAX_RANK = 65536;
/** Largest kernel size, stride and dilation of a conv layer (native limit). */
export const MAX_KERNEL = 4096;
/** Largest channel count of a conv layer (native limit). */
export const MAX_CHANNELS = 1 << 24;

/** Validates a sketch rank (an integer in [1, 65536]). */
export function validateRank(value: unknown, name = 'rank'): number {
  return assertInteger(value, name, 1, MAX_RANK, `a positive integer <= ${MAX_RANK}`);
}

/** Validates a learning rate (finite, >= 0). */
export function validateLr(value: unknown, name = 'lr'): number {
  return assertNumber(value, name, { min: 0, describe: 'a finite number >= 0' });
}

/** Validates a momentum coefficient (in [0, 1)). */
export function validateMomentum(value: unknown, name = 'momentum'): number {
  return assertNumber(value, name, { min: 0, max: 1, maxExclusive: true, describe: 'a number in [0, 1)' });
}

/** Validates an EMA decay (in [0, 1)). */
export function validateStatDecay(value: unknown, name = 'statDecay'): number {
  return assertNumber(value, name, { min: 0, max: 1, maxExclusive: true, describe: 'a number in [0, 1)' });
}

/** Validates a damping (finite, > 0). */
export function validateDamping(value: unknown, name = 'damping'): number {
  return assertNumber(value, name, { min: 0, minExclusive: true, describe: 'a finite number > 0' });
}

/** Validates a weight decay (finite, >= 0). */
export function validateWeightDecay(value: unknown, name = 'weightDecay'): number {
  return assertNumber(value, name, { min: 0, describe: 'a finite number >= 0' });
}

/**
 * Validates a seed and returns it as a bigint: a non-negative safe integer or a bigint in
 * [0, 2^64).
 */
export function validateSeed(value: unknown, name = 'seed'): bigint {
  const describe = 'a non-negative safe integer or a bigint in [0, 2^64)';
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw invalidRange(describe, name, value);
    return BigInt(value);
  }
  if (typeof value === 'bigint') {
    if (value < 0n || value >= TWO_64) throw invalidRange(describe, name, value);
    return value;
  }
  throw invalidType(describe, name, value);
}

/** The public form of a seed: a number when it is a safe integer, else a bigint. */
export function publicSeed(seed: bigint): number | bigint {
  return seed <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seed) : seed;
}

/** Splits a 64-bit seed into the two uint32 halves the native Philox key takes. */
export function splitSeed(seed: bigint): { seedHi: number; seedLo: number } {
  return { seedHi: Number((seed >> 32n) & 0xffffffffn), seedLo: Number(seed & 0xffffffffn) };
}

/**
 * Validates constructor options and fills in the defaults.
 *
 * @param options user options (may be undefined)
 * @param name how the options object is named in error messages
 */
export function resolveOptions(options: unknown, name = 'options'): ResolvedNysActOptions & { seedBig: bigint } {
  if (options === undefined) options = {};
  assertObject(options, name);
  assertKnownKeys(options, OPTION_KEYS, name);
  const pick = <K extends keyof ResolvedNysActOptions>(key: K): unknown =>
    options[key] === undefined ? DEFAULT_OPTIONS[key] : options[key];
  const n = (key: string): string => `${name}.${key}`;
  const seedBig = validateSeed(pick('seed'), n('seed'));
  return {
    lr: validateLr(pick('lr'), n('lr')),
    momentum: validateMomentum(pick('momentum'), n('momentum')),
    statDecay: validateStatDecay(pick('statDecay'), n('statDecay')),
    damping: validateDamping(pick('damping'), n('damping')),
    weightDecay: validateWeightDecay(pick('weightDecay'), n('weightDecay')),
    tcov: assertPositiveInteger(pick('tcov'), n('tcov')),
    tinv: assertPositiveInteger(pick('tinv'), n('tinv')),
    rank: validateRank(pick('rank'), n('rank')),
    sketch: assertOneOf(pick('sketch'), n('sketch'), SKETCHES),
    seed: publicSeed(seedBig),
    seedBig,
    nesterov: assertBoolean(pick('nesterov'), n('nesterov')),
    backend: assertOneOf(pick('backend'), n('backend'), BACKENDS),
    nonFinite: assertOneOf(pick('nonFinite'), n('nonFinite'), NON_FINITE),
    nystrom: assertOneOf(pick('nystrom'), n('nystrom'), NYSTROM),
    weightDecayMode: assertOneOf(pick('weightDecayMode'), n('weightDecayMode'), WD_MODES),
  };
}

// ---------------------------------------------------------------------------------------------
// Layers

/** Weight layout of a dense layer: `'inOut'` is tfjs `[in, out]`, `'outIn'` is PyTorch `[out, in]`. */
export type DenseLayout = 'inOut' | 'outIn';
/** Conv padding with TensorFlow semantics. */
export type Padding = 'valid' | 'same';

/** Per-layer overrides of the optimizer-wide sketch options. */
export interface SketchOverrides {
  /** Sketch rank for this layer (default: the optimizer's `rank`). */
  rank?: number;
  /** Sketch kind for this layer (default: the optimizer's `sketch`). */
  sketch?: SketchKind;
  /**
   * The string whose FNV-1a hash keys this layer's Philox stream (default: the layer name).
   * Two layers with the same key, seed and statistics step draw the same sketch; the tfjs
   * adapter keys layers by their position so that auto-generated layer names do not matter.
   */
  sketchKey?: string;
}

/** Options of {@link NysAct.addDense}. */
export interface DenseOptions extends SketchOverrides {
  /** Input features (fan-in without bias). */
  inFeatures: number;
  /** Output features (fan-out). */
  outFeatures: number;
  /** Whether the layer has a bias (preconditioned jointly with the weight). Default true. */
  bias?: boolean;
  /** Weight layout. Default `'inOut'` (tfjs). */
  layout?: DenseLayout;
}

/** Options of {@link NysAct.addConv2d} (tfjs conventions: NHWC input, kernel `[kh, kw, inC, outC]`). */
export interface Conv2dOptions extends SketchOverrides {
  /** Kernel size: `k` or `[kh, kw]`. */
  kernelSize: number | readonly [number, number];
  /** Input channels. */
  inChannels: number;
  /** Output channels (fan-out). */
  outChannels: number;
  /** Strides: `s` or `[sh, sw]`. Default 1. */
  strides?: number | readonly [number, number];
  /** Padding. Default `'valid'` (as tfjs). */
  padding?: Padding;
  /** Dilation: `d` or `[dh, dw]`. Default 1. */
  dilation?: number | readonly [number, number];
  /** Whether the layer has a bias. Default true. */
  bias?: boolean;
}

/** Options of {@link NysAct.addParam}: a parameter updated with plain momentum SGD (SPEC §1 step 4). */
export interface ParamOptions {
  /** Number of elements. */
  size: number;
}

/** Resolved public description of a dense layer (part of the saved state). */
export interface DenseLayerSpec {
  /** Layer kind. */
  kind: 'dense';
  /** Input features. */
  inFeatures: number;
  /** Output features. */
  outFeatures: number;
  /** Whether the layer has a bias. */
  bias: boolean;
  /** Weight layout. */
  layout: DenseLayout;
  /** Requested sketch rank (the layer uses min(rank, p)). */
  rank: number;
  /** Sketch kind. */
  sketch: SketchKind;
  /** Philox stream key, when not the layer name. */
  sketchKey?: string;
}

/** Resolved public description of a conv2d layer (part of the saved state). */
export interface Conv2dLayerSpec {
  /** Layer kind. */
  kind: 'conv2d';
  /** `[kh, kw]`. */
  kernelSize: [number, number];
  /** Input channels. */
  inChannels: number;
  /** Output channels. */
  outChannels: number;
  /** `[sh, sw]`. */
  strides: [number, number];
  /** Padding. */
  padding: Padding;
  /** `[dh, dw]`. */
  dilation: [number, number];
  /** Whether the layer has a bias. */
  bias: boolean;
  /** Requested sketch rank. */
  rank: number;
  /** Sketch kind. */
  sketch: SketchKind;
  /** Philox stream key, when not the layer name. */
  sketchKey?: string;
}

/** Resolved public description of a plain parameter (part of the saved state). */
export interface ParamLayerSpec {
  /** Layer kind. */
  kind: 'param';
  /** Number of elements. */
  size: number;
}

/** Any resolved layer description. */
export type LayerSpec = DenseLayerSpec | Conv2dLayerSpec | ParamLayerSpec;

/** Largest typed array length this package hands to the native side. */
export const MAX_ELEMENTS = 2 ** 32 - 1;

function resolveOverrides(
  o: Record<string, unknown>,
  name: string,
  defaults: ResolvedNysActOptions,
): { rank: number; sketch: SketchKind; sketchKey?: string } {
  const out: { rank: number; sketch: SketchKind; sketchKey?: string } = {
    rank: o.rank === undefined ? defaults.rank : validateRank(o.rank, `${name}.rank`),
    sketch: o.sketch === undefined ? defaults.sketch : assertOneOf(o.sketch, `${name}.sketch`, SKETCHES),
  };
  if (o.sketchKey !== undefined) out.sketchKey = assertName(o.sketchKey, `${name}.sketchKey`);
  return out;
}

function checkWeightCount(count: number, name: string, what: string): void {
  if (count > MAX_ELEMENTS) {
    throw invalidRange(`a layer with at most ${MAX_ELEMENTS} weights`, name, count, `${what} is too large`);
  }
}

/** Validates {@link DenseOptions}. */
export function resolveDenseOptions(value: unknown, defaults: ResolvedNysActOptions, name = 'options'): DenseLayerSpec {
  assertObject(value, name);
  assertKnownKeys(value, ['inFeatures', 'outFeatures', 'bias', 'layout', 'rank', 'sketch', 'sketchKey'], name);
  const inFeatures = assertPositiveInteger(value.inFeatures, `${name}.inFeatures`);
  const outFeatures = assertPositiveInteger(value.outFeatures, `${name}.outFeatures`);
  checkWeightCount(inFeatures * outFeatures, `${name}.inFeatures * ${name}.outFeatures`, 'inFeatures * outFeatures');
  const bias = value.bias === undefined ? true : assertBoolean(value.bias, `${name}.bias`);
  const layout = value.layout === undefined ? 'inOut' : assertOneOf(value.layout, `${name}.layout`, ['inOut', 'outIn'] as const);
  return { kind: 'dense', inFeatures, outFeatures, bias, layout, ...resolveOverrides(value, name, defaults) };
}

/** Validates {@link Conv2dOptions}. */
export function resolveConv2dOptions(value: unknown, defaults: ResolvedNysActOptions, name = 'options'): Conv2dLayerSpec {
  assertObject(value, name);
  assertKnownKeys(
    value,
    ['kernelSize', 'inChannels', 'outChannels', 'strides', 'padding', 'dilation', 'bias', 'rank', 'sketch', 'sketchKey'],
    name,
  );
  const kernelSize = assertPair(value.kernelSize, `${name}.kernelSize`, MAX_KERNEL);
  const inChannels = assertInteger(value.inChannels, `${name}.inChannels`, 1, MAX_CHANNELS, `an integer in [1, ${MAX_CHANNELS}]`);
  const outChannels = assertPositiveInteger(value.outChannels, `${name}.outChannels`);
  const strides = value.strides === undefined ? ([1, 1] as [number, number]) : assertPair(value.strides, `${name}.strides`, MAX_KERNEL);
  const padding = value.padding === undefined ? 'valid' : assertOneOf(value.padding, `${name}.padding`, ['valid', 'same'] as const);
  const dilation = value.dilation === undefined ? ([1, 1] as [number, number]) : assertPair(value.dilation, `${name}.dilation`, MAX_KERNEL);
  const bias = value.bias === undefined ? true : assertBoolean(value.bias, `${name}.bias`);
  const fanIn = kernelSize[0] * kernelSize[1] * inChannels;
  if (fanIn > MAX_INT32) {
    throw invalidRange(
      `an inChannels with kh * kw * inChannels <= ${MAX_INT32}`,
      `${name}.inChannels`,
      inChannels,
    );
  }
  checkWeightCount(fanIn * outChannels, `${name}.outChannels`, 'kh * kw * inChannels * outChannels');
  return {
    kind: 'conv2d',
    kernelSize,
    inChannels,
    outChannels,
    strides,
    padding,
    dilation,
    bias,
    ...resolveOverrides(value, name, defaults),
  };
}

/** Validates {@link ParamOptions}. */
export function resolveParamOptions(value: unknown, name = 'options'): ParamLayerSpec {
  assertObject(value, name);
  assertKnownKeys(value, ['size'], name);
  const size = assertInteger(value.size, `${name}.size`, 1, MAX_ELEMENTS, 'a positive integer');
  return { kind: 'param', size };
}

/**
 * The Philox layer key: 32-bit FNV-1a of the layer name's UTF-8 bytes. Two optimizers (or two
 * data-parallel workers) naming a layer the same draw the same sketches for it.
 */
export function layerKey(name: string): number {
  if (typeof name !== 'string') throw invalidType('a string', 'name', name);
  const bytes = Buffer.from(name, 'utf8');
  let h = 0x811c9dc5;
  for (const b of bytes) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Sizes derived from a layer spec (SPEC §1 notation). */
export interface LayerGeometry {
  /** Fan-in without bias. */
  p0: number;
  /** p = p0 + bias. */
  p: number;
  /** q: fan-out. */
  q: number;
  /** r = min(rank, p). */
  r: number;
  /** r == p: the layer keeps the full covariance and takes no sketch. */
  fullCovariance: boolean;
  /** Element count of the weight. */
  weightSize: number;
  /** Element count of the bias (0 without bias). */
  biasSize: number;
  /** False for plain parameters. */
  preconditioned: boolean;
}

/** Sizes derived from a layer spec. */
export function layerGeometry(spec: LayerSpec): LayerGeometry {
  if (spec.kind === 'param') {
    return { p0: 0, p: 0, q: 0, r: 0, fullCovariance: false, weightSize: spec.size, biasSize: 0, preconditioned: false };
  }
  const p0 = spec.kind === 'dense' ? spec.inFeatures : spec.kernelSize[0] * spec.kernelSize[1] * spec.inChannels;
  const q = spec.kind === 'dense' ? spec.outFeatures : spec.outChannels;
  const p = p0 + (spec.bias ? 1 : 0);
  const r = Math.min(spec.rank, p);
  return {
    p0,
    p,
    q,
    r,
    fullCovariance: r === p,
    weightSize: p0 * q,
    biasSize: spec.bias ? q : 0,
    preconditioned: true,
  };
}

/** The flat native spec of a layer (every field filled in). */
export function nativeLayerSpec(name: string, spec: LayerSpec, seed: bigint): NativeLayerSpec {
  const { seedHi, seedLo } = splitSeed(seed);
  const base: NativeLayerSpec = {
    kind: 2,
    fanIn: 0,
    fanOut: 0,
    bias: false,
    rank: 1,
    sketch: 0,
    layout: 0,
    kernelH: 1,
    kernelW: 1,
    inChannels: 0,
    strideH: 1,
    strideW: 1,
    dilationH: 1,
    dilationW: 1,
    padding: 0,
    size: 0,
    seedHi,
    seedLo,
    layerKey: layerKey(spec.kind !== 'param' && spec.sketchKey !== undefined ? spec.sketchKey : name),
  };
  switch (spec.kind) {
    case 'param':
      return { ...base, size: spec.size };
    case 'dense':
      return {
        ...base,
        kind: 0,
        fanIn: spec.inFeatures,
        fanOut: spec.outFeatures,
        bias: spec.bias,
        rank: spec.rank,
        sketch: spec.sketch === 'gaussian' ? 0 : 1,
        layout: spec.layout === 'inOut' ? 0 : 1,
      };
    case 'conv2d':
      return {
        ...base,
        kind: 1,
        fanIn: spec.kernelSize[0] * spec.kernelSize[1] * spec.inChannels,
        fanOut: spec.outChannels,
        bias: spec.bias,
        rank: spec.rank,
        sketch: spec.sketch === 'gaussian' ? 0 : 1,
        kernelH: spec.kernelSize[0],
        kernelW: spec.kernelSize[1],
        inChannels: spec.inChannels,
        strideH: spec.strides[0],
        strideW: spec.strides[1],
        dilationH: spec.dilation[0],
        dilationW: spec.dilation[1],
        padding: spec.padding === 'valid' ? 0 : 1,
      };
  }
}

/** Validates a layer name (a non-empty string, not `__proto__`: names are object keys in states and steps). */
export function validateLayerName(value: unknown, name = 'name'): string {
  const s = assertName(value, name);
  if (s === '__proto__') throw invalidRange("a non-empty string other than '__proto__'", name, value);
  return s;
}
