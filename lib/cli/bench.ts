/**
 * `nysact bench`: microbenchmarks of every kernel (sketch, Nyström factors, fused update) on every
 * usable backend, for preset or custom layer shapes, against the dense reference formulations and
 * this machine's SGEMM rate and copy bandwidth, all measured in the same run.
 */
import * as os from 'node:os';

import { loadNative } from '../loader.js';
import type { NativeBinding } from '../native.js';
import {
  ExitCode,
  UsageError,
  choiceOption,
  integerOption,
  listOption,
  parseCommandLine,
  progress,
} from './args.js';
import {
  KERNELS,
  probeMachine,
  runLayer,
  type KernelName,
  type LayerGeometry,
  type MachinePeaks,
  type Measurement,
  type RunSettings,
} from './bench-harness.js';
import {
  CONV_KEYS,
  DEFAULT_CUSTOM_BATCH,
  DENSE_KEYS,
  PRESET_NAMES,
  groupLayers,
  parseConv,
  parseDense,
  presetModel,
  type BenchLayer,
  type BenchModel,
  type LayerShape,
} from './bench-models.js';
import { cpuFacts } from './system.js';

const DEFAULTS = Object.freeze({
  preset: 'resnet32-cifar',
  rank: 10,
  repeats: 5,
  quickRepeats: 3,
  warmup: 1,
  minSampleS: 0.005,
  quickMinSampleS: 0.001,
  tcov: 5,
  tinv: 50,
});

const HELP = `Usage: nysact bench [options]

Microbenchmarks every NysAct kernel on every usable backend, for the layers of a network:
  sketch   C = Xᵀ(X S)/n of one statistics step (dense; conv without building the patch matrix)
  factors  the Nyström factors (U, coefficients) of one inverse step
  update   the fused preconditioned momentum step (never forms the p×p preconditioner)
Each is timed after a warm-up as the median of repeated runs (± half the min-max range), and
reported in GFLOP/s and GB/s and as a fraction of this machine's own peaks, probed in the same run:
an SGEMM on the backend's threads (the same Eigen build as the backend) and a memcpy (read + write).
On the CPU, a dense reference formulation of each kernel runs as a baseline in the same run: the
sketch from an explicit [X, 1] or im2col patch matrix, factors plus the dense p×p P, and V = P·G.
Per network, the step totals (Σ count × median) give the statistics, inverse, ordinary and
amortized step times of the optimizer against the reference.

Shapes (default: --preset ${DEFAULTS.preset}):
  --preset NAME     ${PRESET_NAMES.join(' | ')} (repeatable). Default batches:
                    resnet32-cifar 128, mlp 128 (their training batches), resnet50-imagenet 8,
                    deit-s 8 (kernels are linear in the batch; give --batch for more)
  --dense SPEC      a dense layer IN x OUT, e.g. 1024x1000 or 384x1536:tokens=197,bias=0
                    (keys: ${DENSE_KEYS.join(', ')}; tokens = rows per sample, default 1; bias default 1)
  --conv SPEC       a conv layer CIN x COUT, e.g. 64x64:k=3,hw=56 or 3x64:k=7,s=2,hw=224
                    (keys: ${CONV_KEYS.join(', ')}; k kernel (3), hw input size (required), s stride (1),
                    d dilation (1), pad same|valid (same), bias 0|1 (0)). Repeatable, like --dense;
                    custom shapes form one model "custom" at batch ${DEFAULT_CUSTOM_BATCH} unless --batch
  --batch N         batch size for every model
  --rank R          sketch rank (default ${DEFAULTS.rank})

What to run:
  --kernels LIST    comma-separated subset of ${KERNELS.join(',')} (default all)
  --backend NAME    all (default: every usable backend) or one backend name (cpu, cuda)
  --threads N       threads of the CPU backend (default: what it uses now)
  --no-reference    skip the dense reference formulations
  --no-probes       skip the SGEMM / copy peak probes (no fractions of peak)

Timing:
  --repeats N       timed samples per kernel (default ${DEFAULTS.repeats}; ${DEFAULTS.quickRepeats} with --quick)
  --warmup N        untimed calls first (default ${DEFAULTS.warmup})
  --quick           ${DEFAULTS.quickRepeats} repeats, 1024³ SGEMM and 64 MiB copy probes (instead of 2048³ and
                    256 MiB), samples of at least 1 ms instead of 5 ms
  --tcov N, --tinv N  statistics / inverse period for the amortized total (default ${DEFAULTS.tcov}, ${DEFAULTS.tinv})

Output:
  --json            one JSON object on stdout (progress still goes to stderr)
  --quiet           no progress on stderr
  -h, --help        show this help

Work models (throughput = work / median time): sketch 4·n·p·r flops, reads the input once;
factors 7·p·r² + 10·r³ flops (full covariance: 9·p³); update 4·p·q·r + 6·p·q flops and 20 bytes per
parameter (reads G, θ, momentum; writes θ, momentum). n rows, p fan-in (+1 bias), q fan-out,
r = min(rank, p). "of peak" compares sketch and factors with SGEMM, update with copy bandwidth.

Examples:
  nysact bench --quick
  nysact bench --preset deit-s --kernels sketch,update --json > deit.json
  nysact bench --dense 1024x1000 --conv 64x64:k=3,hw=56 --batch 128`;

