/**
 * Backend memory for JS training loops: {@link DeviceTensor} (device memory on CUDA, aligned host
 * memory on the CPU) and {@link hostBuffer} (a `Float32Array` over native host memory: page-locked
 * on CUDA, 64-byte aligned on the CPU). Both are accepted by `NysAct#step` / `NysAct#stepAsync`
 * wherever a `Float32Array` is, and by `NysAct#observe` for the activations.
 */
import { ErrorCodes, NysActError, callNative, fromNative, invalidRange, invalidType } from './errors.js';
import { loadNative } from './loader.js';
import type { NativeTensor } from './native.js';
import { chooseBackend } from './runtime.js';
import { assertKnownKeys, assertObject, assertOneOf } from './validate.js';

/** Largest element count of a tensor or host buffer (2^32 − 1). */
export const MAX_BUFFER_LENGTH = 4294967295;

/** Options of {@link tensor} and {@link hostBuffer}. */
export interface BufferOptions {
  /**
   * `'cpu'`, `'cuda'` or `'auto'` (default: CUDA when usable, else the CPU). Use the backend of
   * the optimizer that will read it (`optimizer.tensor()` / `optimizer.hostBuffer()` do).
   */
  backend?: 'auto' | 'cpu' | 'cuda';
}

/** What the optimizer needs of a tensor: its native object and an in-use count. */
export interface TensorInternals {
  readonly native: NativeTensor;
  /** Asynchronous steps holding it. */
  busy: number;
}

const internals = new WeakMap<DeviceTensor, TensorInternals>();

/** The native side of a tensor (for `NysAct`; not exported from the package). */
export function tensorInternals(t: DeviceTensor): TensorInternals {
  return internals.get(t) as TensorInternals;
}

function resolveLength(length: unknown, name: string): number {
  const expected = `an integer in [1, ${MAX_BUFFER_LENGTH}]`;
  if (typeof length !== 'number') throw invalidType(expected, name, length);
  if (!Number.isInteger(length) || length < 1 || length > MAX_BUFFER_LENGTH) throw invalidRange(expected, name, length);
  return length;
}

function resolveBackend(options: unknown): 'cpu' | 'cuda' {
  let request: 'auto' | 'cpu' | 'cuda' = 'auto';
  if (options !== undefined) {
    assertObject(options, 'options');
    assertKnownKeys(options, ['backend'], 'options');
    if (options.backend !== undefined) request = assertOneOf(options.backend, 'options.backend', ['auto', 'cpu', 'cuda'] as const);
  }
  return chooseBackend(loadNative(), request);
}

/**
 * A float32 array in backend memory: on the CUDA backend device memory (`cudaMalloc`), so that a
 * step (or `observe`, for activations) reads and writes it with no host↔device copy; on the CPU backend 64-byte aligned host
 * memory. Create it with {@link tensor} or `optimizer.tensor(length)`; free it with
 * {@link dispose} (a tensor that is garbage-collected undisposed is freed then).
 *
 * While an asynchronous step (`stepAsync`) that uses the tensor is in flight, every method but the
 * getters throws `ERR_NYSACT_BUSY`.
 *
 * @example
 * const w = opt.tensor(784 * 256).upload(initialWeights);
 * const g = opt.tensor(784 * 256);
 * // each step: g.upload(gradient) (or let a GPU framework write it), then
 * await opt.stepAsync({ fc1: { weight: w, grad: g } });
 * const trained = w.download();
 */
export class DeviceTensor {
  readonly #length: number;
  readonly #backend: 'cpu' | 'cuda';

  /**
   * @param length number of float32 elements (at least 1); the contents start unspecified
   * @param options the backend (default `'auto'`)
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad length or option.
   * @throws {NysActError} `ERR_NYSACT_BACKEND_UNAVAILABLE` for `'cuda'` where it cannot be used;
   *   `ERR_NYSACT_NATIVE` when out of memory.
   */
  constructor(length: number, options?: BufferOptions) {
    const n = resolveLength(length, 'length');
    const backend = resolveBackend(options);
    const native = loadNative();
    const handle = callNative(() => new native.Tensor(n, backend), `creating a ${backend} tensor of ${n} elements`);
    this.#length = n;
    this.#backend = backend;
    internals.set(this, { native: handle, busy: 0 });
  }

  /** Number of float32 elements. */
  get length(): number {
    return this.#length;
  }

  /** The backend whose memory holds it: `'cpu'` or `'cuda'`. */
  get backend(): 'cpu' | 'cuda' {
    return this.#backend;
  }

  /** Whether {@link dispose} was called. */
  get disposed(): boolean {
    return tensorInternals(this).native.isDisposed();
  }

  /**
   * Copies `src` into elements `[offset, offset + src.length)` (synchronous).
   *
   * @returns this tensor
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad array or offset, or one
   *   that does not fit.
   * @throws {NysActError} `ERR_NYSACT_DISPOSED`; `ERR_NYSACT_BUSY` while a step uses it.
   */
  upload(src: Float32Array, offset = 0): this {
    const state = this.#usable('upload');
    if (!(src instanceof Float32Array)) throw invalidType('a Float32Array', 'src', src);
    const at = this.#offset(offset);
    if (at + src.length > this.#length) {
      throw invalidRange(`a Float32Array of at most ${this.#length - at} elements (the tensor's length ${this.#length} minus offset ${at})`, 'src', src);
    }
    callNative(() => state.native.upload(src, at), 'DeviceTensor.upload');
    return this;
  }

