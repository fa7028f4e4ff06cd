/**
 * The one TypeScript description of the native addon (STYLE.md point 8). Only `loader.ts` loads the
 * binary; everything else sees it through these interfaces.
 *
 * The native side repeats the cheap checks (types, lengths, ranges) because the CLI and advanced
 * users can reach it directly; the friendly validation with defaults lives in `options.ts`.
 */

/** 0 dense, 1 conv2d, 2 plain (momentum SGD only). */
export type NativeLayerKind = 0 | 1 | 2;

/** One flat, complete layer description (TypeScript owns the defaults). */
export interface NativeLayerSpec {
  kind: NativeLayerKind;
  /** p0: fan-in without bias (conv: kernelH * kernelW * inChannels). 0 for plain. */
  fanIn: number;
  /** q: fan-out. 0 for plain. */
  fanOut: number;
  bias: boolean;
  /** Requested rank; the layer uses r = min(rank, p). */
  rank: number;
  /** 0 gaussian, 1 subcolumns. */
  sketch: 0 | 1;
  /** 0: tfjs layout [in, out] / [kh, kw, inC, outC]; 1: [out, in]. */
  layout: 0 | 1;
  kernelH: number;
  kernelW: number;
  inChannels: number;
  strideH: number;
  strideW: number;
  dilationH: number;
  dilationW: number;
  /** 0 valid, 1 same (TensorFlow semantics). */
  padding: 0 | 1;
  /** Element count of a plain parameter; 0 otherwise. */
  size: number;
  /** Philox key: the 64-bit seed as two uint32 halves, and the layer's key. */
  seedHi: number;
  seedLo: number;
  layerKey: number;
}

/** Complete, bit-exact state of one native layer (arrays are copies). */
export interface NativeLayerState {
  ema: Float32Array;
  sketch: Float32Array;
  indices: Int32Array;
  basis: Float32Array;
  coefficients: Float32Array;
  inverseDamping: number;
  /** Product of the statDecay values of all committed statistics steps (1 before the first). */
  decayProduct: number;
  momentum: Float32Array;
  biasMomentum: Float32Array;
  emaSteps: number;
  hasFactors: boolean;
  factorFallbacks: number;
}

/** 0 ok, 1 shift enlarged, 2 kept previous factors, 3 identity (no previous factors). */
export interface NativeFactorReport {
  status: 0 | 1 | 2 | 3;
  shift: number;
  attempts: number;
  detail: string;
}

export interface NativeConvGeometry {
  outH: number;
  outW: number;
  padTop: number;
  padLeft: number;
}

export interface NativeLayer {
  /**
   * Dense: x is rows x fanIn row-major, a typed array or a tensor of the layer's backend (read where
   * it lives). Returns false if x holds a non-finite value (nothing stored).
   */
  sketchCovarianceDense(x: NativeOperand, rows: number, sketch: Float32Array | Int32Array | null): boolean;
  /** Conv: x is NHWC [batch, height, width, inChannels] (as for dense). Returns false on non-finite input. */
  sketchCovarianceConv(
    x: NativeOperand,
    batch: number,
    height: number,
    width: number,
    sketch: Float32Array | Int32Array | null,
  ): boolean;
  hasPendingStatistics(): boolean;
  discardPendingStatistics(): void;
  /** Pending C (p x r, or p x p for full covariance) as a copy. */
  readPendingCovariance(): Float32Array;
  writePendingCovariance(c: Float32Array): void;
  commitStatistics(statDecay: number): void;
  /** variant: 0 reference (B L = Y), 1 textbook (B = Y L^-T). */
  nystromFactors(damping: number, variant: 0 | 1): NativeFactorReport;
  /**
   * In place on weight/bias/momentum. scalars = [lr, momentum, weightDecay, nesterov 0|1,
   * decoupledWeightDecay 0|1]. bias/gradBias are null iff the layer has no bias.
   */
  preconditionedMomentumStep(
    weight: Float32Array,
    bias: Float32Array | null,
    gradWeight: Float32Array,
    gradBias: Float32Array | null,
    scalars: Float64Array,
  ): void;
  exportState(): NativeLayerState;
  importState(state: NativeLayerState): void;
  stateBytes(): number;
  /** Idempotent. Any later call (but isDisposed) throws an Error with code ERR_NYSACT_DISPOSED. */
  dispose(): void;
  /** A method, not an accessor: node-addon-api cannot give a wrong-`this` accessor call a coded error. */
  isDisposed(): boolean;
}

/** Backend memory (`Tensor`): device memory on CUDA, 64-byte aligned host memory on the CPU. */
export interface NativeTensor {
  /** Copies src into elements [offset, offset + src.length). */
  upload(src: Float32Array, offset: number): void;
  /** Copies elements [offset, offset + dst.length) into dst. */
  download(dst: Float32Array, offset: number): void;
  fill(value: number): void;
  /** Idempotent; throws ERR_NYSACT_BUSY while an asynchronous step uses the tensor. */
  dispose(): void;
  isDisposed(): boolean;
  length(): number;
  backend(): string;
}

/** An operand of a step: a typed array (host memory, page-locked if from hostBuffer) or a tensor. */
export type NativeOperand = Float32Array | NativeTensor;

/**
 * One whole optimizer step (SPEC §1) over `layers`, in order: commit statistics (`statistics`,
 * preconditioned layers), rebuild the factors (`inverse`), then the fused update. The arrays are
 * parallel to `layers`; biases and biasGrads are null for layers without a bias.
 */
