#!/usr/bin/env node
'use strict';
/**
 * Train a 784-128-10 MLP (ReLU, softmax cross-entropy) on Fashion-MNIST with a hand-written
 * forward/backward pass in plain JavaScript, and compare two optimizers under the same budget,
 * seed, initial weights and batch order:
 *
 *   1. NysAct: both dense layers registered with addDense (bias preconditioned jointly), input
 *      activations fed with observe() on statistics steps;
 *   2. SGD-momentum: the same NysAct class with every tensor registered with addParam (plain
 *      heavy-ball momentum SGD with the same coupled weight decay), so both share one code path.
 *
 * Weights use the tfjs layout [in, out]. No dependencies beyond Node 20 and this package.
 *
 *   node examples/train-mlp.js --help
 */

const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const { performance } = require('node:perf_hooks');

let nysact;
try {
  nysact = require('../dist/cjs/index.js');
} catch (err) {
  process.stderr.write(`Cannot load the nysact package from ../dist (run \`npm run build\` first): ${err.message}\n`);
  process.exit(1);
}
const { NysAct } = nysact;

// ---------------------------------------------------------------------------------------------
// Command line

const DEFAULT_DATA_DIR = '/usr/share/datasets/fashion-mnist/';

const USAGE = `Usage: node examples/train-mlp.js [options]

Trains a 784-128-10 MLP on Fashion-MNIST twice (NysAct, then SGD-momentum through the same
class with addParam) with the same seed, initial weights and batch order, and compares them.

Options:
  --epochs N     epochs per optimizer (default 2)
  --batch N      batch size (default 128)
  --train N      training examples used, 0 = all 60000 (default 10000)
  --lr X         learning rate for both optimizers (default 0.05)
  --seed N       seed for init, shuffling and NysAct's sketches (default 0)
  --rank N       NysAct sketch rank (default 10)
  --damping X    NysAct damping rho (default 1.0)
  --tcov N       statistics every N steps (default 5)
  --tinv N       preconditioner rebuilt every N steps (default 50)
  --threads N    native threads (setThreads; default: the package's default)
  --data DIR     directory with the gzip idx files (default ${DEFAULT_DATA_DIR});
                 when missing, an embedded synthetic 10-class problem is used
  --out FILE     SVG with the per-epoch curves (default nysact-train.svg)
  --json         print the results as JSON on stdout instead of tables
  --help         show this help

Momentum 0.9, weight decay 5e-4, statDecay 0.95; other NysAct options are its defaults.
Progress goes to stderr.`;

