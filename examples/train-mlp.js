#!/usr/bin/env node
'use strict';
/**
 * The framework-free core API of nysact (NysAct: addDense/addParam, needsActivations, observe,
 * step) in a hand-written training loop: a 784-128-10 MLP (ReLU, softmax cross-entropy, weights
 * in the tfjs layout [in, out]) trained on Fashion-MNIST in plain JavaScript, once with NysAct and
 * once with SGD-momentum (the same class, every tensor registered with addParam), under the same
 * seed, initial weights and batch order. `npx nysact train` (lib/cli/train.ts) is the full job
 * with tfjs, Adam and curves. Run `node examples/train-mlp.js --help` for the options.
 */

const { parseArgs } = require('node:util');
const { performance } = require('node:perf_hooks');

let nysact;
let fashion;
try {
  nysact = require('../dist/cjs/index.js');
  fashion = require('../dist/cjs/cli/fashion-data.js');
} catch (err) {
  process.stderr.write(`Cannot load nysact from ../dist (run \`npm run build\` first): ${err.message}\n`);
  process.exit(1);
}
const { NysAct } = nysact;

const USAGE = `Usage: node examples/train-mlp.js [options]

Trains a 784-128-10 MLP on Fashion-MNIST with NysAct, then with SGD-momentum (the same class,
every tensor registered with addParam), same seed, initial weights and batch order.

Options:
  --epochs N     epochs per optimizer (default 2)
  --batch N      batch size (default 128)
  --train N      training examples used, 0 = all (default 10000)
  --lr X         learning rate for both optimizers (default 0.05)
  --seed N       seed for init, shuffling and NysAct's sketches (default 0)
  --rank N       NysAct sketch rank (default 10)
  --damping X    NysAct damping rho (default 0.3)
  --tcov N       statistics every N steps (default 5)
  --tinv N       preconditioner rebuilt every N steps (default 50)
  --threads N    native threads (setThreads; default: the package's default)
  --data DIR     directory with the four gzip idx files (default ${fashion.DEFAULT_DATA_DIR},
                 else an embedded 2000/500-image subset)
  --json         print the results as JSON
  --help         show this help

Momentum 0.9, weight decay 5e-4, statDecay 0.95. Progress goes to stderr.`;

function usageError(message) {
  process.stderr.write(`train-mlp: ${message}\nRun with --help for the list of options.\n`);
  process.exit(2);
}

