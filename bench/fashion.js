#!/usr/bin/env node
// The Fashion-MNIST benchmark of nysact/tfjs (issue 4), in two stages, both through `nysact train`:
//
// 1. A sweep on a validation split (the last 10,000 training images held out; the test set is
//    never looked at), every optimizer under the same learning-rate schedule (default: cosine
//    decay to 0 over the budget):
//    a. seed 0: NysAct's learning rate x damping at rank 10, then rank, inverse interval and the
//       textbook Nystrom variant at the best point; SGD-momentum's and Adam's learning rates;
//    b. seed 1: the best two points of each optimizer again; each optimizer's setting is the one
//       with the best mean validation accuracy over seeds 0 and 1.
// 2. The chosen settings on the full training set, evaluated on the test set, over several seeds
//    (same initial weights and batches for the three optimizers within a seed).
//
// Writes bench/results/fashion-*.json, the curves (SVG) and a Markdown summary, and prints it.
//   node bench/fashion.js [--epochs 3] [--seeds 5] [--schedule cosine|constant] [--quick]
//                         [--model cnn|mlp] [--tfjs auto|node|js]
//                         [--train N] [--validation N]   (smaller runs for a smoke test)
//                         [--reuse]   (read back sweep points already in --out-dir)
//                         [--sweep-only]   (stop after stage 1)
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const { main } = require('../dist/cjs/cli/train.js');

const { values } = parseArgs({
  options: {
    epochs: { type: 'string', default: '3' },
    seeds: { type: 'string', default: '5' },
    schedule: { type: 'string', default: 'cosine' },
    quick: { type: 'boolean', default: false },
    reuse: { type: 'boolean', default: false },
    'sweep-only': { type: 'boolean', default: false },
    model: { type: 'string' },
    tfjs: { type: 'string', default: 'auto' },
    train: { type: 'string' },
    validation: { type: 'string', default: '10000' },
    'out-dir': { type: 'string', default: path.join(__dirname, 'results') },
  },
});
const outDir = values['out-dir'];
fs.mkdirSync(outDir, { recursive: true });
const common = [
  '--epochs', values.epochs, '--tfjs', values.tfjs, '--schedule', values.schedule, '--quiet',
  ...(values.model ? ['--model', values.model] : []),
  ...(values.train ? ['--train', values.train] : []),
];
const VALIDATION = values.validation;
const SCHEDULE = values.schedule;

async function train(tag, args) {
  const json = path.join(outDir, `fashion-${tag}.json`);
  if (values.reuse && fs.existsSync(json)) {
    // --reuse: a sweep point measured by an earlier run of this script (same settings) is read back.
    const result = JSON.parse(fs.readFileSync(json, 'utf8'));
    process.stderr.write(`  ${tag}: ${result.summaries.map((s) => `${s.optimizer} ${(100 * s.accuracy.mean).toFixed(2)}%`).join(', ')} (reused)\n`);
    return result;
  }
  const started = Date.now();
  const code = await main([...common, ...args, '--json', json, '--out', 'none']);
  if (code !== 0) throw new Error(`nysact train ${args.join(' ')} exited with ${code}`);
  const result = JSON.parse(fs.readFileSync(json, 'utf8'));
  process.stderr.write(`  ${tag}: ${result.summaries.map((s) => `${s.optimizer} ${(100 * s.accuracy.mean).toFixed(2)}%`).join(', ')} (${((Date.now() - started) / 1000).toFixed(0)} s)\n`);
  return result;
}

// A sweep point: its optimizer, settings (the `nysact train` flags) and validation accuracies.
function flags(point) {
  const f = point.settings;
  if (point.optimizer === 'sgd') return ['--sgd-lr', f.lr];
  if (point.optimizer === 'adam') return ['--adam-lr', f.lr];
  return ['--lr', f.lr, '--damping', f.damping, '--rank', f.rank, '--tinv', f.tinv, '--nystrom', f.nystrom];
}

function tagOf(point, seed) {
  const f = point.settings;
  const base = point.optimizer === 'nysact'
    ? `nysact-lr${f.lr}-d${f.damping}-r${f.rank}${f.tinv !== '50' ? `-tinv${f.tinv}` : ''}${f.nystrom !== 'reference' ? `-${f.nystrom}` : ''}`
    : `${point.optimizer}-lr${f.lr}`;
  return `sweep-${SCHEDULE}-${base}${seed ? `-seed${seed}` : ''}`;
}

