#!/usr/bin/env node
// Times one epoch of a small CNN on the full Fashion-MNIST training set with @tensorflow/tfjs-node
// (run `bash scripts/setup-tfjs-node.sh` first):
//   conv 3x3x16 relu -> maxpool 2 -> conv 3x3x32 relu -> maxpool 2 -> dense 128 relu -> dense 10,
//   SGD (lr 0.05), batch 128, model.fit, channels-last.
//
//   node bench/tfjs-node-fashion-mnist.js [epochs=1] [dataDir=/usr/share/datasets/fashion-mnist]
//
// Data: the gzip idx files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
// t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz. Threads: TF_NUM_INTRAOP_THREADS /
// TF_NUM_INTEROP_THREADS (read when the backend starts).
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const os = require('node:os');
const tf = require('@tensorflow/tfjs-node');

const epochs = Number(process.argv[2] ?? 1);
const dataDir = process.argv[3] ?? '/usr/share/datasets/fashion-mnist';
const batchSize = 128;

function readIdx(file) {
  const buf = zlib.gunzipSync(fs.readFileSync(path.join(dataDir, file)));
  const magic = buf.readUInt32BE(0);
  const ndim = magic & 0xff;
  if (magic >> 8 !== 0x08) throw new Error(`${file}: not an unsigned-byte idx file`);
  const dims = [];
  for (let i = 0; i < ndim; i++) dims.push(buf.readUInt32BE(4 + 4 * i));
  return { dims, data: buf.subarray(4 + 4 * ndim) };
}

function load(prefix) {
  const img = readIdx(`${prefix}-images-idx3-ubyte.gz`);
  const lab = readIdx(`${prefix}-labels-idx1-ubyte.gz`);
  const [n, h, w] = img.dims;
  const x = new Float32Array(n * h * w);
  for (let i = 0; i < x.length; i++) x[i] = img.data[i] / 255;
  return {
    n,
    x: tf.tensor4d(x, [n, h, w, 1]),
    y: tf.oneHot(tf.tensor1d(Int32Array.from(lab.data), 'int32'), 10).toFloat(),
  };
}

(async () => {
  const train = load('train');
  const test = load('t10k');
  console.log(
    `backend ${tf.getBackend()}, TensorFlow ${tf.engine().backend.binding.TF_Version}, ` +
      `${os.cpus().length} cpus, load ${os.loadavg().map((v) => v.toFixed(2)).join(' ')}, ` +
      `TF_NUM_INTRAOP_THREADS=${process.env.TF_NUM_INTRAOP_THREADS ?? '(default)'}`
  );
  console.log(`train ${train.n}, test ${test.n}, batch ${batchSize}`);

  const model = tf.sequential({
    layers: [
      tf.layers.conv2d({ inputShape: [28, 28, 1], filters: 16, kernelSize: 3, activation: 'relu' }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.conv2d({ filters: 32, kernelSize: 3, activation: 'relu' }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.flatten(),
      tf.layers.dense({ units: 128, activation: 'relu' }),
      tf.layers.dense({ units: 10, activation: 'softmax' }),
    ],
  });
  model.compile({ optimizer: tf.train.sgd(0.05), loss: 'categoricalCrossentropy', metrics: ['accuracy'] });
  console.log(`parameters ${model.countParams()}`);

  const steps = Math.ceil(train.n / batchSize);
  for (let e = 0; e < epochs; e++) {
    const t = process.hrtime.bigint();
    const h = await model.fit(train.x, train.y, { batchSize, epochs: 1, shuffle: true, verbose: 0 });
    const s = Number(process.hrtime.bigint() - t) / 1e9;
    const [testLoss, testAcc] = model.evaluate(test.x, test.y, { batchSize: 1000 });
    console.log(
      `epoch ${e + 1}: ${s.toFixed(2)} s (${((s / steps) * 1000).toFixed(1)} ms/step over ${steps} steps), ` +
        `train loss ${h.history.loss[0].toFixed(4)}, test loss ${(await testLoss.data())[0].toFixed(4)}, ` +
        `test acc ${(await testAcc.data())[0].toFixed(4)}`
    );
    tf.dispose([testLoss, testAcc]);
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
