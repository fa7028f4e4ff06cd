/**
 * The saved state of an optimizer and its lossless binary form.
 *
 * Binary layout (all integers little-endian):
 *   bytes 0..7    magic `NYSACT01`
 *   bytes 8..11   uint32 byte length H of the JSON header
 *   bytes 12..15  uint32 reserved, 0
 *   bytes 16..    UTF-8 JSON header, padded with spaces to a multiple of 8
 *   then          the data section: every array's raw little-endian bytes, each starting at an
 *                 offset (relative to the data section) that is a multiple of 8.
 * The header is the state with every typed array replaced by `{ "$array": i }`, an index into
 * `header.arrays = [{ name, dtype: 'float32' | 'int32', offset, length }]`, and the seed written
 * as a decimal string (it may exceed 2^53).
 */
import { ErrorCodes, NysActError, describeValue } from './errors.js';
import type { NativeLayerState } from './native.js';
import type { LayerGeometry, LayerSpec, ResolvedNysActOptions } from './options.js';
import { isObject } from './validate.js';

/** Complete, bit-exact state of one native layer (see `lib/native.ts`). */
export type LayerState = NativeLayerState;

/** Saved state of one layer: its public description and its native state. */
export interface NysActLayerStateEntry {
  /** The layer's resolved options; must equal the target layer's on restore. */
  spec: LayerSpec;
  /** The native state (copies of the arrays). */
  state: LayerState;
}

/** Everything needed to resume an optimizer bit-exactly. */
export interface NysActState {
  /** Always `'nysact-state'`. */
  format: 'nysact-state';
  /** Format version, 1. */
  version: 1;
  /** The step counter t of the next step. */
  iteration: number;
  /** The hyperparameters at the time of saving. */
  options: ResolvedNysActOptions;
  /** Per layer (keyed by name, never by position). */
  layers: Record<string, NysActLayerStateEntry>;
}

/** The only `format` value. */
export const STATE_FORMAT = 'nysact-state';
/** The current state version. */
export const STATE_VERSION = 1;

const MAGIC = 'NYSACT01';
const PREFIX_BYTES = 16;

/** An `ERR_NYSACT_STATE` error in the house message shape. */
export function stateError(expected: string, name: string, value: unknown, detail?: string): NysActError {
  return new NysActError(
    ErrorCodes.STATE,
    `Expected ${expected} for ${name} but received ${describeValue(value)}${detail ? `; ${detail}` : ''}`,
  );
}

type ArrayField = 'ema' | 'sketch' | 'indices' | 'basis' | 'coefficients' | 'momentum' | 'biasMomentum';

/** The array fields of {@link LayerState}, with their element types. */
export const ARRAY_FIELDS: readonly { field: ArrayField; dtype: 'float32' | 'int32' }[] = [
  { field: 'ema', dtype: 'float32' },
  { field: 'sketch', dtype: 'float32' },
  { field: 'indices', dtype: 'int32' },
  { field: 'basis', dtype: 'float32' },
  { field: 'coefficients', dtype: 'float32' },
  { field: 'momentum', dtype: 'float32' },
  { field: 'biasMomentum', dtype: 'float32' },
];

/**
 * The allowed lengths of each array of a layer's state (SPEC §1 sizes, the native contract):
 * EMA p·r, momentum as the weight, bias momentum q; the last sketch (p·r values or r indices) is
 * empty before the first statistics step; the factors (p·r basis, r coefficients) are present iff
 * `hasFactors`. Plain parameters hold only the momentum.
 */
export function allowedStateLengths(
  spec: LayerSpec,
  g: LayerGeometry,
  hasFactors: boolean,
): Record<ArrayField, readonly number[]> {
  if (spec.kind === 'param') {
    return { ema: [0], sketch: [0], indices: [0], basis: [0], coefficients: [0], momentum: [g.weightSize], biasMomentum: [0] };
  }
  const sketched = !g.fullCovariance;
  return {
    ema: [g.p * g.r],
    sketch: sketched && spec.sketch === 'gaussian' ? [0, g.p * g.r] : [0],
    indices: sketched && spec.sketch === 'subcolumns' ? [0, g.r] : [0],
    basis: [hasFactors ? g.p * g.r : 0],
    coefficients: [hasFactors ? g.r : 0],
    momentum: [g.weightSize],
    biasMomentum: [g.biasSize],
  };
}

/**
 * Validates one layer's native state against its spec; throws `ERR_NYSACT_STATE` naming the
 * field. Returns the state with its fields in canonical order (no unknown keys).
 */