/** A measurement with its fractions of this run's peaks (null without probes or off the CPU). */
export interface RatedMeasurement extends Measurement {
  fractionOfSgemm: number | null;
  fractionOfCopy: number | null;
}

/** One kernel on one layer shape of one model on one backend. */
export interface BenchResult {
  backend: string;
  model: string;
  layer: string;
  count: number;
  kernel: KernelName;
  ours: RatedMeasurement;
  reference: RatedMeasurement | null;
  /** reference median / ours median. */
  speedup: number | null;
}

/** Σ count × median per step kind, ours and reference (null when a kernel was not run). */
export interface StepTotals {
  statisticsStepS: number | null;
  inverseStepS: number | null;
  ordinaryStepS: number | null;
  amortizedS: number | null;
}

/** Step totals of one model on one backend. */
export interface BenchTotals {
  backend: string;
  model: string;
  ours: StepTotals;
  reference: StepTotals | null;
  /** Reference / ours for the amortized step (null when either is missing). */
  amortizedSpeedup: number | null;
}

/** The `nysact bench --json` object. */
export interface BenchReport {
  nysact: { version: string; interfaceVersion: number };
  settings: {
    rank: number;
    repeats: number;
    warmup: number;
    minSampleS: number;
    quick: boolean;
    kernels: KernelName[];
    reference: boolean;
    probes: boolean;
    tcov: number;
    tinv: number;
    threads: number;
  };
  machine: {
    cpu: { model: string; logicalCpus: number };
    /** 1-minute load average at the start and the end of the run (os.loadavg; 0 where unsupported). */
    loadAverage: { start: number; end: number };
    peaks: MachinePeaks | null;
  };
  /** Every backend of the build; `device` is what the backend reports about its device ('' if nothing). */
  backends: Array<{ name: string; available: boolean; reason: string; device: string; benchmarked: boolean }>;
  models: Array<{
    name: string;
    description: string;
    batch: number;
    layers: Array<{ name: string; count: number; shape: LayerShape; geometry: LayerGeometry }>;
  }>;
  results: BenchResult[];
  totals: BenchTotals[];
  errors: Array<{ backend: string; model: string; layer: string; message: string }>;
}

interface BenchOptions {
  models: BenchModel[];
  rank: number;
  kernels: KernelName[];
  backend: string;
  threads: number | null;
  reference: boolean;
  probes: boolean;
  repeats: number;
  warmup: number;
  quick: boolean;
  tcov: number;
  tinv: number;
  json: boolean;
  quiet: boolean;
}

