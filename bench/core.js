#!/usr/bin/env node
'use strict';
// npm run bench:core — NysAct optimizer time on ResNet-32 / CIFAR-10 layer shapes at batch 128
// (SPEC §3), against a float32 PyTorch transcription of SPEC §1 (dense P, unfold patches) run in
// the same invocation, plus the machine's SGEMM rate and copy bandwidth probed in the same run.
// Speed and memory live here, not in tests: the figures are ratios against baselines measured now.
//
//   node bench/core.js [--batch 128] [--rank 10] [--repeats N] [--quick] [--json] [--no-torch]

const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { performance } = require('node:perf_hooks');

const root = path.join(__dirname, '..');
const native = require('node-gyp-build')(root);

function parseArgs(argv) {
  const opts = { batch: 128, rank: 10, repeats: 0, quick: false, json: false, torch: true, tcov: 5, tinv: 50 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 1) usage(`Expected a positive integer after ${a}`);
      return v;
    };
    if (a === '--batch') opts.batch = value();
    else if (a === '--rank') opts.rank = value();
    else if (a === '--repeats') opts.repeats = value();
    else if (a === '--quick') opts.quick = true;
    else if (a === '--json') opts.json = true;
    else if (a === '--no-torch') opts.torch = false;
    else if (a === '--help' || a === '-h') usage(null);
    else usage(`Unknown option ${a}`);
  }
  if (!opts.repeats) opts.repeats = opts.quick ? 3 : 7;
  return opts;
}

function usage(error) {
  const text = 'usage: node bench/core.js [--batch N] [--rank R] [--repeats N] [--quick] [--json] [--no-torch]';
  if (error) {
    console.error(`${error}\n${text}`);
    process.exit(2);
  }
  console.log(text);
  process.exit(0);
}

// ResNet-32 (option A shortcuts: no 1x1 convs): 31 3x3 convs without bias, one 64->10 dense layer.
// 'same' padding with TensorFlow semantics (the stride-2 convs pad 0/1 instead of torch's 1/1; same
// shapes and cost).
function resnet32Layers() {
  const layers = [{ name: 'conv1', kind: 'conv', cin: 3, cout: 16, stride: 1, hw: 32 }];
  let cin = 16;
  let hw = 32;
  for (const [stage, cout] of [[1, 16], [2, 32], [3, 64]]) {
    for (let block = 0; block < 5; block++) {
      for (const j of [1, 2]) {
        const stride = stage > 1 && block === 0 && j === 1 ? 2 : 1;
        layers.push({ name: `stage${stage}.block${block}.conv${j}`, kind: 'conv', cin, cout, stride, hw });
        if (stride === 2) hw /= 2;
        cin = cout;
      }
    }
  }
  layers.push({ name: 'fc', kind: 'dense', cin: 64, cout: 10, stride: 1, hw: 1, bias: true });
  return layers;
}

function nativeSpec(l, rank, key) {
  const conv = l.kind === 'conv';
  return {
    kind: conv ? 1 : 0, fanIn: conv ? 9 * l.cin : l.cin, fanOut: l.cout, bias: !!l.bias, rank, sketch: 0, layout: 0,
    kernelH: conv ? 3 : 1, kernelW: conv ? 3 : 1, inChannels: conv ? l.cin : 0, strideH: l.stride, strideW: l.stride,
    dilationH: 1, dilationW: 1, padding: conv ? 1 : 0, size: 0, seedHi: 0, seedLo: 1234, layerKey: key,
  };
}

function randomArray(n, seed) {
  // xorshift32 → uniform(-1, 1); cheap, deterministic.
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    a[i] = s / 2147483648 - 1;
  }
  return a;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function timed(fn, repeats) {
  fn(); // warm-up
  const times = [];
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    fn();
    times.push((performance.now() - t0) / 1000);
  }
  return { median: median(times), min: Math.min(...times), max: Math.max(...times) };
}

function runTorch(opts) {
  const args = [path.join(__dirname, 'reference_torch.py'), '--batch', String(opts.batch), '--rank', String(opts.rank)];
  if (opts.quick) args.push('--quick');
  const r = spawnSync('python3', args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) return { error: (r.stderr || r.error || 'python3 failed').toString().trim().split('\n').slice(-3).join(' ') };
  return JSON.parse(r.stdout);
}

