/**
 * Layer shapes for `nysact bench`: the presets (the layers of real networks, identical shapes
 * grouped with a count) and the `--dense` / `--conv` grammar for custom shapes.
 */
import { UsageError } from './args.js';

/** A dense layer fed `tokens` rows per sample (1 for 2-D input; sequence length for 3-D input). */
export interface DenseShape {
  kind: 'dense';
  inFeatures: number;
  outFeatures: number;
  tokens: number;
  bias: boolean;
}

/** A conv2d layer on NHWC input of height x width x inChannels (TensorFlow padding). */
export interface ConvShape {
  kind: 'conv';
  inChannels: number;
  outChannels: number;
  kernelH: number;
  kernelW: number;
  strideH: number;
  strideW: number;
  dilationH: number;
  dilationW: number;
  padding: 'same' | 'valid';
  height: number;
  width: number;
  bias: boolean;
}

export type LayerShape = DenseShape | ConvShape;

/** One distinct layer shape of a model and how many layers of the model have it. */
export interface BenchLayer {
  /** Readable shape, e.g. `conv 16→32 3×3/2 @32` or `dense 384→1536 ×197 tokens`. */
  name: string;
  count: number;
  shape: LayerShape;
}

/** A set of layers benchmarked together at one batch size (a preset or the custom shapes). */
export interface BenchModel {
  name: string;
  description: string;
  batch: number;
  layers: BenchLayer[];
}

/** Preset names, in the order `--help` lists them. */
export const PRESET_NAMES = ['resnet32-cifar', 'resnet50-imagenet', 'deit-s', 'mlp'] as const;
export type PresetName = (typeof PRESET_NAMES)[number];

/** The batch used for custom shapes when `--batch` is not given. */
export const DEFAULT_CUSTOM_BATCH = 32;

/** Describes a shape in one short line. */
export function shapeName(s: LayerShape): string {
  if (s.kind === 'dense') {
    return `dense ${s.inFeatures}→${s.outFeatures}${s.tokens > 1 ? ` ×${s.tokens} tokens` : ''}${s.bias ? '' : ' nobias'}`;
  }
  const kernel = s.kernelH === s.kernelW ? `${s.kernelH}×${s.kernelH}` : `${s.kernelH}×${s.kernelW}`;
  const stride = s.strideH === s.strideW ? s.strideH : `${s.strideH},${s.strideW}`;
  const dilation = s.dilationH === s.dilationW ? s.dilationH : `${s.dilationH},${s.dilationW}`;
  const size = s.height === s.width ? `${s.height}` : `${s.height}×${s.width}`;
  return (
    `conv ${s.inChannels}→${s.outChannels} ${kernel}${stride !== 1 ? `/${stride}` : ''}` +
    `${dilation !== 1 ? ` d${dilation}` : ''}${s.padding === 'valid' ? ' valid' : ''} @${size}${s.bias ? ' +bias' : ''}`
  );
}

/** Groups identical shapes (keeping first-seen order) and counts them. */
export function groupLayers(shapes: LayerShape[]): BenchLayer[] {
  const byKey = new Map<string, BenchLayer>();
  for (const shape of shapes) {
    const key = JSON.stringify(shape);
    const seen = byKey.get(key);
    if (seen) seen.count += 1;
    else byKey.set(key, { name: shapeName(shape), count: 1, shape });
  }
  return [...byKey.values()];
}

function conv(
  inChannels: number,
  outChannels: number,
  kernel: number,
  stride: number,
  size: number,
  options: { padding?: 'same' | 'valid'; bias?: boolean } = {},
): ConvShape {
  return {
    kind: 'conv',
    inChannels,
    outChannels,
    kernelH: kernel,
    kernelW: kernel,
    strideH: stride,
    strideW: stride,
    dilationH: 1,
    dilationW: 1,
    padding: options.padding ?? 'same',
    height: size,
    width: size,
    bias: options.bias ?? false,
  };
}

function dense(inFeatures: number, outFeatures: number, tokens = 1, bias = true): DenseShape {
  return { kind: 'dense', inFeatures, outFeatures, tokens, bias };
}