async function measure(point, seed) {
  const r = await train(tagOf(point, seed), ['--optimizers', point.optimizer, '--validation', VALIDATION, '--seed', String(seed), ...flags(point)]);
  point.accuracies[seed] = r.summaries[0].accuracy.mean;
  return point;
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const score = (p) => mean(Object.values(p.accuracies));

(async () => {
  const lines = [];
  const sweep = [];
  const add = async (optimizer, settings) => {
    const key = JSON.stringify([optimizer, settings]);
    const known = sweep.find((p) => JSON.stringify([p.optimizer, p.settings]) === key);
    if (known) return known;
    const point = { optimizer, settings, accuracies: {} };
    sweep.push(point);
    return measure(point, 0);
  };
  const nys = (lr, damping, rank = '10', tinv = '50', nystrom = 'reference') => ({ lr, damping, rank, tinv, nystrom });

  process.stderr.write(`stage 1a: sweep on a ${VALIDATION}-image validation split (seed 0, ${SCHEDULE} schedule)\n`);
  for (const lr of values.quick ? ['0.05', '0.1'] : ['0.02', '0.05', '0.1', '0.2']) {
    for (const damping of values.quick ? ['1'] : ['0.3', '1', '3']) await add('nysact', nys(lr, damping));
  }
  const bestOf = (o, seeds) => sweep
    .filter((p) => p.optimizer === o && seeds.every((s) => s in p.accuracies))
    .sort((a, b) => score(b) - score(a));
  const grid = bestOf('nysact', [0])[0].settings;
  for (const rank of values.quick ? ['20'] : ['5', '20']) await add('nysact', { ...grid, rank });
  const ranked = bestOf('nysact', [0])[0].settings;
  await add('nysact', { ...ranked, tinv: '10' });
  await add('nysact', { ...ranked, nystrom: 'textbook' });
  for (const lr of values.quick ? ['0.05', '0.1'] : ['0.02', '0.05', '0.1', '0.2']) await add('sgd', { lr });
  for (const lr of values.quick ? ['0.001', '0.003'] : ['0.001', '0.002', '0.003', '0.005', '0.01']) await add('adam', { lr });

  process.stderr.write('stage 1b: the best two points of each optimizer with seed 1\n');
  const finalists = [];
  for (const o of ['nysact', 'sgd', 'adam']) {
    for (const p of bestOf(o, [0]).slice(0, 2)) {
      await measure(p, 1);
      finalists.push(p);
    }
  }
  const [n, s, a] = ['nysact', 'sgd', 'adam'].map((o) => bestOf(o, [0, 1])[0]);

  lines.push(`### Sweep (validation split: the last ${VALIDATION} training images; ${SCHEDULE} learning-rate schedule for all three optimizers)`, '');
  lines.push('| optimizer | lr | damping | rank | tinv | Nyström | validation accuracy, seed 0 | seed 1 | mean |', '|---|---:|---:|---:|---:|---|---:|---:|---:|');
  for (const p of sweep) {
    const f = p.settings;
    const chosen = p === n || p === s || p === a ? ' **(chosen)**' : '';
    const pct = (x) => (x === undefined ? '' : `${(100 * x).toFixed(2)}%`);
    lines.push(`| ${p.optimizer} | ${f.lr} | ${f.damping ?? ''} | ${f.rank ?? ''} | ${f.tinv ?? ''} | ${f.nystrom ?? ''} | ${pct(p.accuracies[0])} | ${pct(p.accuracies[1])} | ${1 in p.accuracies ? pct(score(p)) : ''}${chosen} |`);
  }
  if (values['sweep-only']) {
    process.stdout.write(`\n${lines.join('\n')}\n`);
    return;
  }

  process.stderr.write(`stage 2: full training set, test set, ${values.seeds} seeds\n`);
  const finalArgs = ['--seeds', values.seeds, ...flags(n), ...flags(s), ...flags(a)];
  const svg = path.join(outDir, 'fashion-curves.svg');
  const json = path.join(outDir, 'fashion-final.json');
  const code = await main([...common, ...finalArgs, '--json', json, '--out', svg]);
  if (code !== 0) throw new Error(`final run exited with ${code}`);
  const final = JSON.parse(fs.readFileSync(json, 'utf8'));
  const sgd = final.summaries.find((x) => x.optimizer === 'sgd');
  lines.push('', `### Test (${final.header})`, '');
  lines.push('| optimizer | test accuracy (mean ± sd) | test loss | s/epoch | ms/step (mean) | optimizer ms/step | step time vs SGD |', '|---|---:|---:|---:|---:|---:|---:|');
  for (const x of final.summaries) {
    lines.push(
      `| ${x.optimizer} | ${(100 * x.accuracy.mean).toFixed(2)} ± ${(100 * x.accuracy.std).toFixed(2)}% | ${x.loss.mean.toFixed(4)} | ${x.epochSeconds.toFixed(1)} | ${x.stepMs.toFixed(1)} | ${x.optimizerMs.toFixed(2)} | ${(x.stepMs / sgd.stepMs).toFixed(2)}× |`,
    );
  }
  lines.push('', `Command: \`node bench/fashion.js ${process.argv.slice(2).join(' ')}\`, finished ${new Date().toISOString()}; final run \`nysact train ${[...common.filter((c) => c !== '--quiet'), ...finalArgs].join(' ')}\`.`);
  const md = lines.join('\n') + '\n';
  fs.writeFileSync(path.join(outDir, 'fashion.md'), md);
  process.stdout.write(`\n${md}`);
})().catch((error) => {
  process.stderr.write(`bench/fashion.js: ${error.stack ?? error}\n`);
  process.exit(1);
});
