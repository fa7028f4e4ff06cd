/** Process-wide facts and knobs of the native addon. */
import { callNative } from './errors.js';
import { loadNative } from './loader.js';
import { assertInteger } from './validate.js';

/** One compute backend as reported by the native addon. */
export interface BackendInfo {
  /** `'cpu'` or `'cuda'`. */
  name: string;
  /** Whether optimizers can use it on this machine. */
  available: boolean;
  /** Why it is unavailable; empty when available. */
  reason: string;
  /** The device it runs on (CUDA: name, compute capability, memory); empty for the CPU or when unknown. */
  device: string;
}

/** What the loaded native addon is and can do. */
export interface NativeInfo {
  /** Version string of the native addon. */
  version: string;
  /** Native interface version (1). */
  interfaceVersion: number;
  /**
   * Compute backends and whether they work here. Asking loads and probes the CUDA backend library
   * (`nysact_cuda.so`, beside the addon) once per process; optimizers with `backend: 'cpu'` never load it.
   */
  backends: BackendInfo[];
  /** Threads the CPU backend uses. */
  threads: number;
}

/**
 * Describes the native addon (loading it if needed).
 *
 * @throws {NysActError} `ERR_NYSACT_LOAD` when the addon cannot be loaded.
 */
export function nativeInfo(): NativeInfo {
  const native = loadNative();
  return callNative(() => ({
    version: native.version,
    interfaceVersion: native.interfaceVersion,
    backends: native.backends().map((b) => ({ name: b.name, available: b.available, reason: b.reason, device: b.device })),
    threads: native.threads(),
  }));
}

/**
 * Sets the number of threads of the CPU backend (process-wide).
 *
 * @param threads a positive integer (at most 1024)
 * @throws {TypeError | RangeError} `ERR_NYSACT_INVALID_ARGUMENT` for a bad count.
 */
export function setThreads(threads: number): void {
  const n = assertInteger(threads, 'threads', 1, 1024, 'an integer in [1, 1024]');
  const native = loadNative();
  callNative(() => native.setThreads(n), 'setThreads');
}

/** Live native layers and the bytes they own (for leak tests: compare before and after). */
export function liveObjects(): { layers: number; bytes: number } {
  const native = loadNative();
  const live = callNative(() => native.liveObjects());
  return { layers: live.layers, bytes: live.bytes };
}