// ResNet-32 for CIFAR-10 (He et al. 2016, option A shortcuts: no 1x1 convs): 31 3x3 convs without
// bias, one 64->10 dense layer. The shapes of bench/core.js and SPEC §3.
function resnet32(): LayerShape[] {
  const shapes: LayerShape[] = [conv(3, 16, 3, 1, 32)];
  let inChannels = 16;
  let size = 32;
  for (const [stage, outChannels] of [[1, 16], [2, 32], [3, 64]]) {
    for (let block = 0; block < 5; block++) {
      for (const j of [1, 2]) {
        const stride = stage > 1 && block === 0 && j === 1 ? 2 : 1;
        shapes.push(conv(inChannels, outChannels, 3, stride, size));
        if (stride === 2) size /= 2;
        inChannels = outChannels;
      }
    }
  }
  shapes.push(dense(64, 10));
  return shapes;
}

// ResNet-50 v1.5 for ImageNet at 224x224 (stride in the 3x3 conv, projection shortcuts).
function resnet50(): LayerShape[] {
  const shapes: LayerShape[] = [conv(3, 64, 7, 2, 224)];
  let inChannels = 64;
  let size = 56; // after the 3x3/2 max pool
  const stages: Array<[number, number, number]> = [[64, 3, 1], [128, 4, 2], [256, 6, 2], [512, 3, 2]];
  for (const [mid, blocks, firstStride] of stages) {
    const outChannels = mid * 4;
    for (let block = 0; block < blocks; block++) {
      const stride = block === 0 ? firstStride : 1;
      shapes.push(conv(inChannels, mid, 1, 1, size));
      shapes.push(conv(mid, mid, 3, stride, size));
      const outSize = size / stride;
      shapes.push(conv(mid, outChannels, 1, 1, outSize));
      if (block === 0) shapes.push(conv(inChannels, outChannels, 1, stride, size));
      inChannels = outChannels;
      size = outSize;
    }
  }
  shapes.push(dense(2048, 1000));
  return shapes;
}

// DeiT-S (Touvron et al. 2021): 16x16/16 patch embedding, 12 blocks of width 384 (qkv, proj, MLP
// 384-1536-384) on 197 tokens, and the classifier on the class token.
function deitSmall(): LayerShape[] {
  const shapes: LayerShape[] = [conv(3, 384, 16, 16, 224, { padding: 'valid', bias: true })];
  for (let block = 0; block < 12; block++) {
    shapes.push(dense(384, 1152, 197), dense(384, 384, 197), dense(384, 1536, 197), dense(1536, 384, 197));
  }
  shapes.push(dense(384, 1000));
  return shapes;
}

/**
 * The presets. Default batches are what a 2-core machine measures in seconds per kernel; the
 * networks' training batches are 128 (CIFAR, MLP) and 256+ (ImageNet): give `--batch` for those.
 */
export function presetModel(name: PresetName): BenchModel {
  switch (name) {
    case 'resnet32-cifar':
      return {
        name,
        description: 'ResNet-32 on 32×32 CIFAR-10 input (SPEC §3): 31 3×3 convs and a 64→10 dense layer',
        batch: 128,
        layers: groupLayers(resnet32()),
      };
    case 'resnet50-imagenet':
      return {
        name,
        description: 'ResNet-50 v1.5 on 224×224 ImageNet input: 53 convs (7×7, 3×3, 1×1) and a 2048→1000 dense layer',
        batch: 8,
        layers: groupLayers(resnet50()),
      };
    case 'deit-s':
      return {
        name,
        description: 'DeiT-S on 224×224 input: 16×16 patch embedding, 48 dense layers on 197 tokens, 384→1000 head',
        batch: 8,
        layers: groupLayers(deitSmall()),
      };
    case 'mlp':
      return {
        name,
        description: 'the 784-128-10 Fashion-MNIST MLP of examples/train-mlp.js',
        batch: 128,
        layers: groupLayers([dense(784, 128), dense(128, 10)]),
      };
  }
}

const LIMIT = 1 << 20;

function positive(option: string, raw: string, key: string, value: string, max = LIMIT): number {
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > max) {
    throw new UsageError(
      `nysact bench: invalid --${option} '${raw}': ${key} must be an integer in [1, ${max}] but is '${value}'`,
    );
  }
  return n;
}

function flag(option: string, raw: string, key: string, value: string): boolean {
  if (value === '1' || value === 'true') return true;
  if (value === '0' || value === 'false') return false;
  throw new UsageError(`nysact bench: invalid --${option} '${raw}': ${key} must be 0 or 1 but is '${value}'`);
}

