/** Process-wide facts and knobs of the native addon. */
import { ErrorCodes, NysActError, callNative } from './errors.js';
import { loadNative } from './loader.js';
import type { NativeBinding, NativeLiveObjects } from './native.js';
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
  /** Native interface version (2). */
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

/** Counts of live native objects and the bytes they own (for leak tests: compare before and after). */
export type LiveObjects = NativeLiveObjects;

/** Live native objects and the bytes they own (for leak tests: compare before and after). */
export function liveObjects(): LiveObjects {
  const native = loadNative();
  const live = callNative(() => native.liveObjects());
  return {
    layers: live.layers,
    bytes: live.bytes,
    tensors: live.tensors,
    tensorBytes: live.tensorBytes,
    hostBuffers: live.hostBuffers,
    hostBufferBytes: live.hostBufferBytes,
  };
}

/**
 * The backend a request resolves to: `'cpu'` without asking about CUDA (so the CPU path never loads
 * the CUDA library), `'cuda'` when it is usable, `'auto'` CUDA when usable, else the CPU.
 *
 * @throws {NysActError} `ERR_NYSACT_BACKEND_UNAVAILABLE` for `'cuda'` where it cannot be used.
 */
export function chooseBackend(native: NativeBinding, request: 'auto' | 'cpu' | 'cuda'): 'cpu' | 'cuda' {
  if (request === 'cpu') return 'cpu';
  const backends = callNative(() => native.backends());
  const cuda = backends.find((b) => b.name === 'cuda');
  if (cuda?.available) return 'cuda';
  if (request === 'auto') return 'cpu';
  const why =
    cuda === undefined
      ? 'this build has no CUDA backend yet'
      : `the CUDA backend is not available on this machine${cuda.reason ? ` (${cuda.reason})` : ''}`;
  throw new NysActError(ErrorCodes.BACKEND_UNAVAILABLE, `Cannot use backend 'cuda': ${why}; use 'cpu' or 'auto'`);
}