export interface NativeStepPlan {
  layers: NativeLayer[];
  weights: NativeOperand[];
  biases: (NativeOperand | null)[];
  grads: NativeOperand[];
  biasGrads: (NativeOperand | null)[];
  statistics: boolean;
  inverse: boolean;
  statDecay: number;
  damping: number;
  /** 0 reference, 1 textbook. */
  variant: 0 | 1;
  /** [lr, momentum, weightDecay, nesterov 0|1, decoupledWeightDecay 0|1]. */
  scalars: Float64Array;
}

/** Per plan entry: the factor report where factors were rebuilt, else null; empty when no entry rebuilt. */
export type NativeStepPlanResult = (NativeFactorReport | null)[];

export interface NativeBackendInfo {
  name: string;
  available: boolean;
  /** Why the backend is not available; empty when it is. */
  reason: string;
  /** The device it runs on (CUDA: name, compute capability, memory); empty when unknown. */
  device: string;
}

/** Counts of live native objects and the bytes they own (`liveObjects()` returns it as is). */
export interface NativeLiveObjects {
  /** Native layers (one per registered layer of an undisposed optimizer). */
  layers: number;
  /** Bytes of their state. */
  bytes: number;
  /** Undisposed DeviceTensors (collected ones are freed by their finalizer). */
  tensors: number;
  /** Bytes of their memory. */
  tensorBytes: number;
  /** Host buffers from `hostBuffer()` not yet collected. */
  hostBuffers: number;
  /** Bytes of their memory. */
  hostBufferBytes: number;
}

export interface NativeBinding {
  readonly version: string;
  readonly interfaceVersion: number;
  readonly Layer: new (spec: NativeLayerSpec, backend: string) => NativeLayer;
  readonly Tensor: new (length: number, backend: string) => NativeTensor;
  /** x is scanned where it lives (a CUDA tensor on the device). */
  allFinite(x: NativeOperand): boolean;
  /**
   * Runs a whole step on this thread: commits every entry's statistics, rebuilds the factors of
   * all entries that need it in one batch per backend, then runs the fused updates in order. Throws
   * an error with `layerIndex` (the failing entry, -1 when the final synchronisation failed); when
   * an update failed, all statistics and factors and the updates before it have been applied.
   */
  stepPlan(plan: NativeStepPlan): NativeStepPlanResult;
  /**
   * The same on a libuv pool thread. Until the promise settles, the plan's layers and tensors
   * throw ERR_NYSACT_BUSY and every array is referenced (JS must not write them).
   */
  stepPlanAsync(plan: NativeStepPlan): Promise<NativeStepPlanResult>;
  /**
   * A Float32Array over an external ArrayBuffer of backend memory (CPU: 64-byte aligned; CUDA:
   * page-locked), freed by its finalizer. Throws ERR_NYSACT_UNSUPPORTED where the runtime forbids
   * external buffers.
   */
  hostBuffer(length: number, backend: string): Float32Array;
  /** The largest power of two (at most 4096) dividing the address of x's data. */
  byteAlignment(x: Float32Array): number;
  threads(): number;
  setThreads(threads: number): void;
  philoxGaussianSketch(seedHi: number, seedLo: number, layerKey: number, statStep: number, p: number, r: number): Float32Array;
  philoxSubcolumns(seedHi: number, seedLo: number, layerKey: number, statStep: number, p: number, r: number): Int32Array;
  convGeometry(spec: NativeLayerSpec, height: number, width: number): NativeConvGeometry;
  backends(): NativeBackendInfo[];
  /** Live native layers, tensors and host buffers and the bytes they own, for leak tests. */
  liveObjects(): NativeLiveObjects;
  /** Whether this process has tried to load the CUDA backend library (only `backends()` and `'cuda'` layers do). */
  cudaLoadAttempted(): boolean;

  // Benchmark support (binding/cpu/bench_kernels.h): machine probes and the dense reference
  // formulations of SPEC §1, all on the CPU backend's threads. Used by `nysact bench`.

  /** Seconds of each of `repeats` n x n x n SGEMMs (2n³ flops each), after one warm-up. */
  probeSgemm(n: number, repeats: number): Float64Array;
  /** Seconds of each of `repeats` memcpy calls of `bytes` (2·bytes moved each), after one warm-up. */
  probeCopy(bytes: number, repeats: number): Float64Array;
  /** C = X̃ᵀ(X̃ S)/rows with X̃ = [x, 1] materialised when `bias`; sketch and out are p x r. */
  referenceDenseSketch(
    x: Float32Array,
    rows: number,
    fanIn: number,
    bias: boolean,
    sketch: Float32Array,
    r: number,
    out: Float32Array,
  ): void;
  /** The same from an explicit im2col patch matrix of the NHWC input x. */
  referenceIm2colSketch(x: Float32Array, conv: NativeReferenceConv, sketch: Float32Array, r: number, out: Float32Array): void;
  /** Dense P = I·inverseDamping + U diag(c) Uᵀ (p x p, row-major) from U (p x k) and c (k). */
  referenceDensePreconditioner(
    basis: Float32Array,
    coefficients: Float32Array,
    p: number,
    k: number,
    inverseDamping: number,
    out: Float32Array,
  ): void;
  /** V = P G, then coupled weight decay and momentum, in place on p x q weight/momentum; scalars = [lr, momentum, weightDecay]. */
  referenceDenseStep(
    preconditioner: Float32Array,
    p: number,
    q: number,
    weight: Float32Array,
    grad: Float32Array,
    momentum: Float32Array,
    scalars: Float64Array,
  ): void;
}

/** Conv geometry of {@link NativeBinding.referenceIm2colSketch} (padding: 0 valid, 1 same). */
export interface NativeReferenceConv
  extends Pick<NativeLayerSpec, 'kernelH' | 'kernelW' | 'inChannels' | 'strideH' | 'strideW' | 'dilationH' | 'dilationW' | 'padding' | 'bias'> {
  batch: number;
  height: number;
  width: number;
}
