/**
 * One error shape for the whole package (STYLE.md, better-sqlite3 / sharp): every error thrown by
 * nysact carries a stable string `code`. Argument errors are plain `TypeError` / `RangeError`
 * objects (so `instanceof TypeError` keeps working) that also carry
 * `code === 'ERR_NYSACT_INVALID_ARGUMENT'`; everything else is a {@link NysActError}.
 */

/** Every `code` an error thrown by this package can carry. */
export const ErrorCodes = Object.freeze({
  /** A value of the wrong type, out of range, or a call made at the wrong time. */
  INVALID_ARGUMENT: 'ERR_NYSACT_INVALID_ARGUMENT',
  /** NaN or Infinity in activations or gradients (with `nonFinite: 'throw'`). */
  NON_FINITE: 'ERR_NYSACT_NON_FINITE',
  /** A statistics step was taken without activations for a preconditioned layer. */
  MISSING_ACTIVATIONS: 'ERR_NYSACT_MISSING_ACTIVATIONS',
  /** The optimizer (or a native layer) was used after `dispose()`. */
  DISPOSED: 'ERR_NYSACT_DISPOSED',
  /** The requested compute backend is not available in this build / on this machine. */
  BACKEND_UNAVAILABLE: 'ERR_NYSACT_BACKEND_UNAVAILABLE',
  /** A state object or serialized state is malformed or does not fit this optimizer. */
  STATE: 'ERR_NYSACT_STATE',
  /** The native addon could not be loaded. */
  LOAD: 'ERR_NYSACT_LOAD',
  /** An optional peer dependency (e.g. `@tensorflow/tfjs-core` for `nysact/tfjs`) is not installed. */
  PEER_MISSING: 'ERR_NYSACT_PEER_MISSING',
  /**
   * The optimizer (or a tensor) is in use by an asynchronous step (`stepAsync`): wait for its
   * promise or `synchronize()` first.
   */
  BUSY: 'ERR_NYSACT_BUSY',
  /** The JavaScript runtime cannot do what was asked (e.g. it forbids external ArrayBuffers). */
  UNSUPPORTED: 'ERR_NYSACT_UNSUPPORTED',
  /** Any other failure inside the native addon. */
  NATIVE: 'ERR_NYSACT_NATIVE',
} as const);

/** The union of all error codes (see {@link ErrorCodes}). */
export type NysActErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

const KNOWN_CODES: ReadonlySet<string> = new Set(Object.values(ErrorCodes));

/** True when `code` is one of this package's error codes. */
export function isNysActErrorCode(code: unknown): code is NysActErrorCode {
  return typeof code === 'string' && KNOWN_CODES.has(code);
}

/** The error class for every failure that is not a plain argument error. */
export class NysActError extends Error {
  /** Stable machine-readable code, e.g. `'ERR_NYSACT_STATE'`. */
  readonly code: NysActErrorCode;

  /**
   * @param code one of {@link ErrorCodes}
   * @param message human-readable description
   * @param options standard `ErrorOptions` (`cause`)
   */
  constructor(code: NysActErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}
Object.defineProperty(NysActError.prototype, 'name', {
  value: 'NysActError',
  enumerable: false,
  writable: true,
  configurable: true,
});

/** A `TypeError` carrying `code === 'ERR_NYSACT_INVALID_ARGUMENT'`. */
export interface InvalidArgumentTypeError extends TypeError {
  readonly code: 'ERR_NYSACT_INVALID_ARGUMENT';
}

/** A `RangeError` carrying `code === 'ERR_NYSACT_INVALID_ARGUMENT'`. */
export interface InvalidArgumentRangeError extends RangeError {
  readonly code: 'ERR_NYSACT_INVALID_ARGUMENT';
}

/**
 * Short description of a received value for error messages: numbers as written (`-1`, `NaN`),
 * strings quoted, typed arrays and arrays with their length, objects by constructor name.
 */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'undefined':
      return 'undefined';
    case 'number':
      return Object.is(value, -0) ? '-0' : String(value);
    case 'bigint':
      return `${value}n`;
    case 'boolean':
      return String(value);
    case 'string': {
      const s = value.length > 40 ? `${value.slice(0, 37)}...` : value;
      return JSON.stringify(s);
    }
    case 'symbol':
      return value.toString();
    case 'function':
      return `function ${(value as { name?: string }).name || '(anonymous)'}`;
    default:
      break;
  }
  if (ArrayBuffer.isView(value)) {
    const name = value.constructor?.name ?? 'ArrayBufferView';
    const length = (value as unknown as { length?: number }).length ?? value.byteLength;
    return `${name}(${length})`;
  }
  if (Array.isArray(value)) return `Array(${value.length})`;
  if (value instanceof ArrayBuffer) return `ArrayBuffer(${value.byteLength})`;
  const ctor = (value as object).constructor;
  if (ctor?.name === 'DeviceTensor') {
    // lib/tensor.ts; described by duck typing to keep this module free of imports.
    const t = value as { length?: unknown; backend?: unknown; disposed?: unknown };
    return `DeviceTensor(${String(t.length)}, '${String(t.backend)}'${t.disposed === true ? ', disposed' : ''})`;
  }
  if (ctor === undefined || ctor === Object) return 'an object';
  return `an instance of ${ctor.name || 'an anonymous class'}`;
}

function withCode<E extends Error>(error: E, code: NysActErrorCode): E {
  Object.defineProperty(error, 'code', { value: code, enumerable: true, writable: false, configurable: true });
  return error;
}

/**
 * `TypeError` with the house message "Expected `expected` for `name` but received `value`" and
 * `code === 'ERR_NYSACT_INVALID_ARGUMENT'`.
 */
export function invalidType(expected: string, name: string, value: unknown, detail?: string): InvalidArgumentTypeError {
  const message = `Expected ${expected} for ${name} but received ${describeValue(value)}${detail ? `; ${detail}` : ''}`;
  return withCode(new TypeError(message), ErrorCodes.INVALID_ARGUMENT) as InvalidArgumentTypeError;
}

/**
 * `RangeError` with the house message "Expected `expected` for `name` but received `value`" and
 * `code === 'ERR_NYSACT_INVALID_ARGUMENT'`.
 */
export function invalidRange(expected: string, name: string, value: unknown, detail?: string): InvalidArgumentRangeError {
  const message = `Expected ${expected} for ${name} but received ${describeValue(value)}${detail ? `; ${detail}` : ''}`;
  return withCode(new RangeError(message), ErrorCodes.INVALID_ARGUMENT) as InvalidArgumentRangeError;
}

/** A {@link NysActError} for a call that is valid in itself but made at the wrong time. */
export function invalidCall(message: string): NysActError {
  return new NysActError(ErrorCodes.INVALID_ARGUMENT, message);
}

/**
 * Converts anything thrown by the native addon into an error with a known `code`: errors that
 * already carry one of ours pass through unchanged; anything else becomes a
 * {@link NysActError} `ERR_NYSACT_NATIVE` with the original as `cause`.
 */
export function fromNative(error: unknown, context?: string): Error {
  if (error instanceof Error && isNysActErrorCode((error as { code?: unknown }).code)) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new NysActError(ErrorCodes.NATIVE, context ? `${context}: ${message}` : message, { cause: error });
}

/** Runs `fn`, rewrapping native errors with {@link fromNative}. */
export function callNative<T>(fn: () => T, context?: string): T {
  try {
    return fn();
  } catch (error) {
    throw fromNative(error, context);
  }
}