function parseOptions(argv: string[]): BenchOptions | null {
  const v = parseCommandLine('bench', argv, {
    preset: { type: 'string', multiple: true },
    dense: { type: 'string', multiple: true },
    conv: { type: 'string', multiple: true },
    batch: { type: 'string' },
    rank: { type: 'string' },
    kernels: { type: 'string' },
    backend: { type: 'string' },
    threads: { type: 'string' },
    'no-reference': { type: 'boolean' },
    'no-probes': { type: 'boolean' },
    repeats: { type: 'string' },
    warmup: { type: 'string' },
    quick: { type: 'boolean' },
    tcov: { type: 'string' },
    tinv: { type: 'string' },
    json: { type: 'boolean' },
    quiet: { type: 'boolean' },
  });
  if (v.help) return null;
  const int = (name: string, raw: string | undefined, fallback: number, min: number, max: number) =>
    raw === undefined ? fallback : integerOption('bench', name, raw, min, max);
  const batch = v.batch === undefined ? undefined : integerOption('bench', 'batch', v.batch, 1, 1 << 16);
  const models: BenchModel[] = [];
  const presets = (v.preset ?? []).map((p) => choiceOption('bench', 'preset', p, PRESET_NAMES));
  for (const name of new Set(presets)) {
    const model = presetModel(name);
    models.push(batch === undefined ? model : { ...model, batch });
  }
  const custom: LayerShape[] = [...(v.dense ?? []).map(parseDense), ...(v.conv ?? []).map(parseConv)];
  if (custom.length > 0) {
    models.push({
      name: 'custom',
      description: 'the --dense / --conv shapes',
      batch: batch ?? DEFAULT_CUSTOM_BATCH,
      layers: groupLayers(custom),
    });
  }
  if (models.length === 0) {
    const model = presetModel(DEFAULTS.preset as (typeof PRESET_NAMES)[number]);
    models.push(batch === undefined ? model : { ...model, batch });
  }
  const quick = v.quick === true;
  return {
    models,
    rank: int('rank', v.rank, DEFAULTS.rank, 1, 4096),
    kernels: v.kernels === undefined ? [...KERNELS] : listOption('bench', 'kernels', v.kernels, KERNELS),
    backend: v.backend ?? 'all',
    threads: v.threads === undefined ? null : integerOption('bench', 'threads', v.threads, 1, 1024),
    reference: v['no-reference'] !== true,
    probes: v['no-probes'] !== true,
    repeats: int('repeats', v.repeats, quick ? DEFAULTS.quickRepeats : DEFAULTS.repeats, 1, 1000),
    warmup: int('warmup', v.warmup, DEFAULTS.warmup, 0, 1000),
    quick,
    tcov: int('tcov', v.tcov, DEFAULTS.tcov, 1, 1 << 20),
    tinv: int('tinv', v.tinv, DEFAULTS.tinv, 1, 1 << 20),
    json: v.json === true,
    quiet: v.quiet === true,
  };
}

function selectBackends(native: NativeBinding, requested: string): { run: string[]; report: BenchReport['backends'] } {
  const all = native.backends();
  if (requested !== 'all' && !all.some((b) => b.name === requested)) {
    throw new UsageError(
      `nysact bench: expected all or one of ${all.map((b) => b.name).join(', ')} for --backend but received '${requested}'`,
    );
  }
  const chosen = all.filter((b) => (requested === 'all' || b.name === requested) && b.available).map((b) => b.name);
  if (requested !== 'all' && chosen.length === 0) {
    const b = all.find((x) => x.name === requested);
    throw new Error(`backend '${requested}' is not usable on this machine: ${b?.reason ?? 'unknown reason'}`);
  }
  return {
    run: chosen,
    report: all.map((b) => {
      const device = (b as unknown as Record<string, unknown>).device;
      return {
        name: b.name,
        available: b.available,
        reason: b.reason,
        device: typeof device === 'string' ? device : '',
        benchmarked: chosen.includes(b.name),
      };
    }),
  };
}

