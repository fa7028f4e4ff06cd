#!/usr/bin/env node
// How many of each layer's sketched directions SPEC §1's eigenvalue shift leaves preconditioned
// (non-zero coefficients 1/(λ̂+ρ) − 1/ρ) after 101 NysAct steps (lr 0.05, tinv 10) of the
// Fashion-MNIST CNN of `nysact train` (tfjs-node, its seed-0 initializers, the first 101 training
// batches of 128).
//   node bench/fashion-directions.js [damping 0.3] [rank 20]
'use strict';
process.env.TF_CPP_MIN_LOG_LEVEL = process.env.TF_CPP_MIN_LOG_LEVEL ?? '1';
const tf = require('@tensorflow/tfjs-node');
const { NysActOptimizer } = require('../dist/cjs/tfjs.js');
const { findFashionMnist } = require('../dist/cjs/cli/fashion-data.js');
const { buildModel } = require('../dist/cjs/cli/train.js');
const { data } = findFashionMnist();
const model = buildModel(tf, 'cnn', 0);
const [damping, rank] = [Number(process.argv[2] ?? 0.3), Number(process.argv[3] ?? 20)];
const opt = new NysActOptimizer({ learningRate: 0.05, damping, rank, tinv: 10, weightDecay: 0, seed: 0 }).attach(model);
model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
(async () => {
  for (let s = 0; s < 101; s++) {
    const xs = tf.tensor(data.trainX.subarray(s * 128 * 784, (s + 1) * 128 * 784), [128, 28, 28, 1]);
    const ys = tf.oneHot(tf.tensor1d(Int32Array.from(data.trainY.subarray(s * 128, (s + 1) * 128)), 'int32'), 10).toFloat();
    await model.trainOnBatch(xs, ys); tf.dispose([xs, ys]);
  }
  for (const name of opt.core.layers) {
    const st = opt.core.layerState(name);
    if (!st.coefficients || !st.coefficients.length) continue;
    const nz = Array.from(st.coefficients).filter((c) => c !== 0).length;
    console.log(`rho ${damping} rank ${rank} ${name}: ${nz} of ${st.coefficients.length} preconditioned${st.fullCovariance ? ' (full covariance)' : ''}`);
  }
})().catch((error) => {
  process.stderr.write(`${error.stack ?? error}\n`);
  process.exit(1);
});
