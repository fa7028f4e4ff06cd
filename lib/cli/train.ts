/**
 * `nysact train`: trains one model on Fashion-MNIST with NysAct, SGD-momentum and Adam under the
 * same budget (same initial weights, same batches, same epochs) in one tfjs loop, prints a table
 * (test accuracy, loss, wall time per epoch, time per step, optimizer time per step) and writes the
 * curves as an SVG.
 *
 * A small CNN (two 3×3 convs with pooling, two dense layers) on @tensorflow/tfjs-node when it is
 * installed; a 784-128-10 MLP on a training subset with the pure-JS backend otherwise (too slow
 * for convolutions).
 */
import * as fs from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import type * as tfjs from '@tensorflow/tfjs';

import { findFashionMnist, type FashionData } from './fashion-data.js';
import { renderSvg, type Series } from './plot.js';

type TF = typeof tfjs;
type OptimizerName = 'nysact' | 'sgd' | 'adam';
const OPTIMIZERS: readonly OptimizerName[] = ['nysact', 'sgd', 'adam'];
const LABELS: Record<OptimizerName, string> = { nysact: 'NysAct', sgd: 'SGD-momentum', adam: 'Adam' };
const COLORS: Record<OptimizerName, string> = { nysact: '#d62728', sgd: '#1f77b4', adam: '#2ca02c' };

export const USAGE = `Usage: nysact train [options]

Trains a model on Fashion-MNIST with NysAct, SGD-momentum and Adam under the same budget (same
initial weights, same batches, same epochs), prints a results table and writes the curves as SVG.
Model: a small CNN on @tensorflow/tfjs-node when it is installed, else a 784-128-10 MLP on the
pure-JS backend (which is too slow for convolutions).

Data:
  --data DIR             Fashion-MNIST gzip'd IDX files (default /usr/share/datasets/fashion-mnist,
                         else the embedded 2000/500-image subset)
  --train N              use the first N training images (default: all)
  --validation N         hold out the last N training images and report validation accuracy
                         instead of test accuracy (for hyperparameter sweeps)

Budget:
  --epochs N             epochs (default 3)
  --batch N              batch size (default 128)
  --seeds N              number of seeds, run as seed, seed+1, ... (default 1)
  --seed S               first seed (default 0)
  --optimizers LIST      comma-separated subset of nysact,sgd,adam (default all three)
  --model cnn|mlp        default: cnn with tfjs-node, mlp otherwise
  --tfjs auto|node|js    which TensorFlow.js to load (default auto: tfjs-node if installed)

Hyperparameters (defaults: the choices of bench/fashion.js's validation sweep):
  --lr X                 NysAct learning rate (default 0.05)
  --damping X            NysAct damping rho (default 0.3)
  --rank N               NysAct sketch rank (default 20)
  --tcov N               NysAct statistics interval (default 5)
  --tinv N               NysAct inverse interval (default 10)
  --weight-decay X       NysAct weight decay (default 0, as tfjs's SGD and Adam have none)
  --nystrom KIND         NysAct Nystrom variant: reference (SPEC §1, default) or textbook
  --sgd-lr X             SGD-momentum learning rate (default 0.05, momentum 0.9)
  --adam-lr X            Adam learning rate (default 0.003)
  --schedule KIND        learning-rate schedule, the same for all three optimizers: cosine
                         (default; per step from the learning rate down to 0 at the end of the
                         last epoch) or constant

Output:
  --out FILE             SVG of the curves (default nysact-train.svg; 'none' to skip)
  --json FILE            write every run's results as JSON
  --quiet                no progress on stderr
  -h, --help             this help

Exit codes: 0 done, 1 failure, 2 bad arguments.
`;

/** A bad command line: printed with the usage, exit code 2. */
export class UsageError extends Error {}

export interface TrainArgs {
  data?: string;
  train?: number;
  validation: number;
  epochs?: number;
  batch: number;
  seeds: number;
  seed: number;
  optimizers: OptimizerName[];
  model?: 'cnn' | 'mlp';
  tfjs: 'auto' | 'node' | 'js';
  lr: number;
  damping: number;
  rank: number;
  tcov: number;
  tinv: number;
  weightDecay: number;
  nystrom: 'reference' | 'textbook';
  sgdLr: number;
  adamLr: number;
  schedule: 'constant' | 'cosine';
  out: string;
  json?: string;
  quiet: boolean;
  help: boolean;
}

