// The nysact/tfjs suite, run once per tfjs backend (tfjs.test.ts: the pure-JS CPU backend;
// tfjs-node.test.ts: @tensorflow/tfjs-node when it is installed). Small models only: the pure-JS
// backend is slow.
import type * as tfjs from '@tensorflow/tfjs';
import type { Test } from 'tap';

import { NysAct, liveObjects } from '../dist/cjs/index.js';
import { NysActOptimizer, nysact } from '../dist/cjs/tfjs.js';
import { firstDifference, mulberry32, randomArray } from './helpers';

type TF = typeof tfjs;
type Model = tfjs.LayersModel;

// Small ρ: with ρ = 1 and unit-scale activations SPEC §1's shift clips every λ̂ to 0 (P = I/ρ),
// which would hide preconditioning bugs.
const OPTS = { learningRate: 0.05, damping: 0.05, tcov: 2, tinv: 4, rank: 4 };

function weightsOf(model: Model): Float32Array[] {
  return model.getWeights().map((w) => w.dataSync().slice() as Float32Array);
}

function sameWeights(a: Float32Array[], b: Float32Array[]): string | null {
  if (a.length !== b.length) return `${a.length} vs ${b.length} weights`;
  for (let i = 0; i < a.length; i++) {
    const d = firstDifference(a[i], b[i], `weight ${i}`);
    if (d) return d;
  }
  return null;
}

function maxRel(a: Float32Array[], b: Float32Array[]): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    let scale = 0;
    for (const v of a[i]) scale = Math.max(scale, Math.abs(v));
    for (let j = 0; j < a[i].length; j++) worst = Math.max(worst, Math.abs(a[i][j] - b[i][j]) / Math.max(scale, 1e-12));
  }
  return worst;
}

function data(tf: TF, seed: number, shape: number[], classes: number): { x: tfjs.Tensor; y: tfjs.Tensor } {
  const rand = mulberry32(seed);
  const n = shape[0];
  const x = tf.tensor(randomArray(rand, shape.reduce((a, b) => a * b, 1)), shape);
  const labels = Array.from({ length: n }, () => Math.floor(rand() * classes));
  const y = tf.oneHot(tf.tensor1d(labels, 'int32'), classes).toFloat();
  return { x, y };
}

function mlp(tf: TF, seed = 1, prefix?: string): Model {
  const model = tf.sequential();
  const name = (suffix: string) => (prefix === undefined ? undefined : `${prefix}_${suffix}`);
  model.add(tf.layers.dense({ name: name('hidden'), inputShape: [6], units: 8, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed }) }));
  model.add(tf.layers.dense({ name: name('out'), units: 3, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }));
  return model;
}

/**
 * A conv net covering strides, 'same'/'valid', rectangular kernels, no bias, depthwise and BN.
 * (tfjs cannot train dilated convolutions: its conv2d gradient rejects dilation > 1.)
 */
function convNet(tf: TF): Model {
  const input = tf.input({ shape: [9, 9, 2] });
  let h = tf.layers.conv2d({ name: 'c_same_s2', filters: 3, kernelSize: 3, strides: 2, padding: 'same', activation: 'relu' }).apply(input) as tfjs.SymbolicTensor;
  const branch = tf.layers.conv2d({ name: 'c_valid_nobias', filters: 3, kernelSize: [2, 3], useBias: false }).apply(input) as tfjs.SymbolicTensor;
  h = tf.layers.depthwiseConv2d({ name: 'dw', kernelSize: 2, padding: 'same' }).apply(h) as tfjs.SymbolicTensor;
  h = tf.layers.batchNormalization({ name: 'bn' }).apply(h) as tfjs.SymbolicTensor;
  const merged = tf.layers.concatenate().apply([tf.layers.flatten().apply(h) as tfjs.SymbolicTensor, tf.layers.flatten().apply(branch) as tfjs.SymbolicTensor]);
  const out = tf.layers.dense({ name: 'head', units: 3, activation: 'softmax' }).apply(merged) as tfjs.SymbolicTensor;
  return tf.model({ inputs: input, outputs: out });
}