function usageError(message) {
  process.stderr.write(`train-mlp: ${message}\nRun with --help for the list of options.\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    epochs: 2,
    batch: 128,
    train: 10000,
    lr: 0.05,
    seed: 0,
    rank: 10,
    damping: 1.0,
    tcov: 5,
    tinv: 50,
    threads: 0,
    data: null,
    out: 'nysact-train.svg',
    json: false,
    help: false,
  };
  const intFlag = (min, max) => ({ kind: 'int', min, max });
  const numFlag = (min, exclusive) => ({ kind: 'num', min, exclusive });
  const spec = {
    epochs: intFlag(1, 10000),
    batch: intFlag(1, 60000),
    train: intFlag(0, 60000),
    lr: numFlag(0, true),
    seed: intFlag(0, 0xffffffff),
    rank: intFlag(1, 65536),
    damping: numFlag(0, true),
    tcov: intFlag(1, 1e9),
    tinv: intFlag(1, 1e9),
    threads: intFlag(1, 1024),
    data: { kind: 'str' },
    out: { kind: 'str' },
    json: { kind: 'bool' },
    help: { kind: 'bool' },
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) usageError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const key = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    const s = Object.prototype.hasOwnProperty.call(spec, key) ? spec[key] : undefined;
    if (s === undefined) usageError(`unknown option ${JSON.stringify('--' + key)}`);
    if (s.kind === 'bool') {
      if (eq >= 0) usageError(`--${key} takes no value`);
      opts[key] = true;
      continue;
    }
    let value;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      if (i + 1 >= argv.length) usageError(`--${key} needs a value`);
      value = argv[++i];
    }
    if (s.kind === 'str') {
      if (value === '') usageError(`--${key} needs a non-empty value`);
      opts[key] = value;
    } else if (s.kind === 'int') {
      if (!/^\d+$/.test(value)) usageError(`--${key} expects an integer in [${s.min}, ${s.max}], got ${JSON.stringify(value)}`);
      const n = Number(value);
      if (!Number.isSafeInteger(n) || n < s.min || n > s.max) {
        usageError(`--${key} expects an integer in [${s.min}, ${s.max}], got ${JSON.stringify(value)}`);
      }
      opts[key] = n;
    } else {
      const n = value.trim() === '' ? NaN : Number(value);
      if (!Number.isFinite(n) || (s.exclusive ? n <= s.min : n < s.min)) {
        usageError(`--${key} expects a finite number ${s.exclusive ? '>' : '>='} ${s.min}, got ${JSON.stringify(value)}`);
      }
      opts[key] = n;
    }
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------
// Seeded PRNG (mulberry32) and normal draws (Box-Muller)

function makeRng(seed) {
  let a = seed >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  let spare = null;
  const normal = () => {
    if (spare !== null) {
      const v = spare;
      spare = null;
      return v;
    }
    let u = 0;
    while (u === 0) u = uniform();
    const v = uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  };
  return { uniform, normal };
}

/** Derives a sub-seed so that init, shuffling and synthetic data use independent streams. */
function subSeed(seed, tag) {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (let i = 0; i < tag.length; i++) h = Math.imul(h ^ tag.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

// ---------------------------------------------------------------------------------------------
// Data

const FILES = {
  trainImages: 'train-images-idx3-ubyte.gz',
  trainLabels: 'train-labels-idx1-ubyte.gz',
  testImages: 't10k-images-idx3-ubyte.gz',
  testLabels: 't10k-labels-idx1-ubyte.gz',
};

function readIdx(file, expectedMagic) {
  const buf = zlib.gunzipSync(fs.readFileSync(file));
  const magic = buf.readUInt32BE(0);
  if (magic !== expectedMagic) throw new Error(`${file}: bad idx magic 0x${magic.toString(16)}`);
  const ndim = magic & 0xff;
  const dims = [];
  for (let d = 0; d < ndim; d++) dims.push(buf.readUInt32BE(4 + 4 * d));
  const offset = 4 + 4 * ndim;
  const count = dims.reduce((a, b) => a * b, 1);
  if (buf.length < offset + count) throw new Error(`${file}: truncated`);
  return { dims, data: buf.subarray(offset, offset + count) };
}

/** Pixels to [0, 1], then standardised with the training set's mean and std (one scalar each). */
function toFloat(bytes, count, mean, std) {
  const out = new Float32Array(count * 784);
  const scale = 1 / (255 * std);
  const shift = mean / std;
  for (let i = 0; i < out.length; i++) out[i] = bytes[i] * scale - shift;
  return out;
}

function loadFashionMnist(dir, trainCount) {
  const missing = Object.values(FILES).filter((f) => !fs.existsSync(path.join(dir, f)));
  if (missing.length > 0) return { error: `missing ${missing.join(', ')} in ${dir}` };
  const trainImg = readIdx(path.join(dir, FILES.trainImages), 0x00000803);
  const trainLab = readIdx(path.join(dir, FILES.trainLabels), 0x00000801);
  const testImg = readIdx(path.join(dir, FILES.testImages), 0x00000803);
  const testLab = readIdx(path.join(dir, FILES.testLabels), 0x00000801);
  if (trainImg.dims[1] * trainImg.dims[2] !== 784 || testImg.dims[1] * testImg.dims[2] !== 784) {
    throw new Error('expected 28x28 images');
  }
  // Mean and std of the whole training set's pixels, in [0, 1] units.
  let sum = 0;
  let sumSq = 0;
  const px = trainImg.data;
  for (let i = 0; i < px.length; i++) {
    const v = px[i];
    sum += v;
    sumSq += v * v;
  }
  const mean = sum / px.length / 255;
  const std = Math.sqrt(sumSq / px.length / (255 * 255) - mean * mean);
  const nTrain = trainCount === 0 ? trainImg.dims[0] : Math.min(trainCount, trainImg.dims[0]);
  const nTest = testImg.dims[0];
  return {
    name: 'Fashion-MNIST',
    source: dir,
    trainX: toFloat(trainImg.data, nTrain, mean, std),
    trainY: Uint8Array.from(trainLab.data.subarray(0, nTrain)),
    testX: toFloat(testImg.data, nTest, mean, std),
    testY: Uint8Array.from(testLab.data.subarray(0, nTest)),
    nTrain,
    nTest,
  };
}

/**
 * Synthetic stand-in: 10 smooth random prototype "images" (28x28, blurred noise), each example
 * a prototype scaled by a random contrast plus pixel noise, then standardised. Deterministic in
 * the seed; hard enough that accuracy is not trivially 100%.
 */
function makeSynthetic(trainCount, seed) {
  const rng = makeRng(subSeed(seed, 'synthetic'));
  const protos = [];
  for (let c = 0; c < 10; c++) {
    const raw = new Float64Array(784);
    for (let i = 0; i < 784; i++) raw[i] = rng.normal();
    // 5x5 box blur so the prototypes look like blobs rather than white noise.
    const img = new Float64Array(784);
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        let s = 0;
        let n = 0;
        for (let dy = -2; dy <= 2; dy++) {
          for (let dx = -2; dx <= 2; dx++) {
            const yy = y + dy;
            const xx = x + dx;
            if (yy >= 0 && yy < 28 && xx >= 0 && xx < 28) {
              s += raw[yy * 28 + xx];
              n++;
            }
          }
        }
        img[y * 28 + x] = s / n;
      }
    }
    protos.push(img);
  }
  const gen = (count) => {
    const X = new Float32Array(count * 784);
    const Y = new Uint8Array(count);
    for (let i = 0; i < count; i++) {
      const c = Math.floor(rng.uniform() * 10);
      Y[i] = c;
      const contrast = 0.5 + rng.uniform();
      const p = protos[c];
      for (let j = 0; j < 784; j++) X[i * 784 + j] = contrast * p[j] + 1.8 * rng.normal();
    }
    return { X, Y };
  };
  const nTrain = trainCount === 0 ? 60000 : trainCount;
  const nTest = 2000;
  const train = gen(nTrain);
  const test = gen(nTest);
  // Standardise with the training set's scalar mean and std (as for the real data).
  let sum = 0;
  let sumSq = 0;
  for (let i = 0; i < train.X.length; i++) {
    sum += train.X[i];
    sumSq += train.X[i] * train.X[i];
  }
  const mean = sum / train.X.length;
  const std = Math.sqrt(sumSq / train.X.length - mean * mean);
  for (const X of [train.X, test.X]) for (let i = 0; i < X.length; i++) X[i] = (X[i] - mean) / std;
  return {
    name: 'synthetic 10-class',
    source: 'embedded generator',
    trainX: train.X,
    trainY: train.Y,
    testX: test.X,
    testY: test.Y,
    nTrain,
    nTest,
  };
}

// ---------------------------------------------------------------------------------------------
// Model: 784-128-10, weights [in, out] (tfjs layout)

const IN = 784;
const HID = 128;
const OUT = 10;

function initModel(seed) {
  const rng = makeRng(subSeed(seed, 'init'));
  const he = (fanIn, fanOut) => {
    const w = new Float32Array(fanIn * fanOut);
    const s = Math.sqrt(2 / fanIn);
    for (let i = 0; i < w.length; i++) w[i] = rng.normal() * s;
    return w;
  };
  return { W1: he(IN, HID), b1: new Float32Array(HID), W2: he(HID, OUT), b2: new Float32Array(OUT) };
}

function cloneModel(m) {
  return { W1: m.W1.slice(), b1: m.b1.slice(), W2: m.W2.slice(), b2: m.b2.slice() };
}

/** out[n, m] = A[n, k] · B[k, m] + bias[m]; loops i-k-j. */
function matmulBias(A, B, bias, out, n, k, m) {
  for (let i = 0; i < n; i++) {
    const o = i * m;
    for (let j = 0; j < m; j++) out[o + j] = bias[j];
    const a0 = i * k;
    for (let kk = 0; kk < k; kk++) {
      const a = A[a0 + kk];
      if (a === 0) continue;
      const b0 = kk * m;
      for (let j = 0; j < m; j++) out[o + j] += a * B[b0 + j];
    }
  }
}

/** G[k, m] = Aᵀ[k, n] · D[n, m] (A is [n, k]); loops i-k-j. Also biasG[m] = Σ_i D[i, m]. */
function matmulTransA(A, D, G, biasG, n, k, m) {
  G.fill(0);
  biasG.fill(0);
  for (let i = 0; i < n; i++) {
    const d0 = i * m;
    for (let j = 0; j < m; j++) biasG[j] += D[d0 + j];
    const a0 = i * k;
    for (let kk = 0; kk < k; kk++) {
      const a = A[a0 + kk];
      if (a === 0) continue;
      const g0 = kk * m;
      for (let j = 0; j < m; j++) G[g0 + j] += a * D[d0 + j];
    }
  }
}

/** Work buffers sized for the largest batch. */
function makeBuffers(batch) {
  return {
    X: new Float32Array(batch * IN),
    labels: new Uint8Array(batch),
    H1: new Float32Array(batch * HID), // pre-activation, then ReLU output in place (A1)
    Z: new Float32Array(batch * OUT), // logits, then dZ in place
    dA1: new Float32Array(batch * HID),
    gW1: new Float32Array(IN * HID),
    gb1: new Float32Array(HID),
    gW2: new Float32Array(HID * OUT),
    gb2: new Float32Array(OUT),
  };
}

/** Forward pass of n rows in buf.X; leaves ReLU activations in buf.H1 and logits in buf.Z. */
function forward(model, buf, n) {
  matmulBias(buf.X, model.W1, model.b1, buf.H1, n, IN, HID);
  const H = buf.H1;
  const len = n * HID;
  for (let i = 0; i < len; i++) if (H[i] < 0) H[i] = 0;
  matmulBias(H, model.W2, model.b2, buf.Z, n, HID, OUT);
}

/**
 * Softmax cross-entropy over n rows of buf.Z. Returns { loss (sum), correct }. With `grad`, buf.Z
 * is overwritten by dLoss/dZ of the MEAN loss, (softmax − onehot) / n.
 */
function softmaxCE(buf, n, grad) {
  const Z = buf.Z;
  let loss = 0;
  let correct = 0;
  const probs = new Float64Array(OUT);
  for (let i = 0; i < n; i++) {
    const z0 = i * OUT;
    let max = -Infinity;
    let arg = 0;
    for (let j = 0; j < OUT; j++) {
      if (Z[z0 + j] > max) {
        max = Z[z0 + j];
        arg = j;
      }
    }
    let sum = 0;
    for (let j = 0; j < OUT; j++) {
      probs[j] = Math.exp(Z[z0 + j] - max);
      sum += probs[j];
    }
    const y = buf.labels[i];
    loss += Math.log(sum) - (Z[z0 + y] - max);
    if (arg === y) correct++;
    if (grad) {
      for (let j = 0; j < OUT; j++) Z[z0 + j] = (probs[j] / sum - (j === y ? 1 : 0)) / n;
    }
  }
  return { loss, correct };
}

/** Backward pass after forward + softmaxCE(grad): fills gW1, gb1, gW2, gb2. */
function backward(model, buf, n) {
  const dZ = buf.Z;
  const A1 = buf.H1;
  matmulTransA(A1, dZ, buf.gW2, buf.gb2, n, HID, OUT);
  // dA1[i, k] = Σ_j dZ[i, j] W2[k, j], masked by ReLU (A1 > 0).
  const W2 = model.W2;
  const dA1 = buf.dA1;
  for (let i = 0; i < n; i++) {
    const z0 = i * OUT;
    const h0 = i * HID;
    for (let k = 0; k < HID; k++) {
      if (A1[h0 + k] <= 0) {
        dA1[h0 + k] = 0;
        continue;
      }
      const w0 = k * OUT;
      let s = 0;
      for (let j = 0; j < OUT; j++) s += dZ[z0 + j] * W2[w0 + j];
      dA1[h0 + k] = s;
    }
  }
  matmulTransA(buf.X, dA1, buf.gW1, buf.gb1, n, IN, HID);
}

function evaluate(model, data, buf, batch) {
  let loss = 0;
  let correct = 0;
  for (let start = 0; start < data.nTest; start += batch) {
    const n = Math.min(batch, data.nTest - start);
    buf.X.set(data.testX.subarray(start * IN, (start + n) * IN));
    buf.labels.set(data.testY.subarray(start, start + n));
    forward(model, buf, n);
    const r = softmaxCE(buf, n, false);
    loss += r.loss;
    correct += r.correct;
  }
  return { loss: loss / data.nTest, accuracy: correct / data.nTest };
}

// ---------------------------------------------------------------------------------------------
// Optimizers: one class, two registrations

function makeOptimizer(kind, args) {
  const opt = new NysAct({
    lr: args.lr,
    momentum: 0.9,
    weightDecay: 5e-4,
    statDecay: 0.95,
    damping: args.damping,
    tcov: args.tcov,
    tinv: args.tinv,
    rank: args.rank,
    seed: args.seed,
  });
  if (kind === 'nysact') {
    opt.addDense('fc1', { inFeatures: IN, outFeatures: HID, bias: true, layout: 'inOut' });
    opt.addDense('fc2', { inFeatures: HID, outFeatures: OUT, bias: true, layout: 'inOut' });
  } else {
    opt.addParam('fc1.weight', { size: IN * HID });
    opt.addParam('fc1.bias', { size: HID });
    opt.addParam('fc2.weight', { size: HID * OUT });
    opt.addParam('fc2.bias', { size: OUT });
  }
  return opt;
}

/** observe (on statistics steps) + step; returns the milliseconds spent inside the optimizer. */
function optimizerStep(kind, opt, model, buf, n) {
  const t0 = performance.now();
  if (kind === 'nysact') {
    if (opt.needsActivations) {
      opt.observe('fc1', buf.X.subarray(0, n * IN), [n, IN]);
      opt.observe('fc2', buf.H1.subarray(0, n * HID), [n, HID]);
    }
    opt.step({
      fc1: { weight: model.W1, grad: buf.gW1, bias: model.b1, biasGrad: buf.gb1 },
      fc2: { weight: model.W2, grad: buf.gW2, bias: model.b2, biasGrad: buf.gb2 },
    });
  } else {
    opt.step({
      'fc1.weight': { weight: model.W1, grad: buf.gW1 },
      'fc1.bias': { weight: model.b1, grad: buf.gb1 },
      'fc2.weight': { weight: model.W2, grad: buf.gW2 },
      'fc2.bias': { weight: model.b2, grad: buf.gb2 },
    });
  }
  return performance.now() - t0;
}

// ---------------------------------------------------------------------------------------------
// Training loop

function shuffled(count, seed, epoch) {
  const rng = makeRng(subSeed(seed, `shuffle:${epoch}`));
  const idx = new Uint32Array(count);
  for (let i = 0; i < count; i++) idx[i] = i;
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(rng.uniform() * (i + 1));
    const t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
  return idx;
}

function makeProgress(label) {
  const tty = process.stderr.isTTY === true;
  let last = 0;
  let lastLine = '';
  return {
    update(line, force) {
      const now = performance.now();
      lastLine = line;
      if (tty) {
        if (force || now - last > 100) {
          process.stderr.write(`\r\x1b[K${label} ${line}`);
          last = now;
        }
      } else if (force || now - last > 5000) {
        process.stderr.write(`${label} ${line}\n`);
        last = now;
      }
    },
    done(line) {
      if (tty) process.stderr.write(`\r\x1b[K${label} ${line ?? lastLine}\n`);
      else process.stderr.write(`${label} ${line ?? lastLine}\n`);
    },
  };
}

function train(kind, label, init, data, args) {
  const model = cloneModel(init);
  const opt = makeOptimizer(kind, args);
  const buf = makeBuffers(args.batch);
  const evalBatch = 1000;
  const evalBuf = makeBuffers(evalBatch);
  const stepsPerEpoch = Math.ceil(data.nTrain / args.batch);
  const initial = evaluate(model, data, evalBuf, evalBatch);
  const curve = { loss: [], acc: [[0, initial.accuracy]], testLoss: [[0, initial.loss]] };
  const epochs = [];
  let optMs = 0;
  let totalMs = 0;
  let steps = 0;
  const progress = makeProgress(label.padEnd(12));
  const curveEvery = Math.max(1, Math.round(stepsPerEpoch / 10));
  try {
    for (let epoch = 0; epoch < args.epochs; epoch++) {
      const order = shuffled(data.nTrain, args.seed, epoch);
      let epochLoss = 0;
      let epochSeen = 0;
      let windowLoss = 0;
      let windowSeen = 0;
      const e0 = performance.now();
      for (let s = 0; s < stepsPerEpoch; s++) {
        const t0 = performance.now();
        const start = s * args.batch;
        const n = Math.min(args.batch, data.nTrain - start);
        for (let i = 0; i < n; i++) {
          const src = order[start + i];
          buf.X.set(data.trainX.subarray(src * IN, (src + 1) * IN), i * IN);
          buf.labels[i] = data.trainY[src];
        }
        forward(model, buf, n);
        const r = softmaxCE(buf, n, true);
        if (!Number.isFinite(r.loss)) throw new Error(`${label}: loss is not finite at epoch ${epoch + 1}, step ${s + 1}`);
        backward(model, buf, n);
        optMs += optimizerStep(kind, opt, model, buf, n);
        totalMs += performance.now() - t0;
        steps++;
        epochLoss += r.loss;
        epochSeen += n;
        windowLoss += r.loss;
        windowSeen += n;
        if ((s + 1) % curveEvery === 0 || s + 1 === stepsPerEpoch) {
          curve.loss.push([epoch + (s + 1) / stepsPerEpoch, windowLoss / windowSeen]);
          windowLoss = 0;
          windowSeen = 0;
        }
        progress.update(
          `epoch ${epoch + 1}/${args.epochs}  batch ${String(s + 1).padStart(String(stepsPerEpoch).length)}/${stepsPerEpoch}  loss ${(epochLoss / epochSeen).toFixed(4)}`,
          s + 1 === stepsPerEpoch,
        );
      }
      const epochSec = (performance.now() - e0) / 1000;
      const test = evaluate(model, data, evalBuf, evalBatch);
      curve.acc.push([epoch + 1, test.accuracy]);
      curve.testLoss.push([epoch + 1, test.loss]);
      epochs.push({ epoch: epoch + 1, trainLoss: epochLoss / epochSeen, testLoss: test.loss, testAccuracy: test.accuracy, seconds: epochSec });
      progress.done(
        `epoch ${epoch + 1}/${args.epochs}  train loss ${(epochLoss / epochSeen).toFixed(4)}  test acc ${(100 * test.accuracy).toFixed(2)}%  (${epochSec.toFixed(1)} s)`,
      );
    }
  } finally {
    opt.dispose();
  }
  const last = epochs[epochs.length - 1];
  return {
    optimizer: label,
    testAccuracy: last.testAccuracy,
    testLoss: last.testLoss,
    secondsPerEpoch: epochs.reduce((a, e) => a + e.seconds, 0) / epochs.length,
    optimizerMsPerStep: optMs / steps,
    totalMsPerStep: totalMs / steps,
    steps,
    epochs,
    curve,
  };
}

// ---------------------------------------------------------------------------------------------
// Output: tables and SVG

function table(headers, rows, align) {
  const widths = headers.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const fmt = (cells) => cells.map((v, c) => (align[c] === 'l' ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join('  ');
  return [fmt(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(fmt)].join('\n');
}

function escapeXml(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || 1;
  const raw = span / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) ?? 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function renderSvg(results, meta) {
  const W = 860;
  const H = 380;
  const colors = ['#d62728', '#1f77b4'];
  const panels = [
    { title: 'train loss (running mean)', key: 'loss', fmt: (v) => v.toFixed(2) },
    { title: 'test accuracy', key: 'acc', fmt: (v) => `${(100 * v).toFixed(0)}%` },
  ];
  const pw = 360;
  const ph = 230;
  const top = 74;
  const parts = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`);
  parts.push(`<rect width="${W}" height="${H}" fill="#fff"/>`);
  parts.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(meta.title)}</text>`);
  parts.push(`<text x="${W / 2}" y="40" text-anchor="middle" fill="#555">${escapeXml(meta.subtitle)}</text>`);
  panels.forEach((panel, p) => {
    const left = 60 + p * (pw + 70);
    const series = results.map((r) => r.curve[panel.key]);
    const xs = series.flat().map((pt) => pt[0]);
    const ys = series.flat().map((pt) => pt[1]);
    const xMax = Math.max(...xs, 1);
    let yLo = Math.min(...ys);
    let yHi = Math.max(...ys);
    const pad = (yHi - yLo) * 0.08 || 0.05;
    yLo = Math.max(0, yLo - pad);
    yHi = panel.key === 'acc' ? Math.min(1, yHi + pad) : yHi + pad;
    const sx = (x) => left + (x / xMax) * pw;
    const sy = (y) => top + ph - ((y - yLo) / (yHi - yLo || 1)) * ph;
    parts.push(`<text x="${left + pw / 2}" y="${top - 6}" text-anchor="middle" font-weight="bold">${escapeXml(panel.title)}</text>`);
    parts.push(`<rect x="${left}" y="${top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
    for (const t of niceTicks(yLo, yHi, 5)) {
      const y = sy(t).toFixed(1);
      parts.push(`<line x1="${left}" x2="${left + pw}" y1="${y}" y2="${y}" stroke="#eee"/>`);
      parts.push(`<text x="${left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" fill="#444">${escapeXml(panel.fmt(t))}</text>`);
    }
    for (const t of niceTicks(0, xMax, Math.min(8, Math.max(2, Math.ceil(xMax))))) {
      const x = sx(t).toFixed(1);
      parts.push(`<line x1="${x}" x2="${x}" y1="${top + ph}" y2="${top + ph + 4}" stroke="#888"/>`);
      parts.push(`<text x="${x}" y="${top + ph + 16}" text-anchor="middle" fill="#444">${t}</text>`);
    }
    parts.push(`<text x="${left + pw / 2}" y="${top + ph + 34}" text-anchor="middle" fill="#444">epoch</text>`);
    series.forEach((pts, i) => {
      const d = pts.map((pt) => `${sx(pt[0]).toFixed(1)},${sy(pt[1]).toFixed(1)}`).join(' ');
      parts.push(`<polyline points="${d}" fill="none" stroke="${colors[i]}" stroke-width="2"/>`);
      for (const pt of pts) {
        parts.push(`<circle cx="${sx(pt[0]).toFixed(1)}" cy="${sy(pt[1]).toFixed(1)}" r="2.5" fill="${colors[i]}"/>`);
      }
    });
  });
  results.forEach((r, i) => {
    const x = 60 + i * 260;
    const y = H - 18;
    parts.push(`<line x1="${x}" x2="${x + 24}" y1="${y}" y2="${y}" stroke="${colors[i]}" stroke-width="3"/>`);
    parts.push(
      `<text x="${x + 30}" y="${y}" dominant-baseline="middle">${escapeXml(`${r.optimizer}: ${(100 * r.testAccuracy).toFixed(2)}% test acc`)}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

// ---------------------------------------------------------------------------------------------
// Main

function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.help) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  if (args.threads > 0) nysact.setThreads(args.threads);
  const dataDir = args.data ?? DEFAULT_DATA_DIR;
  let data;
  const tLoad = performance.now();
  try {
    data = loadFashionMnist(dataDir, args.train);
  } catch (err) {
    data = { error: err.message };
  }
  if (data.error) {
    process.stderr.write(`Fashion-MNIST not found (${data.error}); using the embedded synthetic 10-class problem instead.\n`);
    data = makeSynthetic(args.train, args.seed);
  }
  process.stderr.write(
    `${data.name}: ${data.nTrain} train / ${data.nTest} test examples from ${data.source} (${((performance.now() - tLoad) / 1000).toFixed(1)} s)\n`,
  );
  if (args.batch > data.nTrain) usageError(`--batch ${args.batch} is larger than the training set (${data.nTrain})`);

  const init = initModel(args.seed);
  const results = [];
  for (const [kind, label] of [
    ['nysact', 'NysAct'],
    ['sgd', 'SGD-momentum'],
  ]) {
    results.push(train(kind, label, init, data, args));
  }

  const config = {
    dataset: data.name,
    dataSource: data.source,
    trainExamples: data.nTrain,
    testExamples: data.nTest,
    model: '784-128-10 MLP (ReLU, softmax cross-entropy), weights [in, out]',
    epochs: args.epochs,
    batch: args.batch,
    seed: args.seed,
    lr: args.lr,
    momentum: 0.9,
    weightDecay: 5e-4,
    statDecay: 0.95,
    damping: args.damping,
    rank: args.rank,
    tcov: args.tcov,
    tinv: args.tinv,
    backend: 'cpu',
    threads: nysact.nativeInfo().threads,
  };

  const svgPath = path.resolve(args.out);
  let svgError = null;
  try {
    const svg = renderSvg(results, {
      title: `NysAct vs SGD-momentum: 784-128-10 MLP on ${data.name}`,
      subtitle: `${data.nTrain} train / ${data.nTest} test, batch ${args.batch}, lr ${args.lr}, seed ${args.seed}, rank ${args.rank}, damping ${args.damping}, tcov ${args.tcov}, tinv ${args.tinv}`,
    });
    fs.writeFileSync(svgPath, svg);
  } catch (err) {
    svgError = err.message;
  }

  if (args.json) {
    process.stdout.write(JSON.stringify({ config, results, svg: svgError ? null : svgPath }, null, 2) + '\n');
  } else {
    const out = [];
    out.push(
      `${data.name}, ${data.nTrain} train / ${data.nTest} test, 784-128-10 MLP, batch ${args.batch}, ${args.epochs} epoch(s), ` +
        `lr ${args.lr}, momentum 0.9, wd 5e-4, seed ${args.seed}, ${config.threads} native thread(s)`,
    );
    out.push(`NysAct: rank ${args.rank}, damping ${args.damping}, statDecay 0.95, tcov ${args.tcov}, tinv ${args.tinv}`);
    for (const r of results) {
      out.push('');
      out.push(`${r.optimizer}`);
      out.push(
        table(
          ['epoch', 'train loss', 'test loss', 'test acc', 'time (s)'],
          r.epochs.map((e) => [String(e.epoch), e.trainLoss.toFixed(4), e.testLoss.toFixed(4), `${(100 * e.testAccuracy).toFixed(2)}%`, e.seconds.toFixed(2)]),
          ['r', 'r', 'r', 'r', 'r'],
        ),
      );
      out.push(
        `final: test acc ${(100 * r.testAccuracy).toFixed(2)}%, test loss ${r.testLoss.toFixed(4)}, ${r.secondsPerEpoch.toFixed(2)} s/epoch, ` +
          `optimizer ${r.optimizerMsPerStep.toFixed(2)} ms of ${r.totalMsPerStep.toFixed(2)} ms per step ` +
          `(${((100 * r.optimizerMsPerStep) / r.totalMsPerStep).toFixed(1)}%, ${r.steps} steps)`,
      );
    }
    out.push('');
    out.push('Summary (time per epoch excludes evaluation; optimizer time = observe + step)');
    out.push(
      table(
        ['optimizer', 'test acc', 'test loss', 's/epoch', 'opt ms/step', 'total ms/step', 'opt share'],
        results.map((r) => [
          r.optimizer,
          `${(100 * r.testAccuracy).toFixed(2)}%`,
          r.testLoss.toFixed(4),
          r.secondsPerEpoch.toFixed(2),
          r.optimizerMsPerStep.toFixed(2),
          r.totalMsPerStep.toFixed(2),
          `${((100 * r.optimizerMsPerStep) / r.totalMsPerStep).toFixed(1)}%`,
        ]),
        ['l', 'r', 'r', 'r', 'r', 'r', 'r'],
      ),
    );
    const [a, b] = results;
    out.push(`NysAct time per step: ${(a.totalMsPerStep / b.totalMsPerStep).toFixed(2)}x SGD-momentum's`);
    out.push(svgError ? `Could not write the curves to ${svgPath}: ${svgError}` : `Curves written to ${svgPath}`);
    process.stdout.write(out.join('\n') + '\n');
  }
  if (svgError) process.exitCode = 1;
}

main();
