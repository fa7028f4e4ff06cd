// The batched inverse update: a step rebuilds the factors of all its layers with one
// nystromFactorsBatch call per backend (binding/napi/addon.cpp runPlan).  A layer's factors depend on
// that layer alone, so a model whose layers are rebuilt together must give the bits of one optimizer
// per layer, on every thread count (the CPU backend rebuilds the layers of a batch on OpenMP threads).
import t from 'tap';
import { NysAct, nativeInfo, setThreads, type LayerUpdate, type NysActOptions } from '../dist/cjs/index.js';
import { firstDifference, mulberry32 } from './helpers';

interface LayerCase {
  name: string;
  add: (o: NysAct) => void;
  shape: number[];
  weight: number;
  bias: number;
}

// Mixed ranks (several layers share r, as in a real model), full covariance, conv and dense.
const layers: LayerCase[] = [
  { name: 'conv1', add: (o) => o.addConv2d('conv1', { kernelSize: 3, inChannels: 3, outChannels: 8, padding: 'same' }), shape: [4, 10, 10, 3], weight: 27 * 8, bias: 8 },
  { name: 'conv2', add: (o) => o.addConv2d('conv2', { kernelSize: 3, inChannels: 8, outChannels: 8, strides: 2 }), shape: [4, 10, 10, 8], weight: 72 * 8, bias: 8 },
  { name: 'fc1', add: (o) => o.addDense('fc1', { inFeatures: 96, outFeatures: 16 }), shape: [64, 96], weight: 96 * 16, bias: 16 },
  { name: 'fc2', add: (o) => o.addDense('fc2', { inFeatures: 16, outFeatures: 10, rank: 3 }), shape: [64, 16], weight: 16 * 10, bias: 10 },
  { name: 'small', add: (o) => o.addDense('small', { inFeatures: 5, outFeatures: 4 }), shape: [64, 5], weight: 5 * 4, bias: 4 },
];

// Runs `steps` steps of the given layers; one optimizer for all of them, or one per layer.
function run(options: NysActOptions, together: boolean, steps: number): { weights: Float32Array[]; states: unknown[]; fallbacks: unknown[] } {
  const optimizers = together ? [new NysAct(options)] : layers.map(() => new NysAct(options));
  const owner = (i: number) => optimizers[together ? 0 : i];
  layers.forEach((l, i) => l.add(owner(i)));
  const params = layers.map((l, i) => {
    const r = mulberry32(100 + i);
    return { weight: Float32Array.from({ length: l.weight }, () => r() - 0.5), bias: Float32Array.from({ length: l.bias }, () => 0.1 * (r() - 0.5)) };
  });
  const fallbacks: unknown[] = [];
  for (let step = 0; step < steps; step++) {
    const updates: Array<Record<string, LayerUpdate>> = optimizers.map(() => ({}));
    layers.forEach((l, i) => {
      const r = mulberry32(1000 * (step + 1) + i);
      const arr = (n: number, scale: number) => Float32Array.from({ length: n }, () => scale * (r() - 0.5));
      const o = owner(i);
      if (o.needsActivations) o.observe(l.name, arr(l.shape.reduce((a, b) => a * b, 1), 2), l.shape);
      updates[together ? 0 : i][l.name] = { ...params[i], grad: arr(l.weight, 0.1), biasGrad: arr(l.bias, 0.1) };
    });
    optimizers.forEach((o, j) => fallbacks.push(...o.step(updates[j]).fallbacks));
  }
  const states = layers.map((l, i) => owner(i).layerState(l.name));
  for (const o of optimizers) o.dispose();
  return { weights: params.flatMap((p) => [p.weight, p.bias]), states, fallbacks };
}

t.test('layers rebuilt together give the bits of one optimizer per layer', async (t) => {
  const threadsBefore = nativeInfo().threads;
  const variants: Array<{ label: string; options: NysActOptions }> = [
    { label: 'reference, gaussian', options: { seed: 11, rank: 6, damping: 0.3, tcov: 1, tinv: 2 } },
    { label: 'textbook, subcolumns', options: { seed: 12, rank: 6, damping: 1, tcov: 2, tinv: 3, nystrom: 'textbook', sketch: 'subcolumns' } },
  ];
  for (const { label, options } of variants) {
    for (const threads of [1, 2, 4]) {
      setThreads(threads);
      const together = run(options, true, 7);
      setThreads(1);
      const apart = run(options, false, 7);
      t.equal(firstDifference(together.weights, apart.weights), null, `${label}, ${threads} thread(s): weights bit-identical`);
      t.equal(firstDifference(together.states, apart.states), null, `${label}, ${threads} thread(s): layer states bit-identical`);
      t.same(together.fallbacks, apart.fallbacks, `${label}, ${threads} thread(s): same factor reports`);
    }
  }
  setThreads(threadsBefore);
});

t.test('a batch with a failing layer reports that layer and keeps the others finite', async (t) => {
  // Huge activations make Ĉ overflow float32 in one layer only: its rebuild falls back (identity),
  // the others factorise, and the step reports the fallback under that layer's name.
  const o = new NysAct({ seed: 5, rank: 4, tcov: 1, tinv: 1 });
  o.addDense('ok', { inFeatures: 12, outFeatures: 3 });
  o.addDense('overflow', { inFeatures: 12, outFeatures: 3 });
  const w = { ok: new Float32Array(36).fill(0.1), overflow: new Float32Array(36).fill(0.1) };
  const b = { ok: new Float32Array(3), overflow: new Float32Array(3) };
  o.observe('ok', new Float32Array(8 * 12).fill(0.5), [8, 12]);
  o.observe('overflow', new Float32Array(8 * 12).fill(3e19), [8, 12]);
  const g = new Float32Array(36).fill(0.01), gb = new Float32Array(3).fill(0.01);
  const result = o.step({
    ok: { weight: w.ok, bias: b.ok, grad: g, biasGrad: gb },
    overflow: { weight: w.overflow, bias: b.overflow, grad: g, biasGrad: gb },
  });
  t.same(result.fallbacks.map((f) => [f.layer, f.status]), [['overflow', 'identity']], 'only the overflowing layer fell back');
  t.ok([...w.ok, ...w.overflow, ...b.ok, ...b.overflow].every(Number.isFinite), 'all weights finite');
  o.dispose();
});