export function runSuite(t: Test, tf: TF, label: string): void {
  t.comment(`tfjs backend under test: ${label} (${tf.getBackend()})`);

  t.test('attach: Dense and Conv2D preconditioned, everything else SGD-momentum, exclusions', async (t) => {
    const model = convNet(tf);
    const opt = new NysActOptimizer(OPTS).attach(model);
    const layout = opt.layout;
    t.same(
      layout.preconditioned.map((l) => [l.layer, l.kind, l.variables.length]),
      [
        ['c_same_s2', 'conv2d', 2],
        ['c_valid_nobias', 'conv2d', 1],
        ['head', 'dense', 2],
      ],
    );
    t.same([...layout.momentumSgd].sort(), ['bn/beta', 'bn/gamma', 'dw/depthwise_kernel', 'dw/bias'].sort());
    opt.dispose();

    const excluded = new NysActOptimizer({ ...OPTS, exclude: ['head', /^c_valid/] }).attach(model);
    t.same(excluded.layout.preconditioned.map((l) => l.layer), ['c_same_s2']);
    t.ok(excluded.layout.momentumSgd.includes('head/kernel') && excluded.layout.momentumSgd.includes('c_valid_nobias/kernel'));
    excluded.dispose();

    // A model nested in a model: its layers are found.
    const inner = mlp(tf, 3);
    const outer = tf.sequential({ layers: [inner, tf.layers.dense({ units: 2 })] });
    const nested = nysact(outer, OPTS);
    t.equal(nested.layout.preconditioned.length, 3);
    nested.dispose();
    model.dispose();
    outer.dispose();
  });

  t.test('fit matches a hand-written loop on the core optimizer bit for bit', async (t) => {
    const steps = 9; // statistics at 0,2,4,6,8; inverse at 0,4,8
    const model = mlp(tf, 11);
    const reference = mlp(tf, 11);
    reference.setWeights(model.getWeights());
    const { x, y } = data(tf, 5, [16, 6], 3);

    const opt = nysact(model, OPTS);
    model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
    await model.fit(x, y, { epochs: steps, batchSize: 16, shuffle: false, verbose: 0 });

    // The same steps by hand: NysAct core, activations and gradients from tfjs.
    const core = new NysAct({ lr: OPTS.learningRate, damping: OPTS.damping, tcov: OPTS.tcov, tinv: OPTS.tinv, rank: OPTS.rank });
    const [d1, d2] = reference.layers as unknown as { kernel: tfjs.LayerVariable; bias: tfjs.LayerVariable }[];
    const k1 = d1.kernel.originalName;
    const k2 = d2.kernel.originalName;
    // Same Philox streams as the adapter's layers (keyed by position, not by tfjs's names).
    const [s1, s2] = opt.layout.preconditioned.map((l) => l.sketchKey);
    core.addDense(k1, { inFeatures: 6, outFeatures: 8, sketchKey: s1 });
    core.addDense(k2, { inFeatures: 8, outFeatures: 3, sketchKey: s2 });
    const hiddenModel = tf.model({ inputs: reference.inputs, outputs: reference.layers[0].output as tfjs.SymbolicTensor });
    const vars = [d1.kernel, d1.bias, d2.kernel, d2.bias].map((v) => v.read() as tfjs.Variable);
    for (let s = 0; s < steps; s++) {
      if (core.needsActivations) {
        core.observe(k1, x.dataSync() as Float32Array, [16, 6]);
        const hidden = hiddenModel.predict(x) as tfjs.Tensor;
        core.observe(k2, hidden.dataSync() as Float32Array, [16, 8]);
        hidden.dispose();
      }
      const { grads: g2 } = tf.variableGrads(() => {
        const p = reference.apply(x, { training: true }) as tfjs.Tensor;
        return tf.metrics.categoricalCrossentropy(y, p).mean() as tfjs.Scalar;
      }, vars);
      const w = vars.map((v) => v.dataSync().slice() as Float32Array);
      const g = vars.map((v) => g2[v.name].dataSync() as Float32Array);
      core.step({
        [k1]: { weight: w[0], bias: w[1], grad: g[0], biasGrad: g[1] },
        [k2]: { weight: w[2], bias: w[3], grad: g[2], biasGrad: g[3] },
      });
      vars.forEach((v, i) => v.assign(tf.tensor(w[i], v.shape)));
      for (const gt of Object.values(g2)) gt.dispose();
    }
    t.equal(opt.iterations, steps);
    t.equal(opt.core.iteration, steps);
    const worst = maxRel(weightsOf(model), weightsOf(reference));
    t.ok(worst < 1e-6, `fit vs hand-written loop: worst relative difference ${worst.toExponential(2)} (tolerance 1e-6)`);
    // The preconditioner was really used (not the identity).
    t.ok(opt.core.layerState(opt.layout.preconditioned[0].variables[0]).hasFactors, 'factors were built');
    opt.dispose();
    core.dispose();
    model.dispose();
    reference.dispose();
    x.dispose();
    y.dispose();
  });

  t.test('statistics: the exact layer inputs, only on statistics steps of training passes', async (t) => {
    const model = convNet(tf);
    const opt = new NysActOptimizer(OPTS).attach(model);
    model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
    const seen: { name: string; data: Float32Array; shape: number[] }[] = [];
    const core = opt.core;
    const observe = core.observe.bind(core);
    core.observe = (name, activations, shape, options) => {
      seen.push({ name, data: (activations as Float32Array).slice(), shape: [...shape] });
      observe(name, activations, shape, options);
    };
    const { x, y } = data(tf, 8, [4, 9, 9, 2], 3);

    // Inference never feeds statistics, even on a statistics step.
    (model.predict(x) as tfjs.Tensor).dispose();
    const ev = model.evaluate(x, y) as tfjs.Scalar;
    ev.dispose();
    t.equal(seen.length, 0, 'predict and evaluate feed no statistics');

    await model.trainOnBatch(x, y); // step 0: statistics
    t.same(seen.map((s) => s.name).sort(), ['c_same_s2/kernel', 'c_valid_nobias/kernel', 'head/kernel']);
    const inputs: Record<string, tfjs.Tensor> = {};
    const probe = tf.model({ inputs: model.inputs, outputs: model.getLayer('head').input as tfjs.SymbolicTensor });
    inputs['head/kernel'] = probe.predict(x) as tfjs.Tensor;
    inputs['c_same_s2/kernel'] = x;
    inputs['c_valid_nobias/kernel'] = x;
    // The convs read the model input: compare data exactly. The head's input depends on the
    // weights that step 0 changed, so only its shape is checked here (its data in the next test).
    for (const s of seen) {
      t.same(s.shape, inputs[s.name].shape, `${s.name}: shape`);
      if (s.name !== 'head/kernel') t.equal(firstDifference(s.data, inputs[s.name].dataSync()), null, `${s.name}: the layer input`);
    }
    inputs['head/kernel'].dispose(); // (the probe shares the model's layers: disposing the model frees it)

    seen.length = 0;
    await model.trainOnBatch(x, y); // step 1: no statistics
    t.equal(seen.length, 0, 'no statistics on a step with iteration % tcov != 0');
    await model.trainOnBatch(x, y); // step 2: statistics again
    t.equal(seen.length, 3);
    t.equal(opt.core.layerState('head/kernel').emaSteps, 2);
    opt.dispose();
    model.dispose();
    x.dispose();
    y.dispose();
  });

  t.test('the head input captured in training equals the input the layer computed', async (t) => {
    // Dense fed by a hidden layer: capture on step 0, compare with the hidden activations
    // computed from the same (pre-step) weights.
    const model = mlp(tf, 21);
    const opt = new NysActOptimizer(OPTS).attach(model);
    const hidden = tf.model({ inputs: model.inputs, outputs: model.layers[0].output as tfjs.SymbolicTensor });
    const { x, y } = data(tf, 9, [5, 6], 3);
    const expected = (hidden.predict(x) as tfjs.Tensor).dataSync().slice();
    let captured: Float32Array | null = null;
    const core = opt.core;
    const observe = core.observe.bind(core);
    core.observe = (name, a, shape) => {
      if (name === (model.layers[1] as unknown as { kernel: tfjs.LayerVariable }).kernel.originalName) captured = (a as Float32Array).slice();
      observe(name, a, shape);
    };
    model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
    await model.trainOnBatch(x, y);
    t.equal(firstDifference(captured, expected), null, 'hidden activations captured exactly');
    opt.dispose();
    model.dispose();
    x.dispose();
    y.dispose();
  });

  t.test('dilated and channelsFirst convolutions: registered with their geometry, inputs captured', async (t) => {
    // Forward passes only: tfjs's conv2d gradient rejects dilation > 1, and its CPU kernels
    // run channelsFirst through transposes.
    const model = tf.sequential({
      layers: [
        tf.layers.conv2d({ name: 'dil', inputShape: [7, 8, 2], filters: 2, kernelSize: 3, dilationRate: [2, 1], padding: 'same' }),
        tf.layers.conv2d({ name: 'cf', filters: 3, kernelSize: 2, strides: [1, 2], dataFormat: 'channelsFirst' }),
      ],
    });
    const opt = nysact(model, OPTS);
    const { x } = data(tf, 17, [3, 7, 8, 2], 2);
    const dilOut = tf.tidy(() => model.layers[0].apply(x) as tfjs.Tensor);
    const out = model.apply(x, { training: true }) as tfjs.Tensor;
    // The core saw exactly what an explicit observe of the same NHWC input gives.
    const check = new NysAct({ rank: OPTS.rank, damping: OPTS.damping, tcov: OPTS.tcov, tinv: OPTS.tinv });
    const [dil, cf] = opt.layout.preconditioned;
    check.addConv2d('dil', { kernelSize: 3, inChannels: 2, outChannels: 2, dilation: [2, 1], padding: 'same', sketchKey: dil.sketchKey });
    // channelsFirst: the layer reads [batch, C=7, H=8, W=2]; NHWC is [batch, 8, 2, 7].
    check.addConv2d('cf', { kernelSize: 2, inChannels: 7, outChannels: 3, strides: [1, 2], sketchKey: cf.sketchKey });
    check.observe('dil', x.dataSync() as Float32Array, [3, 7, 8, 2]);
    const nhwc = tf.transpose(dilOut, [0, 2, 3, 1]);
    check.observe('cf', nhwc.dataSync() as Float32Array, nhwc.shape);
    t.equal(firstDifference(opt.core.pendingCovariance(dil.variables[0]), check.pendingCovariance('dil')), null, 'dilated conv statistics');
    t.equal(firstDifference(opt.core.pendingCovariance(cf.variables[0]), check.pendingCovariance('cf')), null, 'channelsFirst conv statistics');
    opt.dispose();
    check.dispose();
    model.dispose();
    tf.dispose([x, dilOut, out, nhwc]);
  });

  t.test('no tensor leaks over 200 steps of fit, trainOnBatch and a minimize loop', async (t) => {
    const model = mlp(tf, 31);
    const opt = nysact(model, { ...OPTS, tinv: 10 });
    model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
    const { x, y } = data(tf, 10, [8, 6], 3);
    const x40 = tf.concat(Array.from({ length: 25 }, () => x));
    const y40 = tf.concat(Array.from({ length: 25 }, () => y));

    let before = tf.memory().numTensors;
    await model.fit(x40, y40, { epochs: 8, batchSize: 8, shuffle: false, verbose: 0 }); // 200 steps
    t.equal(tf.memory().numTensors, before, 'fit: 200 steps');
    t.equal(opt.iterations, 200);

    before = tf.memory().numTensors;
    for (let i = 0; i < 200; i++) await model.trainOnBatch(x, y);
    t.equal(tf.memory().numTensors, before, 'trainOnBatch: 200 steps');

    before = tf.memory().numTensors;
    for (let i = 0; i < 200; i++) {
      opt.minimize(() => tf.metrics.categoricalCrossentropy(y, model.apply(x, { training: true }) as tfjs.Tensor).mean() as tfjs.Scalar);
    }
    t.equal(tf.memory().numTensors, before, 'optimizer.minimize: 200 steps');
    t.equal(opt.iterations, 600);
    const w = await opt.getWeights();
    tf.dispose(w.map((n) => n.tensor));
    t.equal(tf.memory().numTensors, before, 'getWeights tensors disposed by the caller');
    opt.dispose();
    model.dispose();
    tf.dispose([x, y, x40, y40]);
  });

  t.test('fitDataset, learning-rate schedules and custom loops with extra variables', async (t) => {
    const model = mlp(tf, 41);
    const opt = nysact(model, OPTS);
    model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
    const { x, y } = data(tf, 12, [12, 6], 3);
    const ds = tf.data.zip({ xs: tf.data.array(tf.unstack(x)), ys: tf.data.array(tf.unstack(y)) }).batch(4);
    const h = await model.fitDataset(ds as unknown as tfjs.data.Dataset<tfjs.TensorContainer>, { epochs: 2, verbose: 0 });
    t.equal(h.history.loss.length, 2);
    t.equal(opt.iterations, 6, 'fitDataset: 3 batches x 2 epochs');

    // A schedule: lr 0 leaves the weights exactly where they are.
    opt.learningRate = 0;
    const w0 = weightsOf(model);
    await model.trainOnBatch(x, y);
    t.equal(sameWeights(weightsOf(model), w0), null, 'lr 0: weights unchanged');
    opt.setLearningRate(0.01);
    t.equal(opt.core.lr, 0.01);
    await model.trainOnBatch(x, y);
    t.not(sameWeights(weightsOf(model), w0), null, 'lr 0.01: weights move');
    t.throws(() => {
      opt.learningRate = -1;
    }, { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT' });

    // A per-batch schedule from a fit callback (README): the rate set in onBatchBegin is the one
    // that batch's step uses. lr 0 on odd batches: those leave the weights exactly as they were.
    const moved: boolean[] = [];
    let before: Float32Array[] = [];
    await model.fit(x, y, {
      epochs: 1,
      batchSize: 2,
      shuffle: false,
      verbose: 0,
      callbacks: {
        onBatchBegin: async (batch: number) => {
          opt.learningRate = batch % 2 === 1 ? 0 : 0.02 * 0.5 * (1 + Math.cos((Math.PI * batch) / 6));
          before = weightsOf(model);
        },
        onBatchEnd: async () => {
          moved.push(sameWeights(weightsOf(model), before) !== null);
        },
      },
    });
    t.same(moved, [true, false, true, false, true, false], 'fit callback schedule: lr 0 exactly on odd batches');

    // A variable outside the model, before the first step of a fresh optimizer: SGD-momentum.
    const model2 = mlp(tf, 42);
    const opt2 = nysact(model2, OPTS);
    const scale = tf.variable(tf.ones([3]), true, 'extra_scale');
    const loss = (): tfjs.Scalar =>
      tf.metrics.categoricalCrossentropy(y, tf.softmax(tf.mul(model2.apply(x, { training: true }) as tfjs.Tensor, scale))).mean() as tfjs.Scalar;
    opt2.minimize(loss);
    t.ok(opt2.layout.momentumSgd.includes('extra_scale'));
    t.not(scale.dataSync()[0], 1, 'the extra variable was updated');
    // After the first step a new variable is refused, clearly.
    const late = tf.variable(tf.ones([3]), true, 'late_scale');
    t.throws(
      () => opt2.minimize(() => tf.metrics.categoricalCrossentropy(y, tf.softmax(tf.mul(model2.apply(x, { training: true }) as tfjs.Tensor, late))).mean() as tfjs.Scalar),
      { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /late_scale/ },
    );
    opt.dispose();
    opt2.dispose();
    model.dispose();
    model2.dispose();
    tf.dispose([x, y, scale, late]);
  });

  t.test('gradient accumulation: two micro-batches count as one statistics sample', async (t) => {
    const full = mlp(tf, 51);
    const micro = mlp(tf, 51);
    micro.setWeights(full.getWeights());
    const { x, y } = data(tf, 13, [8, 6], 3);
    const optFull = nysact(full, OPTS);
    const optMicro = nysact(micro, OPTS);
    const lossOf = (m: Model, xs: tfjs.Tensor, ys: tfjs.Tensor) => () =>
      tf.metrics.categoricalCrossentropy(ys, m.apply(xs, { training: true }) as tfjs.Tensor).mean() as tfjs.Scalar;
    for (let step = 0; step < 5; step++) {
      optFull.minimize(lossOf(full, x, y));
      const halves = [0, 4].map((start) => [x.slice(start, 4), y.slice(start, 4)] as const);
      const parts = halves.map(([xs, ys]) => optMicro.computeGradients(lossOf(micro, xs, ys)));
      const summed: Record<string, tfjs.Tensor> = {};
      for (const name of Object.keys(parts[0].grads)) summed[name] = tf.div(tf.add(parts[0].grads[name], parts[1].grads[name]), 2);
      optMicro.applyGradients(summed);
      tf.dispose([...halves.flat(), ...parts.flatMap((p) => [p.value, ...Object.values(p.grads)]), ...Object.values(summed)]);
    }
    const key = (micro.layers[0] as unknown as { kernel: tfjs.LayerVariable }).kernel.originalName;
    t.equal(optMicro.core.layerState(key).emaSteps, 3, 'steps 0, 2, 4: three samples, not six');
    const worst = maxRel(weightsOf(full), weightsOf(micro));
    t.ok(worst < 1e-5, `accumulated vs full batch: worst relative difference ${worst.toExponential(2)} (tolerance 1e-5)`);
    optFull.dispose();
    optMicro.dispose();
    full.dispose();
    micro.dispose();
    tf.dispose([x, y]);
  });

  t.test('save model and optimizer, load, resume: identical to the uninterrupted run', async (t) => {
    const { x, y } = data(tf, 14, [12, 6], 3);
    const fitArgs = { batchSize: 4, shuffle: false, verbose: 0 as const };
    const straight = mlp(tf, 61);
    const first = mlp(tf, 61);
    first.setWeights(straight.getWeights());
    straight.compile({ optimizer: nysact(straight, { ...OPTS, seed: 7 }), loss: 'categoricalCrossentropy' });
    first.compile({ optimizer: nysact(first, { ...OPTS, seed: 7 }), loss: 'categoricalCrossentropy' });
    await straight.fit(x, y, { ...fitArgs, epochs: 6 }); // 18 steps
    await first.fit(x, y, { ...fitArgs, epochs: 3 }); // 9 steps, then save

    let saved: tfjs.io.ModelArtifacts | null = null;
    await first.save(
      tf.io.withSaveHandler(async (artifacts) => {
        saved = artifacts;
        return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
      }),
      { includeOptimizer: true },
    );
    const artifacts = saved as unknown as tfjs.io.ModelArtifacts;
    t.ok(artifacts.weightSpecs?.some((s) => s.name.endsWith('/ema')), 'optimizer state is in the saved weights');
    const resumed = await tf.loadLayersModel(tf.io.fromMemory(artifacts));
    const restored = resumed.optimizer as unknown as NysActOptimizer;
    t.ok(restored instanceof NysActOptimizer, 'the optimizer is rebuilt from its registered class');
    t.equal(restored.getConfig().seed, 7);
    restored.attach(resumed);
    t.equal(restored.iterations, 9);
    await resumed.fit(x, y, { ...fitArgs, epochs: 3 });
    t.equal(sameWeights(weightsOf(resumed), weightsOf(straight)), null, 'resumed run == uninterrupted run, bit for bit');

    // getWeights / setWeights directly, between two models whose layers have the same names
    // (the state is keyed by variable name, as tfjs optimizers key theirs).
    const source = mlp(tf, 62, 'named');
    const sourceOpt = nysact(source, { ...OPTS, seed: 7 });
    source.compile({ optimizer: sourceOpt, loss: 'categoricalCrossentropy' });
    await source.fit(x, y, { ...fitArgs, epochs: 2 });
    const again = mlp(tf, 62, 'named');
    const opt = nysact(again, { ...OPTS, seed: 7 });
    const w = await sourceOpt.getWeights();
    t.equal(w[0].name, 'iter');
    t.ok(w.some((n) => n.name === 'named_hidden/kernel/momentum'), 'keyed by variable name');
    await opt.setWeights(w);
    t.equal(opt.iterations, 6);
    t.equal(firstDifference(opt.core.getState().layers, sourceOpt.core.getState().layers), null, 'state restored bit for bit');
    // Another model's names do not fit: refused, naming the weight, and nothing changes.
    const other = mlp(tf, 62, 'other');
    const otherOpt = nysact(other, OPTS);
    const before = otherOpt.core.getState();
    await t.rejects(otherOpt.setWeights(w), { code: 'ERR_NYSACT_STATE', message: /other_hidden\/kernel\/scalars/ });
    t.equal(firstDifference(otherOpt.core.getState(), before), null, 'a refused setWeights changes nothing');
    tf.dispose(w.map((n) => n.tensor));
    await t.rejects(opt.setWeights([{ name: 'not-iter', tensor: tf.scalar(1) }]), { code: 'ERR_NYSACT_STATE' });
    for (const m of [straight, first, resumed, again, source, other]) {
      (m.optimizer as unknown as NysActOptimizer | undefined)?.dispose();
      m.dispose();
    }
    opt.dispose();
    otherOpt.dispose();
    tf.dispose([x, y]);
  });

  t.test('getConfig / fromConfig / registerClass', async (t) => {
    const opt = new NysActOptimizer({ ...OPTS, exclude: ['a', /^b\d+$/i], nesterov: true });
    const config = opt.getConfig();
    t.equal(config.learningRate, 0.05);
    t.equal(config.nesterov, true);
    t.same(config.exclude, ['a', { regexp: '^b\\d+$', flags: 'i' }]);
    const copy = tf.serialization.SerializationMap.getMap().classNameMap.NysAct;
    t.ok(copy, 'registered under className NysAct');
    const rebuilt = NysActOptimizer.fromConfig(NysActOptimizer as never, config) as unknown as NysActOptimizer;
    t.same(rebuilt.getConfig(), config);
    t.equal(opt.getClassName(), 'NysAct');
    opt.dispose();
    rebuilt.dispose();
  });

  t.test('errors are clear and change nothing', async (t) => {
    t.throws(() => new NysActOptimizer({ learningRate: -1 }), { name: 'RangeError', code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /lr|learningRate/ });
    t.throws(() => new NysActOptimizer({ learningRate: 0.1, lr: 0.1 }), { code: 'ERR_NYSACT_INVALID_ARGUMENT', message: /learningRate/ });
    t.throws(() => new NysActOptimizer({ exclude: 'x' as never }), { name: 'TypeError', message: /options\.exclude/ });
    t.throws(() => new NysActOptimizer({ exclude: [3 as never] }), { name: 'TypeError', message: /options\.exclude\[0\]/ });
    t.throws(() => new NysActOptimizer().attach({} as never), { name: 'TypeError', message: /model/ });

    const model = mlp(tf, 71);
    const { x, y } = data(tf, 15, [4, 6], 3);
    const lone = new NysActOptimizer(OPTS);
    t.throws(() => lone.minimize(() => tf.metrics.categoricalCrossentropy(y, model.apply(x) as tfjs.Tensor).mean() as tfjs.Scalar), {
      code: 'ERR_NYSACT_INVALID_ARGUMENT',
      message: /attach/,
    });
    lone.attach(model);
    t.throws(() => lone.attach(model), { message: /already attached/ });

    // A NaN gradient: thrown, and neither the weights nor the state moved.
    model.compile({ optimizer: lone, loss: 'categoricalCrossentropy' });
    await model.trainOnBatch(x, y);
    const w0 = weightsOf(model);
    const s0 = lone.core.getState();
    const bad = tf.fill([4, 6], NaN);
    await t.rejects(model.trainOnBatch(bad, y), { code: 'ERR_NYSACT_NON_FINITE' });
    t.equal(sameWeights(weightsOf(model), w0), null, 'weights unchanged');
    t.equal(firstDifference(lone.core.getState(), s0), null, 'optimizer state unchanged');
    t.equal(lone.iterations, 1);

    // nonFinite: 'skip' skips the step and reports it.
    const skipper = mlp(tf, 72);
    const optSkip = nysact(skipper, { ...OPTS, nonFinite: 'skip' });
    skipper.compile({ optimizer: optSkip, loss: 'categoricalCrossentropy' });
    const ws = weightsOf(skipper);
    await skipper.trainOnBatch(bad, y);
    t.equal(optSkip.lastStep?.skipped, true);
    t.equal(optSkip.iterations, 0);
    t.equal(sameWeights(weightsOf(skipper), ws), null, 'skipped: weights unchanged');

    lone.dispose();
    optSkip.dispose();
    t.throws(() => lone.applyGradients({}), { code: 'ERR_NYSACT_DISPOSED' });
    model.dispose();
    skipper.dispose();
    tf.dispose([x, y, bad]);
  });

  t.test('dispose frees native memory and unwraps the layers', async (t) => {
    const model = convNet(tf);
    const callsBefore = model.layers.map((l) => l.call);
    const live0 = liveObjects().layers;
    const opt = nysact(model, OPTS);
    t.ok(liveObjects().layers > live0, 'native layers allocated');
    t.not(model.getLayer('head').call, callsBefore[model.layers.indexOf(model.getLayer('head'))]);
    opt.dispose();
    opt.dispose();
    t.equal(liveObjects().layers, live0, 'native layers freed');
    t.same(model.layers.map((l) => l.call), callsBefore, 'layer call methods restored');
    t.equal(opt.disposed, true);
    model.dispose();
  });

  t.test('a frozen layer is left untouched', async (t) => {
    const model = mlp(tf, 81);
    const opt = nysact(model, OPTS);
    model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
    const { x, y } = data(tf, 16, [6, 6], 3);
    await model.trainOnBatch(x, y);
    model.layers[0].trainable = false;
    model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
    const frozen = model.layers[0].getWeights().map((w) => w.dataSync().slice() as Float32Array);
    for (let i = 0; i < 4; i++) await model.trainOnBatch(x, y);
    t.equal(sameWeights(model.layers[0].getWeights().map((w) => w.dataSync().slice() as Float32Array), frozen), null, 'frozen weights unchanged');
    t.equal(opt.iterations, 5);
    opt.dispose();
    model.dispose();
    tf.dispose([x, y]);
  });
}
