// Parity with the independent PyTorch reference of SPEC §1 (scripts/reference_nysact.py, float64).
// Fixtures come from scripts/gen_fixtures.py: real small networks trained for 60 steps, with every
// activation, gradient and sketch recorded (rounded to float32) and the reference's parameters at
// checkpoints.  We replay the same inputs through the public API and compare.
//
// Tolerance: every parameter element within 1e-4 · max|reference parameter| (the bound).
// Measured worst case on the CPU backend: < 1e-6.  λ̂ (from the stored coefficients) within
// 1e-3 · (1 + max λ̂) on every inverse step.
import t from 'tap';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { NysAct, nativeInfo, type LayerUpdate } from '../dist/cjs/index.js';

interface FixtureLayer {
  name: string;
  kind: 'dense' | 'conv2d';
  inFeatures?: number;
  outFeatures?: number;
  kernelSize?: [number, number];
  inChannels?: number;
  outChannels?: number;
  strides?: [number, number];
  padding?: 'same' | 'valid';
  dilation?: [number, number];
  bias: boolean;
  weight: string;
  biasParam: string | null;
}

interface Fixture {
  name: string;
  hyper: {
    lr: number; momentum: number; statDecay: number; damping: number; weightDecay: number;
    tcov: number; tinv: number; rank: number; sketch: 'gaussian' | 'subcolumns'; nesterov: boolean;
  };
  steps: number;
  layers: FixtureLayer[];
  plain: string[];
  init: Record<string, number[]>;
  trace: Array<{
    t: number;
    activations?: Record<string, { shape: number[]; data: number[] }>;
    sketches?: Record<string, { matrix?: number[]; indices?: number[] }>;
    grads: Record<string, number[]>;
    params?: Record<string, number[]>;
    factors?: Record<string, { lambdaHat: number[]; shift: number }>;
  }>;
}

const PARAM_TOLERANCE = 1e-4;
const LAMBDA_TOLERANCE = 1e-3;
const fixtureDir = join(__dirname, 'fixtures');
const fixtures = readdirSync(fixtureDir).filter((f) => f.endsWith('.json')).sort();
const backends = nativeInfo().backends;

t.ok(fixtures.length >= 5, 'fixtures present');

for (const b of backends) {
  if (!b.available) {
    t.test(`parity on backend '${b.name}'`, { skip: b.reason }, async () => {});
    continue;
  }
  for (const file of fixtures) {
    t.test(`${file} on ${b.name}`, async (t) => {
      const f = JSON.parse(readFileSync(join(fixtureDir, file), 'utf8')) as Fixture;
      const h = f.hyper;
      const opt = new NysAct({
        lr: h.lr, momentum: h.momentum, statDecay: h.statDecay, damping: h.damping, weightDecay: h.weightDecay,
        tcov: h.tcov, tinv: h.tinv, rank: h.rank, sketch: h.sketch, nesterov: h.nesterov, backend: b.name as 'cpu',
      });
      for (const l of f.layers) {
        if (l.kind === 'dense') {
          opt.addDense(l.name, { inFeatures: l.inFeatures!, outFeatures: l.outFeatures!, bias: l.bias });
        } else {
          opt.addConv2d(l.name, {
            kernelSize: l.kernelSize!, inChannels: l.inChannels!, outChannels: l.outChannels!,
            strides: l.strides!, padding: l.padding!, dilation: l.dilation!, bias: l.bias,
          });
        }
      }
      for (const name of f.plain) opt.addParam(name, { size: f.init[name].length });
      const params: Record<string, Float32Array> = {};
      for (const [k, v] of Object.entries(f.init)) params[k] = Float32Array.from(v);

      let worst = 0;
      let worstLambda = 0;
      let checkpoints = 0;
      for (const step of f.trace) {
        t.equal(opt.iteration, step.t);
        if (opt.needsActivations) {
          for (const l of f.layers) {
            const a = step.activations![l.name];
            const s = step.sketches?.[l.name];
            const sketch = s?.matrix ? Float32Array.from(s.matrix) : s?.indices ? Int32Array.from(s.indices) : undefined;
            opt.observe(l.name, Float32Array.from(a.data), a.shape, sketch ? { sketch } : undefined);
          }
        }
        const updates: Record<string, LayerUpdate> = {};
        for (const l of f.layers) {
          updates[l.name] = { weight: params[l.weight], grad: Float32Array.from(step.grads[l.weight]) };
          if (l.biasParam) {
            updates[l.name].bias = params[l.biasParam];
            updates[l.name].biasGrad = Float32Array.from(step.grads[l.biasParam]);
          }
        }
        for (const name of f.plain) updates[name] = { weight: params[name], grad: Float32Array.from(step.grads[name]) };
        const result = opt.step(updates);
        t.same(result.fallbacks, [], `no factorisation fallbacks at t=${step.t}`);

        if (step.factors) {
          for (const [name, ref] of Object.entries(step.factors)) {
            const st = opt.layerState(name);
            const rho = 1 / st.inverseDamping;
            const ours = Array.from(st.coefficients, (c) => 1 / (c + st.inverseDamping) - rho).sort((x, y) => y - x);
            const scale = 1 + Math.max(...ref.lambdaHat);
            for (let i = 0; i < ours.length; i++) {
              worstLambda = Math.max(worstLambda, Math.abs(ours[i] - ref.lambdaHat[i]) / scale);
            }
          }
        }
        if (step.params) {
          checkpoints++;
          for (const [name, ref] of Object.entries(step.params)) {
            let scale = 0;
            for (const v of ref) scale = Math.max(scale, Math.abs(v));
            let err = 0;
            for (let i = 0; i < ref.length; i++) err = Math.max(err, Math.abs(params[name][i] - ref[i]));
            worst = Math.max(worst, err / scale);
          }
        }
      }
      t.equal(opt.iteration, f.steps, 'all steps executed');
      t.ok(checkpoints >= 10, `compared ${checkpoints} checkpoints`);
      t.ok(worst <= PARAM_TOLERANCE, `parameters within ${PARAM_TOLERANCE} relative (worst ${worst.toExponential(2)})`);
      t.ok(worstLambda <= LAMBDA_TOLERANCE, `λ̂ within ${LAMBDA_TOLERANCE} (worst ${worstLambda.toExponential(2)})`);
      opt.dispose();
    });
  }
}