  /**
   * Copies the tensor into `dst` (synchronous), or into a new `Float32Array`.
   *
   * @param dst a `Float32Array` of exactly {@link length} elements
   * @returns `dst`, or the new array
   * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad `dst`.
   * @throws {NysActError} `ERR_NYSACT_DISPOSED`; `ERR_NYSACT_BUSY` while a step uses it.
   */
  download(dst?: Float32Array): Float32Array {
    const state = this.#usable('download');
    let out: Float32Array;
    if (dst === undefined) {
      out = new Float32Array(this.#length);
    } else {
      if (!(dst instanceof Float32Array)) throw invalidType('a Float32Array', 'dst', dst);
      if (dst.length !== this.#length) throw invalidRange(`a Float32Array of length ${this.#length}`, 'dst', dst);
      out = dst;
    }
    callNative(() => state.native.download(out, 0), 'DeviceTensor.download');
    return out;
  }

  /**
   * Sets every element to `value` (synchronous; any number, NaN and infinities included).
   *
   * @returns this tensor
   * @throws {TypeError} `ERR_NYSACT_INVALID_ARGUMENT` when `value` is not a number.
   * @throws {NysActError} `ERR_NYSACT_DISPOSED`; `ERR_NYSACT_BUSY` while a step uses it.
   */
  fill(value: number): this {
    const state = this.#usable('fill');
    if (typeof value !== 'number') throw invalidType('a number', 'value', value);
    callNative(() => state.native.fill(value), 'DeviceTensor.fill');
    return this;
  }

  /**
   * Frees the memory. Idempotent.
   *
   * @throws {NysActError} `ERR_NYSACT_BUSY` while an asynchronous step uses the tensor (await it first).
   */
  dispose(): void {
    const state = tensorInternals(this);
    if (state.native.isDisposed()) return;
    this.#checkIdle(state, 'dispose');
    callNative(() => state.native.dispose(), 'DeviceTensor.dispose');
  }

  #usable(method: string): TensorInternals {
    const state = tensorInternals(this);
    if (state.native.isDisposed()) {
      throw new NysActError(ErrorCodes.DISPOSED, `Cannot call DeviceTensor.${method}(): this tensor has been disposed`);
    }
    this.#checkIdle(state, method);
    return state;
  }

  #checkIdle(state: TensorInternals, method: string): void {
    if (state.busy > 0) {
      throw new NysActError(
        ErrorCodes.BUSY,
        `Cannot call DeviceTensor.${method}() while an asynchronous step (stepAsync) uses this tensor; await it first`,
      );
    }
  }

  #offset(offset: unknown): number {
    const expected = `an integer in [0, ${this.#length}]`;
    if (typeof offset !== 'number') throw invalidType(expected, 'offset', offset);
    if (!Number.isInteger(offset) || offset < 0 || offset > this.#length) throw invalidRange(expected, 'offset', offset);
    return offset;
  }
}

/**
 * A new {@link DeviceTensor} of `length` float32 elements (contents unspecified).
 *
 * @throws see the {@link DeviceTensor} constructor
 */
export function tensor(length: number, options?: BufferOptions): DeviceTensor {
  return new DeviceTensor(length, options);
}

/**
 * A zeroed `Float32Array` of `length` elements over native host
 * memory that the garbage collector frees with the array: 64-byte aligned on the CPU backend,
 * page-locked (`cudaHostAlloc`) on the CUDA backend, whose copies from and to it are then
 * asynchronous and at full bandwidth. Use it like any `Float32Array`, e.g. as a step's gradient:
 * fill it from JS, pass it to `step` / `stepAsync`.
 *
 * @param length number of elements (at least 1)
 * @param options the backend that will read it (default `'auto'`)
 * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad length or option.
 * @throws {NysActError} `ERR_NYSACT_UNSUPPORTED` where the JavaScript runtime forbids external
 *   ArrayBuffers (use an ordinary `Float32Array` there: steps read it in place, without a copy);
 *   `ERR_NYSACT_BACKEND_UNAVAILABLE`; `ERR_NYSACT_NATIVE` when out of memory.
 */
export function hostBuffer(length: number, options?: BufferOptions): Float32Array {
  const n = resolveLength(length, 'length');
  const backend = resolveBackend(options);
  const native = loadNative();
  let out: Float32Array;
  try {
    out = native.hostBuffer(n, backend);
  } catch (error) {
    if ((error as { code?: unknown }).code === ErrorCodes.UNSUPPORTED) {
      throw new NysActError(ErrorCodes.UNSUPPORTED, (error as Error).message, { cause: error });
    }
    throw fromNative(error, `hostBuffer(${n})`);
  }
  // Native allocations are not zeroed: make it behave like a new Float32Array.
  out.fill(0);
  return out;
}