function busyWarning(load: number, cpus: number): string {
  return (
    `warning: this machine is busy (load average ${load.toFixed(1)} on ${cpus} CPUs): parallel kernels wait for ` +
    'CPU time slices and their timings are inflated and noisy (--threads 1 is steadier)'
  );
}

function rate(m: Measurement, peaks: MachinePeaks | null, backend: string): RatedMeasurement {
  const cpuPeaks = backend === 'cpu' ? peaks : null;
  return {
    ...m,
    fractionOfSgemm: cpuPeaks ? m.gflops / cpuPeaks.sgemm.rate : null,
    fractionOfCopy: cpuPeaks ? m.gbs / cpuPeaks.copy.rate : null,
  };
}

function totalsOf(results: BenchResult[], which: 'ours' | 'reference', tcov: number, tinv: number): StepTotals | null {
  const sum = (kernel: KernelName): number | null => {
    const rs = results.filter((r) => r.kernel === kernel);
    if (rs.length === 0) return null;
    let total = 0;
    for (const r of rs) {
      const m = r[which];
      if (m === null) return null;
      total += r.count * m.time.medianS;
    }
    return total;
  };
  const statisticsStepS = sum('sketch');
  const inverseStepS = sum('factors');
  const ordinaryStepS = sum('update');
  if (which === 'reference' && statisticsStepS === null && inverseStepS === null && ordinaryStepS === null) return null;
  const amortizedS =
    statisticsStepS !== null && inverseStepS !== null && ordinaryStepS !== null
      ? ordinaryStepS + statisticsStepS / tcov + inverseStepS / tinv
      : null;
  return { statisticsStepS, inverseStepS, ordinaryStepS, amortizedS };
}

/** Runs the benchmark described by `o` (progress on stderr unless quiet). */
export function runBench(native: NativeBinding, o: BenchOptions): BenchReport {
  const say = (message: string) => progress(!o.quiet, message);
  if (o.threads !== null) native.setThreads(o.threads);
  const cpu = cpuFacts();
  const loadStart = os.loadavg()[0];
  if (loadStart > cpu.availableParallelism - 0.5) say(busyWarning(loadStart, cpu.availableParallelism));
  const backends = selectBackends(native, o.backend);
  const timing = {
    warmup: o.warmup,
    repeats: o.repeats,
    minSampleS: o.quick ? DEFAULTS.quickMinSampleS : DEFAULTS.minSampleS,
  };
  let peaks: MachinePeaks | null = null;
  if (o.probes) {
    say(`probing this machine: ${o.quick ? '1024³' : '2048³'} SGEMM and ${o.quick ? 64 : 256} MiB copy on ${native.threads()} threads…`);
    peaks = probeMachine(native, o.quick, Math.max(3, o.repeats));
  }
  const report: BenchReport = {
    nysact: { version: native.version, interfaceVersion: native.interfaceVersion },
    settings: {
      rank: o.rank,
      repeats: o.repeats,
      warmup: o.warmup,
      minSampleS: timing.minSampleS,
      quick: o.quick,
      kernels: o.kernels,
      reference: o.reference,
      probes: o.probes,
      tcov: o.tcov,
      tinv: o.tinv,
      threads: native.threads(),
    },
    machine: {
      cpu: { model: cpu.model, logicalCpus: cpu.logicalCpus },
      loadAverage: { start: loadStart, end: loadStart },
      peaks,
    },
    backends: backends.report,
    models: [],
    results: [],
    totals: [],
    errors: [],
  };
  const jobs: Array<{ backend: string; model: BenchModel; layer: BenchLayer; key: number }> = [];
  for (const backend of backends.run) {
    for (const model of o.models) model.layers.forEach((layer, i) => jobs.push({ backend, model, layer, key: i + 1 }));
  }
  const geometries = new Map<string, LayerGeometry>();
  jobs.forEach((job, index) => {
    const settings: RunSettings = { batch: job.model.batch, rank: o.rank, timing, reference: o.reference, kernels: o.kernels };
    const label = `[${index + 1}/${jobs.length}] ${job.backend} ${job.model.name} ${job.layer.name}${job.layer.count > 1 ? ` (×${job.layer.count})` : ''}`;
    try {
      const { geometry, runs } = runLayer(native, job.backend, job.layer, job.key, settings, (kernel, formulation) =>
        say(`${label}: ${kernel}${formulation === 'reference' ? ' (dense reference)' : ''}…`),
      );
      geometries.set(`${job.model.name}\u0000${job.layer.name}`, geometry);
      for (const run of runs) {
        const ours = rate(run.ours, peaks, job.backend);
        const reference = run.reference ? rate(run.reference, peaks, job.backend) : null;
        report.results.push({
          backend: job.backend,
          model: job.model.name,
          layer: job.layer.name,
          count: job.layer.count,
          kernel: run.kernel,
          ours,
          reference,
          speedup: reference ? reference.time.medianS / ours.time.medianS : null,
        });
      }
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      say(`${label}: FAILED: ${message}`);
      report.errors.push({ backend: job.backend, model: job.model.name, layer: job.layer.name, message });
    }
  });
  report.machine.loadAverage.end = os.loadavg()[0];
  for (const model of o.models) {
    report.models.push({
      name: model.name,
      description: model.description,
      batch: model.batch,
      layers: model.layers.flatMap((l) => {
        const geometry = geometries.get(`${model.name}\u0000${l.name}`);
        return geometry ? [{ name: l.name, count: l.count, shape: l.shape, geometry }] : [];
      }),
    });
    for (const backend of backends.run) {
      const rs = report.results.filter((r) => r.backend === backend && r.model === model.name);
      if (rs.length === 0) continue;
      const ours = totalsOf(rs, 'ours', o.tcov, o.tinv) as StepTotals;
      const reference = totalsOf(rs, 'reference', o.tcov, o.tinv);
      report.totals.push({
        backend,
        model: model.name,
        ours,
        reference,
        amortizedSpeedup:
          reference?.amortizedS != null && ours.amortizedS !== null ? reference.amortizedS / ours.amortizedS : null,
      });
    }
  }
  return report;
}

