/**
 * Argument checks shared by the options, the optimizer and the state codec (sharp's `lib/is`).
 * Wrong JavaScript type -> `TypeError`; right type but a bad value (NaN, Infinity, out of range,
 * not an integer, wrong length) -> `RangeError`. Both carry `code: 'ERR_NYSACT_INVALID_ARGUMENT'`
 * and name the argument.
 */
import { invalidRange, invalidType } from './errors.js';

/** Largest value accepted for sizes and counts that reach native `int32` fields. */
export const MAX_INT32 = 2147483647;

/** True for a non-null, non-array object (including class instances). */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

/** Asserts an object (not null, not an array). */
export function assertObject(value: unknown, name: string): asserts value is Record<string, unknown> {
  if (!isObject(value)) throw invalidType('an object', name, value);
}

/** Asserts that `value` has no own keys outside `allowed`. */
export function assertKnownKeys(value: Record<string, unknown>, allowed: readonly string[], name: string, what = 'option'): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) {
      throw invalidType(`a known ${what} (one of ${allowed.join(', ')})`, `${name}.${key}`, value[key], `unknown key ${JSON.stringify(key)}`);
    }
  }
}

/** Asserts a number that is finite and within [min, max] (either bound optional). */
export function assertNumber(
  value: unknown,
  name: string,
  range: { min?: number; max?: number; minExclusive?: boolean; maxExclusive?: boolean; describe: string },
): number {
  if (typeof value !== 'number') throw invalidType(range.describe, name, value);
  if (!Number.isFinite(value)) throw invalidRange(range.describe, name, value);
  if (range.min !== undefined && (range.minExclusive ? value <= range.min : value < range.min)) {
    throw invalidRange(range.describe, name, value);
  }
  if (range.max !== undefined && (range.maxExclusive ? value >= range.max : value > range.max)) {
    throw invalidRange(range.describe, name, value);
  }
  return value + 0; // normalises -0
}

/** Asserts an integer in [min, max]. */
export function assertInteger(value: unknown, name: string, min: number, max: number, describe: string): number {
  if (typeof value !== 'number') throw invalidType(describe, name, value);
  if (!Number.isInteger(value) || value < min || value > max) throw invalidRange(describe, name, value);
  return value + 0;
}

/** Asserts an integer in [1, 2^31 - 1]. */
export function assertPositiveInteger(value: unknown, name: string): number {
  return assertInteger(value, name, 1, MAX_INT32, 'a positive integer');
}

/** Asserts a boolean. */
export function assertBoolean(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw invalidType('a boolean', name, value);
  return value;
}

/** Asserts one of a fixed set of strings. */
export function assertOneOf<T extends string>(value: unknown, name: string, choices: readonly T[]): T {
  const expected = `one of ${choices.map((c) => `'${c}'`).join(', ')}`;
  if (typeof value !== 'string') throw invalidType(expected, name, value);
  if (!(choices as readonly string[]).includes(value)) throw invalidRange(expected, name, value);
  return value as T;
}

/** Asserts a non-empty string. */
export function assertName(value: unknown, name: string): string {
  if (typeof value !== 'string') throw invalidType('a non-empty string', name, value);
  if (value.length === 0) throw invalidRange('a non-empty string', name, value);
  return value;
}

/** Asserts a Float32Array, optionally of an exact length. */
export function assertFloat32Array(value: unknown, name: string, length?: number): Float32Array {
  if (!(value instanceof Float32Array)) throw invalidType('a Float32Array', name, value);
  if (length !== undefined && value.length !== length) {
    throw invalidRange(`a Float32Array of length ${length}`, name, value);
  }
  return value;
}

/** Asserts an Int32Array, optionally of an exact length. */
export function assertInt32Array(value: unknown, name: string, length?: number): Int32Array {
  if (!(value instanceof Int32Array)) throw invalidType('an Int32Array', name, value);
  if (length !== undefined && value.length !== length) {
    throw invalidRange(`an Int32Array of length ${length}`, name, value);
  }
  return value;
}

/**
 * Asserts a positive integer or a pair of them (`kernelSize: 3` or `[3, 5]`); returns the pair.
 */
export function assertPair(value: unknown, name: string, max = MAX_INT32): [number, number] {
  const one = max === MAX_INT32 ? 'a positive integer' : `an integer in [1, ${max}]`;
  const describe = `${one} or an array of two such integers`;
  if (typeof value === 'number') {
    const v = assertInteger(value, name, 1, max, describe);
    return [v, v];
  }
  if (!Array.isArray(value)) throw invalidType(describe, name, value);
  if (value.length !== 2) throw invalidRange(describe, name, value);
  return [assertInteger(value[0], `${name}[0]`, 1, max, one), assertInteger(value[1], `${name}[1]`, 1, max, one)];
}