function integer(value: string | undefined, flag: string, min: number, fallback?: number): number | undefined {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`--${flag} expects an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

function positive(value: string | undefined, flag: string, fallback: number, allowZero = false): number {
  if (value === undefined) return fallback;
  const x = Number(value);
  if (value.trim() === '' || !Number.isFinite(x) || x < 0 || (!allowZero && x === 0)) {
    throw new UsageError(`--${flag} expects a ${allowZero ? 'non-negative' : 'positive'} number, got ${JSON.stringify(value)}`);
  }
  return x;
}

function oneOf<T extends string>(value: string | undefined, flag: string, allowed: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(value)) throw new UsageError(`--${flag} expects one of ${allowed.join(', ')}, got ${JSON.stringify(value)}`);
  return value as T;
}

/** Parses `nysact train`'s arguments; throws {@link UsageError} for anything wrong. */
export function parseTrainArgs(argv: string[]): TrainArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        data: { type: 'string' },
        train: { type: 'string' },
        validation: { type: 'string' },
        epochs: { type: 'string' },
        batch: { type: 'string' },
        seeds: { type: 'string' },
        seed: { type: 'string' },
        optimizers: { type: 'string' },
        model: { type: 'string' },
        tfjs: { type: 'string' },
        lr: { type: 'string' },
        damping: { type: 'string' },
        rank: { type: 'string' },
        tcov: { type: 'string' },
        tinv: { type: 'string' },
        'weight-decay': { type: 'string' },
        nystrom: { type: 'string' },
        schedule: { type: 'string' },
        'sgd-lr': { type: 'string' },
        'adam-lr': { type: 'string' },
        out: { type: 'string' },
        json: { type: 'string' },
        quiet: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const v = parsed.values;
  const optimizers = (v.optimizers ?? OPTIMIZERS.join(',')).split(',').map((s) => s.trim());
  for (const o of optimizers) {
    if (!(OPTIMIZERS as readonly string[]).includes(o)) throw new UsageError(`--optimizers expects names from nysact, sgd, adam, got ${JSON.stringify(o)}`);
  }
  if (new Set(optimizers).size !== optimizers.length) throw new UsageError('--optimizers lists a name twice');
  return {
    data: v.data,
    train: integer(v.train, 'train', 1),
    validation: integer(v.validation, 'validation', 0, 0) as number,
    epochs: integer(v.epochs, 'epochs', 1),
    batch: integer(v.batch, 'batch', 1, 128) as number,
    seeds: integer(v.seeds, 'seeds', 1, 1) as number,
    seed: integer(v.seed, 'seed', 0, 0) as number,
    optimizers: optimizers as OptimizerName[],
    model: oneOf(v.model, 'model', ['cnn', 'mlp'] as const),
    tfjs: oneOf(v.tfjs, 'tfjs', ['auto', 'node', 'js'] as const) ?? 'auto',
    lr: positive(v.lr, 'lr', 0.05),
    damping: positive(v.damping, 'damping', 0.3),
    rank: integer(v.rank, 'rank', 1, 20) as number,
    tcov: integer(v.tcov, 'tcov', 1, 5) as number,
    tinv: integer(v.tinv, 'tinv', 1, 10) as number,
    weightDecay: positive(v['weight-decay'], 'weight-decay', 0, true),
    nystrom: oneOf(v.nystrom, 'nystrom', ['reference', 'textbook'] as const) ?? 'reference',
    sgdLr: positive(v['sgd-lr'], 'sgd-lr', 0.05),
    adamLr: positive(v['adam-lr'], 'adam-lr', 0.003),
    schedule: oneOf(v.schedule, 'schedule', ['constant', 'cosine'] as const) ?? 'cosine',
    out: v.out ?? 'nysact-train.svg',
    json: v.json,
    quiet: v.quiet ?? false,
    help: v.help ?? false,
  };
}

// ---------------------------------------------------------------------------------------------
// TensorFlow.js

interface LoadedTfjs {
  tf: TF;
  /** 'node' (tfjs-node, the TensorFlow C library) or 'js' (pure-JS CPU backend). */
  kind: 'node' | 'js';
  why: string | null;
}

function loadTfjs(pref: TrainArgs['tfjs']): LoadedTfjs {
  let nodeError: string | null = null;
  if (pref !== 'js') {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const tf = require('@tensorflow/tfjs-node') as TF;
      return { tf, kind: 'node', why: null };
    } catch (error) {
      nodeError = (error as Error).message.split('\n')[0];
      if (pref === 'node') {
        throw new Error(
          `--tfjs node: @tensorflow/tfjs-node does not load (${nodeError}). ` +
            'In this repository `bash scripts/setup-tfjs-node.sh` builds it offline; elsewhere `npm install @tensorflow/tfjs-node`.',
        );
      }
    }
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const tf = require('@tensorflow/tfjs') as TF;
    return { tf, kind: 'js', why: pref === 'js' ? null : `@tensorflow/tfjs-node is not available (${nodeError})` };
  } catch (error) {
    throw new Error(
      `nysact train needs TensorFlow.js: install @tensorflow/tfjs-node (fast, native) or @tensorflow/tfjs (pure JS) beside nysact (${(error as Error).message.split('\n')[0]})`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Models and optimizers

/** The benchmark model: a small CNN or a 784-128-10 MLP, its initializers seeded from `seed`. */
export function buildModel(tf: TF, kind: 'cnn' | 'mlp', seed: number): tfjs.LayersModel {
  let s = seed * 100;
  const init = () => tf.initializers.heNormal({ seed: ++s });
  const model = tf.sequential();
  if (kind === 'cnn') {
    model.add(tf.layers.conv2d({ name: 'conv1', inputShape: [28, 28, 1], filters: 16, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init() }));
    model.add(tf.layers.maxPooling2d({ poolSize: 2 }));
    model.add(tf.layers.conv2d({ name: 'conv2', filters: 32, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init() }));
    model.add(tf.layers.maxPooling2d({ poolSize: 2 }));
    model.add(tf.layers.flatten());
    model.add(tf.layers.dense({ name: 'fc1', units: 128, activation: 'relu', kernelInitializer: init() }));
    model.add(tf.layers.dense({ name: 'fc2', units: 10, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: ++s }) }));
  } else {
    model.add(tf.layers.dense({ name: 'fc1', inputShape: [784], units: 128, activation: 'relu', kernelInitializer: init() }));
    model.add(tf.layers.dense({ name: 'fc2', units: 10, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: ++s }) }));
  }
  return model;
}

async function makeOptimizer(tf: TF, name: OptimizerName, model: tfjs.LayersModel, args: TrainArgs, seed: number): Promise<tfjs.Optimizer> {
  if (name === 'sgd') return tf.train.momentum(args.sgdLr, 0.9);
  if (name === 'adam') return tf.train.adam(args.adamLr);
  // Required lazily: nysact/tfjs needs tfjs-core, which loadTfjs has checked by now.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { NysActOptimizer } = require('../tfjs.js') as typeof import('../tfjs.js');
  return new NysActOptimizer({
    learningRate: args.lr,
    damping: args.damping,
    rank: args.rank,
    tcov: args.tcov,
    tinv: args.tinv,
    weightDecay: args.weightDecay,
    nystrom: args.nystrom,
    seed,
  }).attach(model) as unknown as tfjs.Optimizer;
}

// ---------------------------------------------------------------------------------------------
// Training

/** A small seeded uniform generator in [0, 1) (mulberry32): batch orders here, random data in the tests. */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function permutation(n: number, seed: number): Int32Array {
  const rand = mulberry32(seed);
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export interface RunResult {
  optimizer: OptimizerName;
  seed: number;
  /** Accuracy and loss on the evaluation set (test, or validation with --validation). */
  accuracy: number;
  loss: number;
  /** Wall time of each epoch's training steps (s), evaluation excluded. */
  epochSeconds: number[];
  /** Mean wall time of one training step (ms), statistics and inverse steps included. */
  stepMs: number;
  /** Median wall time of one training step (ms): an ordinary step. */
  medianStepMs: number;
  /** Mean time spent in the optimizer per step (ms): applyGradients plus, for NysAct, the statistics sketches. */
  optimizerMs: number;
  /** [epoch, running mean training loss] every few steps. */
  lossCurve: [number, number][];
  /** [epoch, accuracy] at the start and after every epoch. */
  accuracyCurve: [number, number][];
}

interface Split {
  x: tfjs.Tensor;
  y: tfjs.Tensor;
  labels: Uint8Array;
  n: number;
}

function evaluate(tf: TF, model: tfjs.LayersModel, split: Split): { accuracy: number; loss: number } {
  let correct = 0;
  let lossSum = 0;
  const chunk = 1000;
  for (let start = 0; start < split.n; start += chunk) {
    const size = Math.min(chunk, split.n - start);
    const [c, l] = tf.tidy(() => {
      const xs = split.x.slice(start, size);
      const ys = split.y.slice(start, size);
      const p = model.predict(xs) as tfjs.Tensor;
      const hit = tf.equal(tf.argMax(p, -1), tf.argMax(ys, -1)).sum();
      const loss = tf.metrics.categoricalCrossentropy(ys, p).sum();
      return [hit.dataSync()[0], loss.dataSync()[0]];
    });
    correct += c;
    lossSum += l;
  }
  return { accuracy: correct / split.n, loss: lossSum / split.n };
}

interface Progress {
  update(line: string): void;
  done(line: string): void;
}

function progress(label: string, quiet: boolean): Progress {
  const tty = process.stderr.isTTY === true;
  let last = performance.now();
  return {
    update(line) {
      if (quiet) return;
      const now = performance.now();
      if (tty && now - last > 150) {
        process.stderr.write(`\r\x1b[K${label} ${line}`);
        last = now;
      } else if (!tty && now - last > 10000) {
        process.stderr.write(`${label} ${line}\n`);
        last = now;
      }
    },
    done(line) {
      if (quiet) return;
      process.stderr.write(tty ? `\r\x1b[K${label} ${line}\n` : `${label} ${line}\n`);
    },
  };
}

async function runOne(
  tf: TF,
  kind: 'cnn' | 'mlp',
  train: Split,
  evalSet: Split,
  name: OptimizerName,
  seed: number,
  args: TrainArgs,
  epochs: number,
): Promise<RunResult> {
  const model = buildModel(tf, kind, seed);
  const optimizer = await makeOptimizer(tf, name, model, args, seed);
  model.compile({ optimizer, loss: 'categoricalCrossentropy' });

  // Optimizer time: applyGradients, plus NysAct's statistics sketches (taken in the forward pass).
  let optimizerTime = 0;
  const apply = optimizer.applyGradients.bind(optimizer);
  optimizer.applyGradients = (grads) => {
    const t0 = performance.now();
    apply(grads);
    optimizerTime += performance.now() - t0;
  };
  const core = (optimizer as unknown as { core?: { observe: (...a: unknown[]) => void } }).core;
  if (core) {
    const observe = core.observe.bind(core);
    core.observe = (...a: unknown[]) => {
      const t0 = performance.now();
      observe(...a);
      optimizerTime += performance.now() - t0;
    };
  }

  const stepsPerEpoch = Math.ceil(train.n / args.batch);
  // The schedule, the same for the three optimizers: each is given lr(t) before step t.
  const baseLr = name === 'nysact' ? args.lr : name === 'sgd' ? args.sgdLr : args.adamLr;
  const totalSteps = stepsPerEpoch * epochs;
  const setLr = (t: number) => {
    if (args.schedule === 'constant') return;
    const lr = baseLr * 0.5 * (1 + Math.cos((Math.PI * t) / totalSteps));
    // MomentumOptimizer and NysActOptimizer have setLearningRate; Adam reads its field each step.
    const o = optimizer as unknown as { setLearningRate?: (x: number) => void; learningRate: number };
    if (typeof o.setLearningRate === 'function') o.setLearningRate(lr);
    else o.learningRate = lr;
  };
  const label = `[${LABELS[name]} seed ${seed}]`;
  const bar = progress(label, args.quiet);
  const start = evaluate(tf, model, evalSet);
  const accuracyCurve: [number, number][] = [[0, start.accuracy]];
  const lossCurve: [number, number][] = [];
  const epochSeconds: number[] = [];
  const stepTimes: number[] = [];
  const every = Math.max(1, Math.floor(stepsPerEpoch / 20));
  let window: number[] = [];
  for (let epoch = 0; epoch < epochs; epoch++) {
    const order = permutation(train.n, seed * 1000 + epoch);
    const t0 = performance.now();
    for (let step = 0; step < stepsPerEpoch; step++) {
      const idx = order.subarray(step * args.batch, Math.min(train.n, (step + 1) * args.batch));
      const [xs, ys] = tf.tidy(() => {
        const i = tf.tensor1d(idx, 'int32');
        return [tf.gather(train.x, i), tf.gather(train.y, i)];
      });
      setLr(epoch * stepsPerEpoch + step);
      const s0 = performance.now();
      const loss = (await model.trainOnBatch(xs, ys)) as number;
      stepTimes.push(performance.now() - s0);
      tf.dispose([xs, ys]);
      if (!Number.isFinite(loss)) throw new Error(`${label} training diverged (loss ${loss}) at epoch ${epoch + 1}, step ${step + 1}: lower the learning rate`);
      window.push(loss);
      if ((step + 1) % every === 0 || step === stepsPerEpoch - 1) {
        lossCurve.push([epoch + (step + 1) / stepsPerEpoch, window.reduce((a, b) => a + b, 0) / window.length]);
        window = [];
      }
      bar.update(`epoch ${epoch + 1}/${epochs} step ${step + 1}/${stepsPerEpoch} loss ${loss.toFixed(4)} ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
    epochSeconds.push((performance.now() - t0) / 1000);
    const ev = evaluate(tf, model, evalSet);
    accuracyCurve.push([epoch + 1, ev.accuracy]);
    bar.done(`epoch ${epoch + 1}/${epochs}: ${(100 * ev.accuracy).toFixed(2)}% accuracy, loss ${ev.loss.toFixed(4)}, ${epochSeconds[epoch].toFixed(1)} s`);
  }
  const final = evaluate(tf, model, evalSet);
  optimizer.dispose();
  model.dispose();
  return {
    optimizer: name,
    seed,
    accuracy: final.accuracy,
    loss: final.loss,
    epochSeconds,
    stepMs: stepTimes.reduce((a, b) => a + b, 0) / stepTimes.length,
    medianStepMs: median(stepTimes),
    optimizerMs: optimizerTime / stepTimes.length,
    lossCurve,
    accuracyCurve,
  };
}

// ---------------------------------------------------------------------------------------------
// Report

function meanStd(xs: number[]): { mean: number; std: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const std = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1)) : 0;
  return { mean, std };
}

