/**
 * Timing, machine probes and the per-layer kernel runs of `nysact bench`. Everything here talks to
 * the native binding directly (like the CLI is allowed to, native.ts): the kernels are timed
 * without the TypeScript optimizer's validation in the way.
 */
import { performance } from 'node:perf_hooks';

import type { NativeBinding, NativeLayer, NativeLayerSpec } from '../native.js';
import type { BenchLayer } from './bench-models.js';

/** How a kernel is timed. */
export interface TimingOptions {
  /** Untimed calls before the samples (caches, page faults, thread pools). */
  warmup: number;
  /** Timed samples; the median and the min–max spread are reported. */
  repeats: number;
  /**
   * A sample shorter than this repeats the call and reports the mean per call, so that
   * microsecond kernels are not timer noise.
   */
  minSampleS: number;
}

/** Seconds per call: median of the samples and their spread. */
export interface Timing {
  medianS: number;
  minS: number;
  maxS: number;
  /** Half the min–max range relative to the median (0.05 = ±5%). */
  spread: number;
  /** Calls per sample (1 unless the call is shorter than `minSampleS`). */
  callsPerSample: number;
  samplesS: number[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Summarises per-call samples (seconds). */
export function summarise(samplesS: number[], callsPerSample = 1): Timing {
  const med = median(samplesS);
  const minS = Math.min(...samplesS);
  const maxS = Math.max(...samplesS);
  return { medianS: med, minS, maxS, spread: med > 0 ? (maxS - minS) / 2 / med : 0, callsPerSample, samplesS };
}

/** Times `fn` (warm-up, calibration of calls per sample, then the samples). */
export function measure(fn: () => void, o: TimingOptions): Timing {
  for (let i = 0; i < o.warmup; i++) fn();
  let t0 = performance.now();
  fn();
  const once = (performance.now() - t0) / 1000;
  const calls = once >= o.minSampleS ? 1 : Math.min(10000, Math.ceil(o.minSampleS / Math.max(once, 1e-7)));
  const samples: number[] = [];
  for (let i = 0; i < o.repeats; i++) {
    t0 = performance.now();
    for (let c = 0; c < calls; c++) fn();
    samples.push((performance.now() - t0) / 1000 / calls);
  }
  return summarise(samples, calls);
}

/** A peak measured in this run: the best sample is the peak, the median is shown beside it. */
export interface Peak {
  /** What was measured, e.g. `Eigen SGEMM 2048³` or `memcpy 256 MiB`. */
  what: string;
  /** Best rate (GFLOP/s for SGEMM, GB/s for copy). */
  rate: number;
  medianRate: number;
  samplesS: number[];
}

/** This machine's SGEMM rate and copy bandwidth, measured on the CPU backend's threads. */
export interface MachinePeaks {
  threads: number;
  sgemm: Peak;
  copy: Peak;
}

/** Sizes of the probes: 2048³ SGEMM and 256 MiB copies by default, 1024³ / 64 MiB with --quick. */
export function probeMachine(native: NativeBinding, quick: boolean, repeats: number): MachinePeaks {
  const n = quick ? 1024 : 2048;
  const bytes = (quick ? 64 : 256) * 2 ** 20;
  const gemm = [...native.probeSgemm(n, repeats)];
  const copy = [...native.probeCopy(bytes, repeats)];
  const flops = 2 * n ** 3;
  const moved = 2 * bytes; // read + write
  return {
    threads: native.threads(),
    sgemm: {
      what: `Eigen SGEMM ${n}³`,
      rate: flops / Math.min(...gemm) / 1e9,
      medianRate: flops / median(gemm) / 1e9,
      samplesS: gemm,
    },
    copy: {
      what: `memcpy ${bytes / 2 ** 20} MiB, read + write`,
      rate: moved / Math.min(...copy) / 1e9,
      medianRate: moved / median(copy) / 1e9,
      samplesS: copy,
    },
  };
}

/** The kernels `nysact bench` measures. */
export const KERNELS = ['sketch', 'factors', 'update'] as const;
export type KernelName = (typeof KERNELS)[number];

/** Sizes of one layer at one batch (SPEC §1 notation). */
export interface LayerGeometry {
  /** Rows of the activation matrix (batch, batch·tokens, or batch·outH·outW). */
  n: number;
  /** Fan-in without bias. */
  p0: number;
  /** Fan-in with bias. */
  p: number;
  q: number;
  /** min(rank, p). */
  r: number;
  /** r == p: the layer keeps the full covariance. */
  full: boolean;
  /** Elements of the layer input (what a statistics step must read at least once). */
  inputElements: number;
}

/** Nominal work of one call; throughput = work / median time. */
export interface Work {
  flops: number;
  bytes: number;
}

/**
 * The work models (documented in `nysact bench --help`):
 * - sketch: the two products X̃ᵀ(X̃ S), 4·n·p·r flops; reads the input once, writes C (p·r).
 * - factors: SᵀY, the triangular solve and the QR-preconditioned SVD of the p x r factor,
 *   7·p·r² + 10·r³ flops (full covariance: a p x p eigendecomposition, 9·p³); reads EMA and
 *   sketch, writes U.
 * - update: the low-rank apply 4·p·q·r flops + 6 per parameter; reads G, θ, momentum and
 *   writes θ, momentum: 20 bytes per parameter (p·q parameters, bias included).
 * The dense references do the same useful work plus: forming P (2·p²·r flops, p² floats written)
 * for factors; V = P·G (2·p²·q flops, reading P) instead of the low-rank apply for update.
 */
export function workOf(kernel: KernelName, g: LayerGeometry, reference: boolean): Work {
  switch (kernel) {
    case 'sketch':
      return { flops: 4 * g.n * g.p * g.r, bytes: 4 * (g.inputElements + 2 * g.p * g.r) };
    case 'factors': {
      const flops = g.full ? 9 * g.p ** 3 : 7 * g.p * g.r ** 2 + 10 * g.r ** 3;
      const bytes = 4 * 3 * g.p * g.r;
      return reference ? { flops: flops + 2 * g.p ** 2 * g.r, bytes: bytes + 4 * g.p ** 2 } : { flops, bytes };
    }
    case 'update':
      return reference
        ? { flops: 2 * g.p ** 2 * g.q + 6 * g.p * g.q, bytes: 20 * g.p * g.q + 4 * g.p ** 2 }
        : { flops: 4 * g.p * g.q * g.r + 6 * g.p * g.q, bytes: 20 * g.p * g.q };
  }
}

/** What `--rank`, seeds and scalars the runs use. */
export interface RunSettings {
  batch: number;
  rank: number;
  timing: TimingOptions;
  reference: boolean;
  kernels: readonly KernelName[];
}

/** One timed formulation of a kernel. */
export interface Measurement {
  /** What was timed, e.g. `patch-free sketch` or `im2col patch matrix + 2 GEMMs`. */
  formulation: string;
  time: Timing;
  work: Work;
  gflops: number;
  gbs: number;
  /**
   * Parts of the call timed alone, for diagnosis (sketch: `philoxDraw`, drawing the p x r gaussian
   * S, which both formulations do on every statistics step).
   */
  components?: Record<string, Timing>;
}

/** Every measurement of one kernel on one layer shape. */
export interface KernelRun {
  kernel: KernelName;
  ours: Measurement;
  /** The dense reference formulation (CPU only), or null. */
  reference: Measurement | null;
}

function randomArray(n: number, seed: number, scale: number): Float32Array {
  // xorshift32 -> uniform(-scale, scale): cheap and deterministic.
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    a[i] = (s / 2147483648 - 1) * scale;
  }
  return a;
}

function measurement(formulation: string, time: Timing, work: Work): Measurement {
  return { formulation, time, work, gflops: work.flops / time.medianS / 1e9, gbs: work.bytes / time.medianS / 1e9 };
}

const SEED_LO = 1234;
const STAT_DECAY = 0.95;
const DAMPING = 1.0;
// lr, momentum, weight decay, nesterov, decoupled: small lr so thousands of timed calls stay finite.
const STEP_SCALARS = [1e-3, 0.9, 5e-4, 0, 0];

/** The native spec and geometry of a benchmark layer. */
export function layerSetup(
  native: NativeBinding,
  layer: BenchLayer,
  batch: number,
  rank: number,
  key: number,
): { spec: NativeLayerSpec; geometry: LayerGeometry } {
  const s = layer.shape;
  const isConv = s.kind === 'conv';
  const spec: NativeLayerSpec = {
    kind: isConv ? 1 : 0,
    fanIn: isConv ? s.kernelH * s.kernelW * s.inChannels : s.inFeatures,
    fanOut: isConv ? s.outChannels : s.outFeatures,
    bias: s.bias,
    rank,
    sketch: 0,
    layout: 0,
    kernelH: isConv ? s.kernelH : 1,
    kernelW: isConv ? s.kernelW : 1,
    inChannels: isConv ? s.inChannels : 0,
    strideH: isConv ? s.strideH : 1,
    strideW: isConv ? s.strideW : 1,
    dilationH: isConv ? s.dilationH : 1,
    dilationW: isConv ? s.dilationW : 1,
    padding: isConv && s.padding === 'same' ? 1 : 0,
    size: 0,
    seedHi: 0,
    seedLo: SEED_LO,
    layerKey: key,
  };
  const p = spec.fanIn + (spec.bias ? 1 : 0);
  const r = Math.min(rank, p);
  let n: number;
  let inputElements: number;
  if (isConv) {
    const g = native.convGeometry(spec, s.height, s.width);
    n = batch * g.outH * g.outW;
    inputElements = batch * s.height * s.width * s.inChannels;
  } else {
    n = batch * s.tokens;
    inputElements = n * s.inFeatures;
  }
  return { spec, geometry: { n, p0: spec.fanIn, p, q: spec.fanOut, r, full: r === p, inputElements } };
}

/**
 * Measures the selected kernels of one layer shape on one backend (and the dense references on
 * the CPU). Frees every native layer it creates.
 */
export function runLayer(
  native: NativeBinding,
  backend: string,
  layer: BenchLayer,
  key: number,
  settings: RunSettings,
  onKernel: (kernel: KernelName, formulation: 'ours' | 'reference') => void,
): { geometry: LayerGeometry; runs: KernelRun[] } {
  const { spec, geometry: g } = layerSetup(native, layer, settings.batch, settings.rank, key);
  const s = layer.shape;
  const x = randomArray(g.inputElements, 17 + key, 1);
  // The sketch a statistics step draws (full-covariance layers: the identity, drawn once).
  let identity: Float32Array | null = null;
  const sketchOf = (): Float32Array => {
    if (!g.full) return native.philoxGaussianSketch(0, SEED_LO, key, 0, g.p, g.r);
    if (identity === null) {
      identity = new Float32Array(g.p * g.p);
      for (let i = 0; i < g.p; i++) identity[i * g.p + i] = 1;
    }
    return identity;
  };
  const withReference = settings.reference && backend === 'cpu';
  const runs: KernelRun[] = [];
  const nativeLayer: NativeLayer = new native.Layer(spec, backend);
  try {
    const sketch =
      s.kind === 'conv'
        ? () => nativeLayer.sketchCovarianceConv(x, settings.batch, s.height, s.width, null)
        : () => nativeLayer.sketchCovarianceDense(x, g.n, null);

    if (settings.kernels.includes('sketch')) {
      onKernel('sketch', 'ours');
      const ours = measurement(
        s.kind === 'conv' ? 'patch-free conv sketch (with the Philox draw of S)' : 'dense sketch (with the Philox draw of S)',
        measure(sketch, settings.timing),
        workOf('sketch', g, false),
      );
      if (!g.full) ours.components = { philoxDraw: measure(sketchOf, settings.timing) };
      let reference: Measurement | null = null;
      if (withReference) {
        onKernel('sketch', 'reference');
        const out = new Float32Array(g.p * g.r);
        const fn =
          s.kind === 'conv'
            ? () =>
                native.referenceIm2colSketch(
                  x,
                  {
                    batch: settings.batch,
                    height: s.height,
                    width: s.width,
                    kernelH: s.kernelH,
                    kernelW: s.kernelW,
                    inChannels: s.inChannels,
                    strideH: s.strideH,
                    strideW: s.strideW,
                    dilationH: s.dilationH,
                    dilationW: s.dilationW,
                    padding: s.padding === 'same' ? 1 : 0,
                    bias: s.bias,
                  },
                  sketchOf(),
                  g.r,
                  out,
                )
            : () => native.referenceDenseSketch(x, g.n, g.p0, s.bias, sketchOf(), g.r, out);
        const formulation = s.kind === 'conv' ? 'Philox draw + im2col patch matrix + 2 GEMMs' : 'Philox draw + [X, 1] + 2 GEMMs';
        reference = measurement(formulation, measure(fn, settings.timing), workOf('sketch', g, true));
      }
      runs.push({ kernel: 'sketch', ours, reference });
    }

    const needFactors = settings.kernels.includes('factors') || settings.kernels.includes('update');
    if (!needFactors) return { geometry: g, runs };
    sketch();
    nativeLayer.commitStatistics(STAT_DECAY);
    const factors = () => {
      nativeLayer.nystromFactors(DAMPING, 0);
    };
    factors();
    const state = nativeLayer.exportState();
    const k = state.coefficients.length;
    const P = withReference ? new Float32Array(g.p * g.p) : new Float32Array(0);
    const formP = () => native.referenceDensePreconditioner(state.basis, state.coefficients, g.p, k, state.inverseDamping, P);
    if (withReference) formP();

    if (settings.kernels.includes('factors')) {
      onKernel('factors', 'ours');
      const ours = measurement(g.full ? 'eigendecomposition (full covariance)' : 'Nyström factors (U, coefficients)', measure(factors, settings.timing), workOf('factors', g, false));
      let reference: Measurement | null = null;
      if (withReference) {
        onKernel('factors', 'reference');
        const fn = () => {
          factors();
          formP();
        };
        reference = measurement('same factors + dense P (p×p)', measure(fn, settings.timing), workOf('factors', g, true));
      }
      runs.push({ kernel: 'factors', ours, reference });
    }

    if (settings.kernels.includes('update')) {
      const weight = randomArray(g.p0 * g.q, 100 + key, 0.1);
      const grad = randomArray(g.p0 * g.q, 200 + key, 0.01);
      const bias = s.bias ? new Float32Array(g.q) : null;
      const gradBias = s.bias ? randomArray(g.q, 300 + key, 0.01) : null;
      const scalars = new Float64Array(STEP_SCALARS);
      onKernel('update', 'ours');
      const fn = () => nativeLayer.preconditionedMomentumStep(weight, bias, grad, gradBias, scalars);
      const ours = measurement('fused low-rank update', measure(fn, settings.timing), workOf('update', g, false));
      let reference: Measurement | null = null;
      if (withReference) {
        onKernel('update', 'reference');
        const w = randomArray(g.p * g.q, 400 + key, 0.1);
        const gr = randomArray(g.p * g.q, 500 + key, 0.01);
        const m = new Float32Array(g.p * g.q);
        const sc = new Float64Array(STEP_SCALARS.slice(0, 3));
        const ref = () => native.referenceDenseStep(P, g.p, g.q, w, gr, m, sc);
        reference = measurement('dense P·G (p×p·p×q) + momentum', measure(ref, settings.timing), workOf('update', g, true));
      }
      runs.push({ kernel: 'update', ours, reference });
    }
    return { geometry: g, runs };
  } finally {
    nativeLayer.dispose();
  }
}
