#!/usr/bin/env node
// Smoke test of @tensorflow/tfjs-node (plain node script, not a tap test; run
// `bash scripts/setup-tfjs-node.sh` first). Loads the TensorFlow backend, trains a small
// channels-last CNN (conv 3x3x16 -> maxpool -> conv 3x3x32 -> maxpool -> dense 10) with
// `trainOnBatch` on random data and prints the backend and the time per step.
//
//   node test/tfjs-node-smoke.js [steps=20] [batch=128]
//
// Threads: TensorFlow reads TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS when the backend
// starts (default: one intra-op thread per core). TF_CPP_MIN_LOG_LEVEL=1 hides its startup
// INFO lines. Exits non-zero if the backend is not 'tensorflow' or the loss is not finite.
'use strict';

const steps = Number(process.argv[2] ?? 20);
const batch = Number(process.argv[3] ?? 128);
const warmup = 3;

const t0 = process.hrtime.bigint();
const tf = require('@tensorflow/tfjs-node');
const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;

function fail(msg) {
  console.error(`tfjs-node smoke: FAIL: ${msg}`);
  process.exit(1);
}

const backend = tf.getBackend();
console.log(`backend: ${backend}`);
console.log(
  `tfjs ${tf.version.tfjs}, tfjs-core ${tf.version['tfjs-core']}, tfjs-node ${tf.version['tfjs-node']}, ` +
    `TensorFlow ${tf.engine().backend.binding.TF_Version}`
);
console.log(
  `threads: TF_NUM_INTRAOP_THREADS=${process.env.TF_NUM_INTRAOP_THREADS ?? '(default)'} ` +
    `TF_NUM_INTEROP_THREADS=${process.env.TF_NUM_INTEROP_THREADS ?? '(default)'}`
);
console.log(`require('@tensorflow/tfjs-node'): ${loadMs.toFixed(0)} ms`);
if (backend !== 'tensorflow') fail(`expected backend 'tensorflow', got '${backend}'`);
// The pure-JS packages must resolve the same tfjs-core (one engine, kernels registered once).
for (const name of ['@tensorflow/tfjs', '@tensorflow/tfjs-core']) {
  const other = require(name);
  if (other.engine() !== tf.engine()) fail(`${name} resolves another tfjs-core instance than tfjs-node`);
  if (other.getBackend() !== 'tensorflow') fail(`${name}.getBackend() is '${other.getBackend()}'`);
}
console.log('one tfjs-core engine shared by @tensorflow/tfjs, @tensorflow/tfjs-core and tfjs-node');

const model = tf.sequential({
  layers: [
    tf.layers.conv2d({ inputShape: [28, 28, 1], filters: 16, kernelSize: 3, activation: 'relu' }),
    tf.layers.maxPooling2d({ poolSize: 2 }),
    tf.layers.conv2d({ filters: 32, kernelSize: 3, activation: 'relu' }),
    tf.layers.maxPooling2d({ poolSize: 2 }),
    tf.layers.flatten(),
    tf.layers.dense({ units: 10, activation: 'softmax' }),
  ],
});
model.compile({ optimizer: tf.train.sgd(0.05), loss: 'categoricalCrossentropy' });

const x = tf.randomNormal([batch, 28, 28, 1]);
const y = tf.oneHot(tf.randomUniform([batch], 0, 10, 'int32'), 10).toFloat();

(async () => {
  let loss = NaN;
  for (let i = 0; i < warmup; i++) loss = await model.trainOnBatch(x, y);
  const t = process.hrtime.bigint();
  for (let i = 0; i < steps; i++) loss = await model.trainOnBatch(x, y);
  const ms = Number(process.hrtime.bigint() - t) / 1e6 / steps;
  console.log(
    `trainOnBatch: ${ms.toFixed(2)} ms/step (batch ${batch}, ${steps} steps after ${warmup} warm-up), ` +
      `loss ${Number(loss).toFixed(4)}, tensors alive ${tf.memory().numTensors}`
  );
  if (!Number.isFinite(Number(loss))) fail(`loss is not finite: ${loss}`);
  console.log('tfjs-node smoke: OK');
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