// ------------------------------------------------------------------------------------------------
// The table for people.

function duration(s: number | null): string {
  if (s === null) return '—';
  if (s < 1e-3) return `${(s * 1e6).toFixed(1)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

function fixed(x: number, digits = 1): string {
  return x >= 1000 ? x.toFixed(0) : x.toFixed(digits);
}

function percent(x: number | null): string {
  return x === null ? '—' : `${(100 * x).toFixed(x < 0.1 ? 1 : 0)}%`;
}

function table(header: string[], rows: string[][], leftColumns: number): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i < leftColumns ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

/** The human-readable report. */
export function formatBench(r: BenchReport): string {
  const out: string[] = [];
  const s = r.settings;
  out.push(
    `nysact ${r.nysact.version} bench: rank ${s.rank}, ${s.repeats} repeats after ${s.warmup} warm-up (median ± half range), ` +
      `${s.threads} CPU threads, ${r.machine.cpu.model}`,
  );
  if (r.machine.peaks) {
    const p = r.machine.peaks;
    out.push(
      `peaks measured in this run: SGEMM ${fixed(p.sgemm.rate)} GFLOP/s (${p.sgemm.what}; median ${fixed(p.sgemm.medianRate)}), ` +
        `copy ${fixed(p.copy.rate)} GB/s (${p.copy.what}; median ${fixed(p.copy.medianRate)})`,
    );
  } else {
    out.push('peaks: not probed (--no-probes)');
  }
  const load = Math.max(r.machine.loadAverage.start, r.machine.loadAverage.end);
  if (load > r.machine.cpu.logicalCpus - 0.5) out.push(busyWarning(load, r.machine.cpu.logicalCpus));
  for (const b of r.backends) if (!b.benchmarked && !b.available) out.push(`backend ${b.name} skipped: ${b.reason}`);
  for (const model of r.models) {
    for (const backend of r.backends.filter((b) => b.benchmarked)) {
      const rs = r.results.filter((x) => x.model === model.name && x.backend === backend.name);
      if (rs.length === 0) continue;
      const device = backend.device !== '' ? ` (${backend.device})` : '';
      out.push('', `${model.name} — ${model.description}; batch ${model.batch}; backend ${backend.name}${device}`);
      const rows = rs.map((x) => {
        const roof = x.kernel === 'update' ? x.ours.fractionOfCopy : x.ours.fractionOfSgemm;
        return [
          x.kernel,
          x.layer,
          `${x.count}`,
          duration(x.ours.time.medianS),
          `±${percent(x.ours.time.spread)}`,
          fixed(x.ours.gflops),
          fixed(x.ours.gbs),
          roof === null ? '—' : `${percent(roof)} ${x.kernel === 'update' ? 'copy' : 'SGEMM'}`,
          x.reference ? duration(x.reference.time.medianS) : '—',
          x.speedup === null ? '—' : `${x.speedup.toFixed(1)}×`,
        ];
      });
      out.push(
        table(['kernel', 'layer', '×', 'median', 'spread', 'GFLOP/s', 'GB/s', 'of peak', 'reference', 'speedup'], rows, 2),
      );
      const draws = rs.filter((x) => x.kernel === 'sketch');
      if (draws.some((x) => x.ours.components?.philoxDraw)) {
        const drawS = draws.reduce((a, x) => a + x.count * (x.ours.components?.philoxDraw?.medianS ?? 0), 0);
        const sketchS = draws.reduce((a, x) => a + x.count * x.ours.time.medianS, 0);
        out.push(
          `(sketch times include drawing S with Philox: ${duration(drawS)} of the ${duration(sketchS)} statistics step, measured alone)`,
        );
      }
      const t = r.totals.find((x) => x.model === model.name && x.backend === backend.name);
      if (t) {
        const line = (label: string, key: keyof StepTotals): string[] => {
          const ours = t.ours[key];
          const ref = t.reference ? t.reference[key] : null;
          return [label, duration(ours), duration(ref), ours !== null && ref !== null ? `${(ref / ours).toFixed(1)}×` : '—'];
        };
        out.push(
          '',
          table(
            ['per step (Σ count × median)', 'nysact', 'reference', 'speedup'],
            [
              line('statistics step (sketch)', 'statisticsStepS'),
              line('inverse step (factors)', 'inverseStepS'),
              line('ordinary step (update)', 'ordinaryStepS'),
              line(`amortized (tcov ${s.tcov}, tinv ${s.tinv})`, 'amortizedS'),
            ],
            1,
          ),
        );
      }
    }
  }
  if (r.models.some((m) => m.layers.length > 0) && s.reference) {
    out.push(
      '',
      'reference = the dense formulation on the same threads: sketch from an explicit [X, 1] / im2col patch matrix,',
      'factors + the dense p×p P, update V = P·G + momentum. "of peak": sketch and factors vs SGEMM, update vs copy.',
    );
  }
  for (const e of r.errors) out.push(`FAILED ${e.backend} ${e.model} ${e.layer}: ${e.message}`);
  return out.join('\n');
}

/** `nysact bench`. */
export async function main(argv: string[]): Promise<number> {
  const o = parseOptions(argv);
  if (o === null) {
    process.stdout.write(`${HELP}\n`);
    return ExitCode.OK;
  }
  const native = loadNative();
  const missing = (['probeSgemm', 'probeCopy', 'referenceDenseSketch'] as const).filter((f) => typeof native[f] !== 'function');
  if (missing.length > 0) {
    throw new Error(`the loaded native addon has no ${missing.join(', ')} (a stale build?): rebuild with npm run build:native`);
  }
  const report = runBench(native, o);
  process.stdout.write(o.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatBench(report)}\n`);
  return report.errors.length === 0 ? ExitCode.OK : ExitCode.FAILURE;
}