// The machine's own peaks, measured now with torch (MKL SGEMM, tensor copy) on the same threads.
function runProbes() {
  const code = `
import json, time, torch
torch.set_num_threads(${native.threads()})
n = 2048
a = torch.randn(n, n); b = torch.randn(n, n)
torch.mm(a, b)
ts = []
for _ in range(5):
    t = time.perf_counter(); torch.mm(a, b); ts.append(time.perf_counter() - t)
gflops = 2 * n**3 / min(ts) / 1e9
x = torch.empty(64 * 2**20); y = torch.empty_like(x); x.fill_(1.0); y.copy_(x)
ts = []
for _ in range(5):
    t = time.perf_counter(); y.copy_(x); ts.append(time.perf_counter() - t)
gbs = 2 * x.numel() * 4 / min(ts) / 1e9
print(json.dumps({"sgemm_gflops": gflops, "copy_gbs": gbs}))
`;
  const r = spawnSync('python3', ['-c', code], { encoding: 'utf8' });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').slice(-1)[0] };
  return JSON.parse(r.stdout);
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const log = (msg) => { if (!opts.json) process.stderr.write(`${msg}\n`); };
  const layers = resnet32Layers();
  const B = opts.batch;

  log(`nysact ${native.version}: ResNet-32 shapes, batch ${B}, rank ${opts.rank}, ${native.threads()} threads`);
  const inputs = new Map();
  const setup = layers.map((l, i) => {
    const layer = new native.Layer(nativeSpec(l, opts.rank, i + 1), 'cpu');
    const shapeKey = `${l.kind}:${l.hw}:${l.cin}`;
    if (!inputs.has(shapeKey)) {
      const n = l.kind === 'conv' ? B * l.hw * l.hw * l.cin : B * l.cin;
      inputs.set(shapeKey, randomArray(n, 17 + i));
    }
    const fanIn = l.kind === 'conv' ? 9 * l.cin : l.cin;
    const outHw = l.kind === 'conv' ? Math.ceil(l.hw / l.stride) : 1;
    return {
      l, layer, x: inputs.get(shapeKey), fanIn, outHw,
      weight: randomArray(fanIn * l.cout, 100 + i).map((v) => v * 0.1),
      bias: l.bias ? new Float32Array(l.cout) : null,
      grad: randomArray(fanIn * l.cout, 200 + i).map((v) => v * 0.01),
      gradBias: l.bias ? randomArray(l.cout, 300 + i) : null,
    };
  });
  const scalars = new Float64Array([0.1, 0.9, 5e-4, 0, 0]);

  const statsStep = () => {
    for (const s of setup) {
      if (s.l.kind === 'conv') s.layer.sketchCovarianceConv(s.x, B, s.l.hw, s.l.hw, null);
      else s.layer.sketchCovarianceDense(s.x, B, null);
      s.layer.commitStatistics(0.95);
    }
  };
  const inverseStep = () => { for (const s of setup) s.layer.nystromFactors(1.0, 0); };
  const ordinaryStep = () => {
    for (const s of setup) s.layer.preconditionedMomentumStep(s.weight, s.bias, s.grad, s.gradBias, scalars);
  };

  log('timing statistics steps…');
  const stats = timed(statsStep, opts.repeats);
  log('timing inverse steps…');
  const inverse = timed(inverseStep, opts.repeats * 3);
  log('timing ordinary steps…');
  const ordinary = timed(ordinaryStep, opts.repeats * 5);
  const amortized = ordinary.median + stats.median / opts.tcov + inverse.median / opts.tinv;

  // Sketch work: two skinny products per layer, 2·n·p·r flops each.
  let sketchFlops = 0;
  const perLayer = setup.map((s) => {
    const n = s.l.kind === 'conv' ? B * s.outHw * s.outHw : B;
    const p = s.fanIn + (s.l.bias ? 1 : 0);
    const r = Math.min(opts.rank, p);
    sketchFlops += 4 * n * p * r;
    const st = s.layer.exportState();
    const preconditionerBytes = 4 * (st.ema.length + st.sketch.length + st.basis.length + st.coefficients.length);
    return {
      name: s.l.name, p, q: s.l.cout, n, r,
      preconditionerBytes,
      stateBytes: s.layer.stateBytes(),
      referenceDensePBytes: 4 * p * p,
    };
  });
  const sketchGflops = sketchFlops / stats.median / 1e9;
  // Update traffic: read G, θ, buf; write θ, buf (+ the second read of G for M = Uᵀ G).
  let updateBytes = 0;
  for (const s of setup) updateBytes += 4 * s.weight.length * 6;
  const updateGbs = updateBytes / ordinary.median / 1e9;

  log('probing the machine (torch SGEMM 2048³, 256 MB copy)…');
  const probes = runProbes();
  let torch = null;
  if (opts.torch) {
    log('running the PyTorch reference transcription (bench/reference_torch.py)…');
    torch = runTorch(opts);
  }

  const totals = {
    preconditionerBytes: perLayer.reduce((a, l) => a + l.preconditionerBytes, 0),
    stateBytes: perLayer.reduce((a, l) => a + l.stateBytes, 0),
    referenceDensePBytes: perLayer.reduce((a, l) => a + l.referenceDensePBytes, 0),
  };
  const result = {
    nysact: {
      version: native.version, threads: native.threads(), batch: B, rank: opts.rank, tcov: opts.tcov, tinv: opts.tinv,
      statsStepS: stats.median, inverseStepS: inverse.median, ordinaryStepS: ordinary.median, amortizedS: amortized,
      spread: { stats, inverse, ordinary },
      sketchGflops, updateGbs,
    },
    machine: probes,
    reference: torch,
    ratios: {},
    memory: totals,
    layers: perLayer,
  };
  if (!probes.error) {
    result.ratios.sketchFractionOfSgemm = sketchGflops / probes.sgemm_gflops;
    result.ratios.updateFractionOfCopy = updateGbs / probes.copy_gbs;
  }
  if (torch && !torch.error) {
    result.ratios.amortizedSpeedup = torch.amortized_s / amortized;
    result.ratios.statsSpeedup = torch.stats_step_s / stats.median;
    result.ratios.inverseSpeedup = torch.inverse_step_s / inverse.median;
    result.ratios.ordinarySpeedup = torch.ordinary_step_s / ordinary.median;
    result.ratios.stateBytesRatio = torch.state_bytes / totals.stateBytes;
  }
  for (const s of setup) s.layer.dispose();

  if (opts.json) {
    console.log(JSON.stringify(result, null, 2));
    return;
  }
  const ms = (s) => `${(s * 1000).toFixed(1)} ms`;
  const ref = torch && !torch.error ? torch : null;
  const row = (label, ours, theirs) =>
    console.log(`${label.padEnd(26)}${ours.padStart(12)}${(theirs ?? '—').padStart(14)}${
      ref && theirs ? `${(parseFloat(theirs) / parseFloat(ours)).toFixed(1).padStart(9)}×` : ''}`);
  console.log(`\nResNet-32 layer shapes, batch ${B}, rank ${opts.rank}, tcov ${opts.tcov}, tinv ${opts.tinv}, ${native.threads()} threads`);
  console.log(`${''.padEnd(26)}${'nysact'.padStart(12)}${'torch ref'.padStart(14)}${'speedup'.padStart(10)}`);
  row('statistics step', ms(stats.median), ref && ms(ref.stats_step_s));
  row('inverse step', ms(inverse.median), ref && ms(ref.inverse_step_s));
  row('ordinary step', ms(ordinary.median), ref && ms(ref.ordinary_step_s));
  row('amortized per iteration', ms(amortized), ref && ms(ref.amortized_s));
  row('optimizer state (MB)', (totals.stateBytes / 1e6).toFixed(2), ref && (ref.state_bytes / 1e6).toFixed(2));
  if (torch && torch.error) console.log(`PyTorch reference not run: ${torch.error}`);
  if (!probes.error) {
    console.log(`\nsketch: ${sketchGflops.toFixed(1)} GFLOP/s = ${(100 * result.ratios.sketchFractionOfSgemm).toFixed(0)}% of this machine's SGEMM (${probes.sgemm_gflops.toFixed(1)} GFLOP/s)`);
    console.log(`fused update: ${updateGbs.toFixed(1)} GB/s = ${(100 * result.ratios.updateFractionOfCopy).toFixed(0)}% of copy bandwidth (${probes.copy_gbs.toFixed(1)} GB/s)`);
  } else {
    console.log(`machine probes not run: ${probes.error}`);
  }
  console.log(`preconditioner memory: ${(totals.preconditionerBytes / 1e6).toFixed(3)} MB (O(p·r): EMA, sketch, U, coefficients) vs dense P ${(totals.referenceDensePBytes / 1e6).toFixed(2)} MB`);
}

main();