function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const fmt = (cells: string[]) => cells.map((v, c) => (c === 0 ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join('  ');
  return [fmt(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(fmt)].join('\n');
}

export interface Summary {
  optimizer: OptimizerName;
  runs: number;
  accuracy: { mean: number; std: number };
  loss: { mean: number; std: number };
  epochSeconds: number;
  stepMs: number;
  optimizerMs: number;
}

export function summarize(results: RunResult[], optimizers: OptimizerName[]): Summary[] {
  return optimizers.map((o) => {
    const runs = results.filter((r) => r.optimizer === o);
    return {
      optimizer: o,
      runs: runs.length,
      accuracy: meanStd(runs.map((r) => r.accuracy)),
      loss: meanStd(runs.map((r) => r.loss)),
      epochSeconds: meanStd(runs.flatMap((r) => r.epochSeconds)).mean,
      stepMs: meanStd(runs.map((r) => r.stepMs)).mean,
      optimizerMs: meanStd(runs.map((r) => r.optimizerMs)).mean,
    };
  });
}

function averageCurve(curves: [number, number][][]): { points: [number, number][]; band: [number, number, number][] } {
  const points: [number, number][] = [];
  const band: [number, number, number][] = [];
  const n = Math.min(...curves.map((c) => c.length));
  for (let i = 0; i < n; i++) {
    const ys = curves.map((c) => c[i][1]);
    points.push([curves[0][i][0], ys.reduce((a, b) => a + b, 0) / ys.length]);
    band.push([curves[0][i][0], Math.min(...ys), Math.max(...ys)]);
  }
  return { points, band };
}

// ---------------------------------------------------------------------------------------------
// Main

function split(tf: TF, kind: 'cnn' | 'mlp', x: Float32Array, labels: Uint8Array, from: number, to: number): Split {
  const n = to - from;
  const shape = kind === 'cnn' ? [n, 28, 28, 1] : [n, 784];
  const sub = labels.subarray(from, to);
  return {
    x: tf.tensor(x.subarray(from * 784, to * 784), shape, 'float32'),
    y: tf.tidy(() => tf.oneHot(tf.tensor1d(Int32Array.from(sub), 'int32'), 10).toFloat()),
    labels: sub,
    n,
  };
}

/** What `--json` writes; {@link plotResults} renders it. */
export interface TrainReport {
  header: string;
  args: Pick<TrainArgs, 'optimizers' | 'seeds' | 'validation'> & Partial<TrainArgs>;
  summaries: Summary[];
  results: RunResult[];
}

/**
 * The curves of a run as SVG: training loss (running mean) and evaluation accuracy per epoch,
 * mean over seeds with the min–max band. The accuracy panel starts after the first epoch (the
 * untrained ~10% would flatten the interesting range).
 */
export function plotResults(report: TrainReport): string {
  const { header, args, summaries, results } = report;
  const evalName = args.validation > 0 ? 'validation' : 'test';
  const series = (key: 'lossCurve' | 'accuracyCurve'): Series[] =>
    args.optimizers.map((o) => {
      const curves = results.filter((r) => r.optimizer === o).map((r) => (key === 'accuracyCurve' ? r[key].filter((pt) => pt[0] > 0) : r[key]));
      const curve = averageCurve(curves);
      const s = summaries.find((x) => x.optimizer === o) as Summary;
      return {
        label: `${LABELS[o]}: ${(100 * s.accuracy.mean).toFixed(2)}% ${evalName} accuracy`,
        color: COLORS[o],
        points: curve.points,
        band: args.seeds > 1 ? curve.band : undefined,
      };
    });
  const [what, setup] = header.split('; ').reduce<[string[], string[]]>(
    (acc, part, i) => {
      acc[i < 1 ? 0 : 1].push(part);
      return acc;
    },
    [[], []],
  );
  return renderSvg(`nysact train: ${what.join('; ')}`, setup.join('; '), [
    { title: 'training loss (running mean)', xLabel: 'epoch', yFormat: (v) => v.toFixed(2), series: series('lossCurve') },
    { title: `${evalName} accuracy`, xLabel: 'epoch', yFormat: (v) => `${(100 * v).toFixed(1)}%`, series: series('accuracyCurve'), yClamp: [0, 1] },
  ]);
}

/** Runs `nysact train`; resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  let args: TrainArgs;
  try {
    args = parseTrainArgs(argv);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`nysact train: ${error.message}\n\n${USAGE}`);
      return 2;
    }
    throw error;
  }
  if (args.help) {
    process.stdout.write(USAGE);
    return 0;
  }

  let loaded: LoadedTfjs;
  let data: FashionData;
  let note: string | null;
  try {
    loaded = loadTfjs(args.tfjs);
    ({ data, note } = findFashionMnist(args.data));
  } catch (error) {
    process.stderr.write(`nysact train: ${(error as Error).message}\n`);
    return 1;
  }
  const { tf, kind: tfKind } = loaded;
  if (tfKind === 'js') await tf.setBackend('cpu');
  const model = args.model ?? (tfKind === 'node' ? 'cnn' : 'mlp');
  const epochs = args.epochs ?? 3;
  let nTrain = Math.min(args.train ?? data.nTrain, data.nTrain);
  if (args.validation >= nTrain) {
    process.stderr.write(`nysact train: --validation ${args.validation} leaves no training images (of ${nTrain})\n`);
    return 2;
  }
  const info = (line: string) => {
    if (!args.quiet) process.stderr.write(`${line}\n`);
  };
  if (note) info(`note: ${note}`);
  if (loaded.why) info(`note: ${loaded.why}; using the pure-JS backend with a ${model.toUpperCase()}`);
  if (model === 'cnn' && tfKind === 'js') info('note: a CNN on the pure-JS backend is very slow; expect minutes per step');

  const valN = args.validation;
  nTrain -= valN;
  const train = split(tf, model, data.trainX, data.trainY, 0, nTrain);
  const evalSet = valN > 0 ? split(tf, model, data.trainX, data.trainY, nTrain, nTrain + valN) : split(tf, model, data.testX, data.testY, 0, data.nTest);
  const evalName = valN > 0 ? 'validation' : 'test';
  const backend = `${tfKind === 'node' ? '@tensorflow/tfjs-node' : '@tensorflow/tfjs (pure JS)'} (${tf.getBackend()})`;
  const header =
    `Fashion-MNIST${data.embedded ? ' (embedded subset)' : ''}: ${nTrain} training / ${evalSet.n} ${evalName} images; ` +
    `${model === 'cnn' ? 'CNN conv16-pool-conv32-pool-fc128-fc10' : 'MLP 784-128-10'} on ${backend}; ` +
    `${epochs} epoch${epochs > 1 ? 's' : ''}, batch ${args.batch}${args.schedule === 'cosine' ? ', cosine learning-rate schedule' : ''}, seed${args.seeds > 1 ? 's' : ''} ${Array.from({ length: args.seeds }, (_, i) => args.seed + i).join(',')}`;
  info(header);

  const results: RunResult[] = [];
  for (let s = 0; s < args.seeds; s++) {
    for (const o of args.optimizers) {
      try {
        results.push(await runOne(tf, model, train, evalSet, o, args.seed + s, args, epochs));
      } catch (error) {
        process.stderr.write(`nysact train: ${(error as Error).message}\n`);
        return 1;
      }
    }
  }
  tf.dispose([train.x, train.y, evalSet.x, evalSet.y]);

  const summaries = summarize(results, args.optimizers);
  const pm = (m: { mean: number; std: number }, scale: number, digits: number) =>
    args.seeds > 1 ? `${(scale * m.mean).toFixed(digits)} ± ${(scale * m.std).toFixed(digits)}` : (scale * m.mean).toFixed(digits);
  const rows = summaries.map((s) => [
    LABELS[s.optimizer],
    `${pm(s.accuracy, 100, 2)}%`,
    pm(s.loss, 1, 4),
    s.epochSeconds.toFixed(1),
    s.stepMs.toFixed(1),
    s.optimizerMs.toFixed(2),
  ]);
  process.stdout.write(`\n${header}\n\n`);
  process.stdout.write(
    table([`optimizer`, `${evalName} accuracy`, `${evalName} loss`, 's/epoch', 'ms/step', 'optimizer ms/step'], rows) + '\n',
  );
  const sgd = summaries.find((s) => s.optimizer === 'sgd');
  const nys = summaries.find((s) => s.optimizer === 'nysact');
  if (sgd && nys) {
    process.stdout.write(`\nNysAct time per step / SGD-momentum time per step: ${(nys.stepMs / sgd.stepMs).toFixed(2)}x (means over all steps)\n`);
  }
  if (args.seeds > 1) process.stdout.write(`(mean ± sample standard deviation over ${args.seeds} seeds)\n`);

  if (args.out !== 'none') {
    fs.writeFileSync(args.out, plotResults({ header, args, summaries, results }));
    process.stdout.write(`curves: ${args.out}\n`);
  }
  if (args.json) {
    fs.writeFileSync(args.json, JSON.stringify({ header, args, summaries, results }, null, 2) + '\n');
    process.stdout.write(`results: ${args.json}\n`);
  }
  return 0;
}