export function validateLayerState(value: unknown, name: string, spec: LayerSpec, g: LayerGeometry): LayerState {
  if (!isObject(value)) throw stateError('an object', name, value);
  const known = [
    ...ARRAY_FIELDS.map((a) => a.field),
    'inverseDamping',
    'decayProduct',
    'emaSteps',
    'hasFactors',
    'factorFallbacks',
  ];
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) throw stateError(`a known field (one of ${known.join(', ')})`, `${name}.${key}`, value[key]);
  }
  const hasFactors = value.hasFactors;
  if (typeof hasFactors !== 'boolean') throw stateError('a boolean', `${name}.hasFactors`, hasFactors);
  const lengths = allowedStateLengths(spec, g, hasFactors);
  const out: Partial<LayerState> = {};
  for (const { field, dtype } of ARRAY_FIELDS) {
    const v = value[field];
    const ctor = dtype === 'float32' ? Float32Array : Int32Array;
    const allowed = lengths[field];
    const describe = `${dtype === 'float32' ? 'a Float32Array' : 'an Int32Array'} of length ${allowed.join(' or ')}`;
    if (!(v instanceof ctor) || !allowed.includes(v.length)) {
      throw stateError(describe, `${name}.${field}`, v, field === 'basis' || field === 'coefficients' ? `hasFactors is ${hasFactors}` : undefined);
    }
    (out as Record<string, unknown>)[field] = v;
  }
  const indices = out.indices as Int32Array;
  const seen = new Set<number>();
  for (let i = 0; i < indices.length; i++) {
    if (indices[i] < 0 || indices[i] >= g.p) {
      throw stateError(`a column index in [0, ${g.p})`, `${name}.indices[${i}]`, indices[i]);
    }
    if (seen.has(indices[i])) throw stateError('distinct column indices', `${name}.indices[${i}]`, indices[i]);
    seen.add(indices[i]);
  }
  const inverseDamping = value.inverseDamping;
  if (typeof inverseDamping !== 'number' || !Number.isFinite(inverseDamping) || inverseDamping < 0 || (hasFactors && inverseDamping === 0)) {
    throw stateError(hasFactors ? 'a finite number > 0 (hasFactors is true)' : 'a finite number >= 0', `${name}.inverseDamping`, inverseDamping);
  }
  const decayProduct = value.decayProduct;
  if (typeof decayProduct !== 'number' || !Number.isFinite(decayProduct) || decayProduct < 0 || decayProduct > 1) {
    throw stateError('a number in [0, 1]', `${name}.decayProduct`, decayProduct);
  }
  for (const key of ['emaSteps', 'factorFallbacks'] as const) {
    const v = value[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      throw stateError('a non-negative safe integer', `${name}.${key}`, v);
    }
  }
  return {
    ema: out.ema as Float32Array,
    sketch: out.sketch as Float32Array,
    indices,
    basis: out.basis as Float32Array,
    coefficients: out.coefficients as Float32Array,
    inverseDamping,
    decayProduct,
    momentum: out.momentum as Float32Array,
    biasMomentum: out.biasMomentum as Float32Array,
    emaSteps: value.emaSteps as number,
    hasFactors,
    factorFallbacks: value.factorFallbacks as number,
  };
}

interface ArrayDescriptor {
  name: string;
  dtype: 'float32' | 'int32';
  offset: number;
  length: number;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

/**
 * Encodes a state (as returned by `NysAct.getState()`) into the lossless binary format described
 * at the top of this module. Does not validate the state beyond what encoding needs.
 */
export function encodeState(state: NysActState): Uint8Array {
  const arrays: ArrayDescriptor[] = [];
  const payloads: (Float32Array | Int32Array)[] = [];
  let offset = 0;
  const layers: Record<string, unknown> = {};
  for (const [name, entry] of Object.entries(state.layers)) {
    const s: Record<string, unknown> = {
      inverseDamping: entry.state.inverseDamping,
      decayProduct: entry.state.decayProduct,
      emaSteps: entry.state.emaSteps,
      hasFactors: entry.state.hasFactors,
      factorFallbacks: entry.state.factorFallbacks,
    };
    for (const { field, dtype } of ARRAY_FIELDS) {
      const data = entry.state[field];
      s[field] = { $array: arrays.length };
      arrays.push({ name: `${name}/${field}`, dtype, offset, length: data.length });
      payloads.push(data);
      offset = align8(offset + data.byteLength);
    }
    layers[name] = { spec: entry.spec, state: s };
  }
  const header = {
    format: state.format,
    version: state.version,
    iteration: state.iteration,
    options: { ...state.options, seed: String(state.options.seed) },
    layers,
    arrays,
    dataBytes: offset,
  };
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const headerBytes = json.length;
  const paddedHeader = align8(headerBytes);
  const out = new Uint8Array(PREFIX_BYTES + paddedHeader + offset);
  const view = new DataView(out.buffer);
  out.set(Buffer.from(MAGIC, 'latin1'), 0);
  view.setUint32(8, headerBytes, true);
  view.setUint32(12, 0, true);
  out.set(json, PREFIX_BYTES);
  out.fill(0x20, PREFIX_BYTES + headerBytes, PREFIX_BYTES + paddedHeader);
  const dataStart = PREFIX_BYTES + paddedHeader;
  arrays.forEach((a, i) => {
    const data = payloads[i];
    const start = dataStart + a.offset;
    if (LITTLE_ENDIAN) {
      out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), start);
    } else {
      for (let k = 0; k < data.length; k++) {
        if (a.dtype === 'float32') view.setFloat32(start + 4 * k, data[k], true);
        else view.setInt32(start + 4 * k, data[k], true);
      }
    }
  });
  return out;
}