// "AxB[:key=value,...]" -> [A, B, {key: value}], rejecting unknown and repeated keys.
function splitSpec(option: string, raw: string, keys: readonly string[]): [string, string, Map<string, string>] {
  const [dims, params = '', ...more] = raw.split(':');
  const sizes = dims.split('x');
  if (more.length > 0 || sizes.length !== 2) {
    throw new UsageError(`nysact bench: invalid --${option} '${raw}': expected ${option === 'dense' ? 'INxOUT[:key=value,...]' : 'CINxCOUT:key=value,...'}`);
  }
  const map = new Map<string, string>();
  for (const part of params === '' ? [] : params.split(',')) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (!keys.includes(key) || eq < 0) {
      throw new UsageError(
        `nysact bench: invalid --${option} '${raw}': expected key=value with key one of ${keys.join(', ')} but received '${part}'`,
      );
    }
    if (map.has(key)) throw new UsageError(`nysact bench: invalid --${option} '${raw}': ${key} given twice`);
    map.set(key, part.slice(eq + 1));
  }
  return [sizes[0], sizes[1], map];
}

/** Keys of `--dense IN x OUT[:key=value,...]`. */
export const DENSE_KEYS = ['tokens', 'bias'] as const;
/** Keys of `--conv CIN x COUT:key=value,...`. */
export const CONV_KEYS = ['k', 'kh', 'kw', 'hw', 'h', 'w', 's', 'd', 'pad', 'bias'] as const;

/** Parses `--dense 1024x1000` or `--dense 384x1536:tokens=197,bias=0`. */
export function parseDense(raw: string): DenseShape {
  const [a, b, kv] = splitSpec('dense', raw, DENSE_KEYS);
  return {
    kind: 'dense',
    inFeatures: positive('dense', raw, 'IN', a),
    outFeatures: positive('dense', raw, 'OUT', b),
    tokens: kv.has('tokens') ? positive('dense', raw, 'tokens', kv.get('tokens') as string, 1 << 16) : 1,
    bias: kv.has('bias') ? flag('dense', raw, 'bias', kv.get('bias') as string) : true,
  };
}

/** Parses `--conv 64x64:k=3,hw=56` (keys: k|kh,kw kernel, hw|h,w input size, s stride, d dilation, pad, bias). */
export function parseConv(raw: string): ConvShape {
  const [a, b, kv] = splitSpec('conv', raw, CONV_KEYS);
  const get = (key: string, fallback: number | undefined, max = 1 << 12): number | undefined =>
    kv.has(key) ? positive('conv', raw, key, kv.get(key) as string, max) : fallback;
  const k = get('k', undefined);
  if (k !== undefined && (kv.has('kh') || kv.has('kw'))) {
    throw new UsageError(`nysact bench: invalid --conv '${raw}': give k or kh/kw, not both`);
  }
  const hw = get('hw', undefined, 1 << 16);
  if (hw !== undefined && (kv.has('h') || kv.has('w'))) {
    throw new UsageError(`nysact bench: invalid --conv '${raw}': give hw or h/w, not both`);
  }
  const height = get('h', hw, 1 << 16);
  const width = get('w', hw, 1 << 16);
  if (height === undefined || width === undefined) {
    throw new UsageError(`nysact bench: invalid --conv '${raw}': the input size is required (hw=N, or h=N,w=N)`);
  }
  const pad = kv.get('pad') ?? 'same';
  if (pad !== 'same' && pad !== 'valid') {
    throw new UsageError(`nysact bench: invalid --conv '${raw}': pad must be same or valid but is '${pad}'`);
  }
  const stride = get('s', 1) as number;
  const dilation = get('d', 1) as number;
  const shape: ConvShape = {
    kind: 'conv',
    inChannels: positive('conv', raw, 'CIN', a),
    outChannels: positive('conv', raw, 'COUT', b),
    kernelH: get('kh', k ?? 3) as number,
    kernelW: get('kw', k ?? 3) as number,
    strideH: stride,
    strideW: stride,
    dilationH: dilation,
    dilationW: dilation,
    padding: pad,
    height,
    width,
    bias: kv.has('bias') ? flag('conv', raw, 'bias', kv.get('bias') as string) : false,
  };
  if (pad === 'valid') {
    const effH = (shape.kernelH - 1) * dilation + 1;
    const effW = (shape.kernelW - 1) * dilation + 1;
    if (effH > height || effW > width) {
      throw new UsageError(`nysact bench: invalid --conv '${raw}': the ${effH}×${effW} (dilated) kernel does not fit a ${height}×${width} input with pad=valid`);
    }
  }
  return shape;
}