/** Strict parsing with node:util parseArgs; every problem is a usage error (exit 2). */
function readArgs() {
  // name: [min, max, default] for the integers; name: default for the positive numbers.
  const ints = {
    epochs: [1, 10000, 2], batch: [1, 60000, 128], train: [0, 60000, 10000], seed: [0, 0xffffffff, 0],
    rank: [1, 65536, 10], tcov: [1, 1e9, 5], tinv: [1, 1e9, 50], threads: [1, 1024, 0],
  };
  const nums = { lr: 0.05, damping: 0.3 };
  const options = { data: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } };
  for (const name of [...Object.keys(ints), ...Object.keys(nums)]) options[name] = { type: 'string' };
  let values;
  try {
    ({ values } = parseArgs({ options, strict: true, allowPositionals: false }));
  } catch (err) {
    usageError(err.message);
  }
  const args = { data: values.data, json: values.json ?? false, help: values.help ?? false };
  if (args.data === '') usageError('--data needs a directory');
  for (const [name, [min, max, def]] of Object.entries(ints)) {
    const v = values[name];
    const n = (args[name] = v === undefined ? def : Number(v));
    if (v !== undefined && (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < min || n > max)) {
      usageError(`--${name} expects an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
    }
  }
  for (const [name, def] of Object.entries(nums)) {
    const v = values[name];
    const n = (args[name] = v === undefined ? def : v.trim() === '' ? NaN : Number(v));
    if (!Number.isFinite(n) || n <= 0) usageError(`--${name} expects a finite number > 0, got ${JSON.stringify(v)}`);
  }
  return args;
}

/** mulberry32 uniform draws and Box-Muller normals; `tag` gives independent streams per use. */
function makeRng(seed, tag) {
  let a = (seed ^ 0x9e3779b9) >>> 0;
  for (let i = 0; i < tag.length; i++) a = Math.imul(a ^ tag.charCodeAt(i), 0x01000193) >>> 0;
  const uniform = () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const normal = () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return { uniform, normal };
}

// ---------------------------------------------------------------------------------------------
// Model: 784-128-10, weights [in, out]

const IN = 784, HID = 128, OUT = 10;

function initModel(seed) {
  const rng = makeRng(seed, 'init');
  const he = (fanIn, fanOut) => Float32Array.from({ length: fanIn * fanOut }, () => rng.normal() * Math.sqrt(2 / fanIn));
  return { W1: he(IN, HID), b1: new Float32Array(HID), W2: he(HID, OUT), b2: new Float32Array(OUT) };
}

function makeBuffers(batch) {
  return {
    X: new Float32Array(batch * IN), labels: new Uint8Array(batch),
    A1: new Float32Array(batch * HID), Z: new Float32Array(batch * OUT), dA1: new Float32Array(batch * HID),
    gW1: new Float32Array(IN * HID), gb1: new Float32Array(HID), gW2: new Float32Array(HID * OUT), gb2: new Float32Array(OUT),
  };
}

/** out[n, m] = A[n, k] · B[k, m] + bias[m]. */
function matmulBias(A, B, bias, out, n, k, m) {
  for (let i = 0; i < n; i++) {
    out.set(bias, i * m);
    for (let kk = 0; kk < k; kk++) {
      const a = A[i * k + kk];
      if (a !== 0) for (let j = 0; j < m; j++) out[i * m + j] += a * B[kk * m + j];
    }
  }
}

/** G[k, m] = Aᵀ · D for A [n, k], D [n, m]; biasG[m] = Σ_i D[i, m]. */
function matmulTransA(A, D, G, biasG, n, k, m) {
  G.fill(0);
  biasG.fill(0);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < m; j++) biasG[j] += D[i * m + j];
    for (let kk = 0; kk < k; kk++) {
      const a = A[i * k + kk];
      if (a !== 0) for (let j = 0; j < m; j++) G[kk * m + j] += a * D[i * m + j];
    }
  }
}

/** Forward pass over buf.X, then softmax cross-entropy. With `grad`, buf.Z becomes dMeanLoss/dZ. */
function forwardLoss(model, buf, n, grad) {
  matmulBias(buf.X, model.W1, model.b1, buf.A1, n, IN, HID);
  for (let i = 0; i < n * HID; i++) if (buf.A1[i] < 0) buf.A1[i] = 0;
  matmulBias(buf.A1, model.W2, model.b2, buf.Z, n, HID, OUT);
  let loss = 0, correct = 0;
  for (let i = 0; i < n; i++) {
    const z = buf.Z.subarray(i * OUT, (i + 1) * OUT);
    const y = buf.labels[i];
    let max = -Infinity, arg = 0;
    for (let j = 0; j < OUT; j++) if (z[j] > max) { max = z[j]; arg = j; }
    let sum = 0;
    for (let j = 0; j < OUT; j++) sum += Math.exp(z[j] - max);
    loss += Math.log(sum) - (z[y] - max);
    if (arg === y) correct++;
    if (grad) for (let j = 0; j < OUT; j++) z[j] = (Math.exp(z[j] - max) / sum - (j === y ? 1 : 0)) / n;
  }
  return { loss, correct };
}

/** Backward pass after forwardLoss(grad = true): fills gW1, gb1, gW2, gb2. */
function backward(model, buf, n) {
  matmulTransA(buf.A1, buf.Z, buf.gW2, buf.gb2, n, HID, OUT);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < HID; k++) {
      let s = 0;
      if (buf.A1[i * HID + k] > 0) for (let j = 0; j < OUT; j++) s += buf.Z[i * OUT + j] * model.W2[k * OUT + j];
      buf.dA1[i * HID + k] = s;
    }
  }
  matmulTransA(buf.X, buf.dA1, buf.gW1, buf.gb1, n, IN, HID);
}

function evaluate(model, data, buf, batch) {
  let loss = 0, correct = 0;
  for (let start = 0; start < data.nTest; start += batch) {
    const n = Math.min(batch, data.nTest - start);
    buf.X.set(data.testX.subarray(start * IN, (start + n) * IN));
    buf.labels.set(data.testY.subarray(start, start + n));
    const r = forwardLoss(model, buf, n, false);
    loss += r.loss;
    correct += r.correct;
  }
  return { loss: loss / data.nTest, accuracy: correct / data.nTest };
}

// ---------------------------------------------------------------------------------------------
// The optimizer: one class, two ways of registering the tensors. Returns the optimizer and a
// function doing one update (observe on statistics steps, then step; weights change in place).

function makeOptimizer(kind, args, model, buf) {
  const opt = new NysAct({
    lr: args.lr, momentum: 0.9, weightDecay: 5e-4, statDecay: 0.95,
    damping: args.damping, rank: args.rank, tcov: args.tcov, tinv: args.tinv, seed: args.seed,
  });
  if (kind === 'nysact') {
    opt.addDense('fc1', { inFeatures: IN, outFeatures: HID, bias: true, layout: 'inOut' });
    opt.addDense('fc2', { inFeatures: HID, outFeatures: OUT, bias: true, layout: 'inOut' });
    const update = (n) => {
      if (opt.needsActivations) {
        // A statistics step: each layer's input activations for this batch, [batch, inFeatures].
        opt.observe('fc1', buf.X.subarray(0, n * IN), [n, IN]);
        opt.observe('fc2', buf.A1.subarray(0, n * HID), [n, HID]);
      }
      opt.step({
        fc1: { weight: model.W1, grad: buf.gW1, bias: model.b1, biasGrad: buf.gb1 },
        fc2: { weight: model.W2, grad: buf.gW2, bias: model.b2, biasGrad: buf.gb2 },
      });
    };
    return { opt, update };
  }
  const tensors = {
    'fc1.weight': { weight: model.W1, grad: buf.gW1 }, 'fc1.bias': { weight: model.b1, grad: buf.gb1 },
    'fc2.weight': { weight: model.W2, grad: buf.gW2 }, 'fc2.bias': { weight: model.b2, grad: buf.gb2 },
  };
  for (const [name, t] of Object.entries(tensors)) opt.addParam(name, { size: t.weight.length });
  return { opt, update: () => opt.step(tensors) };
}

function train(kind, label, init, data, args) {
  const model = { W1: init.W1.slice(), b1: init.b1.slice(), W2: init.W2.slice(), b2: init.b2.slice() };
  const buf = makeBuffers(args.batch);
  const { opt, update } = makeOptimizer(kind, args, model, buf);
  const evalBuf = makeBuffers(1000);
  let optMs = 0, totalMs = 0, steps = 0, test;
  try {
    for (let epoch = 0; epoch < args.epochs; epoch++) {
      // Fisher-Yates shuffle, seeded per epoch: both optimizers see the same batches.
      const rng = makeRng(args.seed, `shuffle:${epoch}`);
      const order = Uint32Array.from({ length: data.nTrain }, (_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(rng.uniform() * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
      }
      let trainLoss = 0;
      for (let start = 0; start < data.nTrain; start += args.batch) {
        const t0 = performance.now();
        const n = Math.min(args.batch, data.nTrain - start);
        for (let i = 0; i < n; i++) {
          const src = order[start + i];
          buf.X.set(data.trainX.subarray(src * IN, (src + 1) * IN), i * IN);
          buf.labels[i] = data.trainY[src];
        }
        const r = forwardLoss(model, buf, n, true);
        if (!Number.isFinite(r.loss)) throw new Error(`${label}: the loss is not finite (epoch ${epoch + 1})`);
        backward(model, buf, n);
        const t1 = performance.now();
        update(n);
        const t2 = performance.now();
        optMs += t2 - t1;
        totalMs += t2 - t0;
        steps++;
        trainLoss += r.loss;
      }
      test = evaluate(model, data, evalBuf, 1000);
      process.stderr.write(
        `${label.padEnd(12)} epoch ${epoch + 1}/${args.epochs}  train loss ${(trainLoss / data.nTrain).toFixed(4)}  ` +
          `test loss ${test.loss.toFixed(4)}  test acc ${(100 * test.accuracy).toFixed(2)}%\n`,
      );
    }
  } finally {
    opt.dispose();
  }
  return { optimizer: label, testAccuracy: test.accuracy, testLoss: test.loss, msPerStep: totalMs / steps, optimizerMsPerStep: optMs / steps, steps };
}

function main() {
  const args = readArgs();
  if (args.help) return void process.stdout.write(USAGE + '\n');
  if (args.threads > 0) nysact.setThreads(args.threads);
  let found;
  try {
    found = fashion.findFashionMnist(args.data);
  } catch (err) {
    usageError(err.message);
  }
  if (found.note) process.stderr.write(`${found.note}\n`);
  const all = found.data;
  const nTrain = args.train === 0 ? all.nTrain : Math.min(args.train, all.nTrain);
  const data = { ...all, nTrain, trainX: all.trainX.subarray(0, nTrain * IN), trainY: all.trainY.subarray(0, nTrain) };
  if (args.batch > nTrain) usageError(`--batch ${args.batch} is larger than the training set (${nTrain})`);

  const init = initModel(args.seed);
  const results = [train('nysact', 'NysAct', init, data, args), train('sgd', 'SGD-momentum', init, data, args)];
  const threads = nysact.nativeInfo().threads;
  const config = {
    dataSource: data.source, embedded: data.embedded, trainExamples: nTrain, testExamples: data.nTest,
    epochs: args.epochs, batch: args.batch, lr: args.lr, momentum: 0.9, weightDecay: 5e-4, statDecay: 0.95,
    seed: args.seed, rank: args.rank, damping: args.damping, tcov: args.tcov, tinv: args.tinv, threads,
  };
  if (args.json) return void process.stdout.write(JSON.stringify({ config, results }, null, 2) + '\n');
  const rows = [['optimizer', 'test acc', 'test loss', 'ms/step', 'optimizer ms/step']].concat(
    results.map((r) => [r.optimizer, `${(100 * r.testAccuracy).toFixed(2)}%`, r.testLoss.toFixed(4), r.msPerStep.toFixed(2), r.optimizerMsPerStep.toFixed(2)]),
  );
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const line = (row) => row.map((v, c) => (c === 0 ? v.padEnd(widths[c]) : v.padStart(widths[c]))).join('  ');
  process.stdout.write(
    `Fashion-MNIST${data.embedded ? ' (embedded subset)' : ''}: ${nTrain} train / ${data.nTest} test, 784-128-10 MLP, ` +
      `${args.epochs} epoch(s), batch ${args.batch}, lr ${args.lr}, seed ${args.seed}, ` +
      `rank ${args.rank}, damping ${args.damping}, tcov ${args.tcov}, tinv ${args.tinv}, ${threads} thread(s)\n` +
      [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n') +
      '\n(ms/step: batch copy + forward + backward + optimizer; optimizer ms/step: observe + step)\n',
  );
}

main();