/**
 * Decodes bytes written by {@link encodeState}. Checks the container (magic, header, array
 * bounds); the content is checked by `NysAct.setState`.
 *
 * @throws {NysActError} `ERR_NYSACT_STATE` naming what is malformed.
 */
export function decodeState(bytes: Uint8Array): NysActState {
  if (!(bytes instanceof Uint8Array)) throw stateError('a Uint8Array', 'bytes', bytes);
  if (bytes.length < PREFIX_BYTES) throw stateError(`at least ${PREFIX_BYTES} bytes`, 'bytes.length', bytes.length);
  const magic = Buffer.from(bytes.buffer, bytes.byteOffset, 8).toString('latin1');
  if (magic !== MAGIC) throw stateError(`the magic ${JSON.stringify(MAGIC)}`, 'bytes[0..8]', magic);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerBytes = view.getUint32(8, true);
  const paddedHeader = align8(headerBytes);
  if (PREFIX_BYTES + paddedHeader > bytes.length) {
    throw stateError(`a header length that fits in ${bytes.length} bytes`, 'header length', headerBytes);
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset + PREFIX_BYTES, headerBytes).toString('utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new NysActError(ErrorCodes.STATE, `Expected a JSON header in the state bytes: ${(error as Error).message}`, { cause: error });
  }
  if (!isObject(header)) throw stateError('an object', 'header', header);
  const dataStart = PREFIX_BYTES + paddedHeader;
  const dataBytes = header.dataBytes;
  if (typeof dataBytes !== 'number' || !Number.isSafeInteger(dataBytes) || dataBytes < 0 || dataStart + dataBytes !== bytes.length) {
    throw stateError(`${bytes.length - dataStart} (the size of the data section)`, 'header.dataBytes', dataBytes);
  }
  const arrays = header.arrays;
  if (!Array.isArray(arrays)) throw stateError('an array', 'header.arrays', arrays);
  const decoded: (Float32Array | Int32Array)[] = arrays.map((a: unknown, i: number) => {
    const name = `header.arrays[${i}]`;
    if (!isObject(a)) throw stateError('an object', name, a);
    if (a.dtype !== 'float32' && a.dtype !== 'int32') throw stateError("'float32' or 'int32'", `${name}.dtype`, a.dtype);
    const { offset, length } = a;
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0 || offset % 8 !== 0) {
      throw stateError('a non-negative multiple of 8', `${name}.offset`, offset);
    }
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0 || offset + 4 * length > dataBytes) {
      throw stateError('a length inside the data section', `${name}.length`, length);
    }
    const out = a.dtype === 'float32' ? new Float32Array(length) : new Int32Array(length);
    const start = dataStart + offset;
    if (LITTLE_ENDIAN) {
      new Uint8Array(out.buffer).set(bytes.subarray(start, start + 4 * length));
    } else {
      for (let k = 0; k < length; k++) {
        out[k] = a.dtype === 'float32' ? view.getFloat32(start + 4 * k, true) : view.getInt32(start + 4 * k, true);
      }
    }
    return out;
  });
  const layersIn = header.layers;
  if (!isObject(layersIn)) throw stateError('an object', 'header.layers', layersIn);
  const layers: Record<string, NysActLayerStateEntry> = {};
  for (const [name, entry] of Object.entries(layersIn)) {
    const where = `header.layers.${name}`;
    if (!isObject(entry) || !isObject(entry.state)) throw stateError('an object with spec and state', where, entry);
    const s: Record<string, unknown> = { ...entry.state };
    for (const { field } of ARRAY_FIELDS) {
      const ref = s[field];
      if (!isObject(ref) || typeof ref.$array !== 'number' || decoded[ref.$array] === undefined) {
        throw stateError('an array reference', `${where}.state.${field}`, ref);
      }
      s[field] = decoded[ref.$array];
    }
    layers[name] = { spec: entry.spec as LayerSpec, state: s as unknown as LayerState };
  }
  const options = header.options;
  if (!isObject(options)) throw stateError('an object', 'header.options', options);
  let seed: unknown = options.seed;
  if (typeof seed === 'string' && /^[0-9]+$/.test(seed)) {
    const big = BigInt(seed);
    seed = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  return {
    format: header.format as 'nysact-state',
    version: header.version as 1,
    iteration: header.iteration as number,
    options: { ...(options as unknown as ResolvedNysActOptions), seed: seed as number | bigint },
    layers,
  };
}
