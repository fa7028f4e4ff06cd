#!/usr/bin/env node
// The Fashion-MNIST benchmark of nysact/tfjs (issue 4), in two stages, both through `nysact train`:
//
// 1. A small sweep on a validation split (the last 10,000 training images held out; the test set
//    is never looked at): NysAct's learning rate x damping at rank 10, then rank at the best pair;
//    SGD-momentum's and Adam's learning rates. Seed 0, the same epochs as stage 2.
// 2. The chosen settings on the full training set, evaluated on the test set, over several seeds
//    (same initial weights and batches for the three optimizers within a seed).
//
// Writes bench/results/fashion-*.json, the curves (SVG) and a Markdown summary, and prints it.
//   node bench/fashion.js [--epochs 3] [--seeds 3] [--quick] [--model cnn|mlp] [--tfjs auto|node|js]
//                         [--train N] [--validation N]   (smaller runs for a smoke test)
//                         [--reuse]   (read back sweep points already in --out-dir)
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const { main } = require('../dist/cjs/cli/train.js');

const { values } = parseArgs({
  options: {
    epochs: { type: 'string', default: '3' },
    seeds: { type: 'string', default: '3' },
    quick: { type: 'boolean', default: false },
    reuse: { type: 'boolean', default: false },
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
  '--epochs', values.epochs, '--tfjs', values.tfjs, '--quiet',
  ...(values.model ? ['--model', values.model] : []),
  ...(values.train ? ['--train', values.train] : []),
];
const VALIDATION = values.validation;

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

(async () => {
  const lines = [];
  const sweep = [];
  const lrs = values.quick ? ['0.05', '0.1'] : ['0.02', '0.05', '0.1', '0.2'];
  const dampings = values.quick ? ['0.3', '1'] : ['0.1', '0.3', '1', '3'];
  process.stderr.write(`stage 1: sweep on a ${VALIDATION}-image validation split (seed 0)\n`);
  for (const lr of lrs) {
    for (const damping of dampings) {
      const r = await train(`sweep-nysact-lr${lr}-d${damping}-r10`, ['--optimizers', 'nysact', '--validation', VALIDATION, '--lr', lr, '--damping', damping, '--rank', '10']);
      sweep.push({ optimizer: 'nysact', lr, damping, rank: '10', accuracy: r.summaries[0].accuracy.mean });
    }
  }
  const nysBest = sweep.reduce((a, b) => (b.accuracy > a.accuracy ? b : a));
  for (const rank of values.quick ? ['20'] : ['5', '20']) {
    const r = await train(`sweep-nysact-lr${nysBest.lr}-d${nysBest.damping}-r${rank}`, ['--optimizers', 'nysact', '--validation', VALIDATION, '--lr', nysBest.lr, '--damping', nysBest.damping, '--rank', rank]);
    sweep.push({ optimizer: 'nysact', lr: nysBest.lr, damping: nysBest.damping, rank, accuracy: r.summaries[0].accuracy.mean });
  }
  for (const lr of values.quick ? ['0.05', '0.1'] : ['0.02', '0.05', '0.1']) {
    const r = await train(`sweep-sgd-lr${lr}`, ['--optimizers', 'sgd', '--validation', VALIDATION, '--sgd-lr', lr]);
    sweep.push({ optimizer: 'sgd', lr, accuracy: r.summaries[0].accuracy.mean });
  }
  for (const lr of values.quick ? ['0.001', '0.003'] : ['0.0003', '0.001', '0.003']) {
    const r = await train(`sweep-adam-lr${lr}`, ['--optimizers', 'adam', '--validation', VALIDATION, '--adam-lr', lr]);
    sweep.push({ optimizer: 'adam', lr, accuracy: r.summaries[0].accuracy.mean });
  }
  const best = (o) => sweep.filter((s) => s.optimizer === o).reduce((a, b) => (b.accuracy > a.accuracy ? b : a));
  const [n, s, a] = [best('nysact'), best('sgd'), best('adam')];

  lines.push(`### Sweep (validation split: the last ${VALIDATION} training images; seed 0)`, '');
  lines.push('| optimizer | lr | damping | rank | validation accuracy |', '|---|---:|---:|---:|---:|');
  for (const r of sweep) {
    const chosen = r === n || r === s || r === a ? ' **(chosen)**' : '';
    lines.push(`| ${r.optimizer} | ${r.lr} | ${r.damping ?? ''} | ${r.rank ?? ''} | ${(100 * r.accuracy).toFixed(2)}%${chosen} |`);
  }

  process.stderr.write(`stage 2: full training set, test set, ${values.seeds} seeds\n`);
  const finalArgs = ['--seeds', values.seeds, '--lr', n.lr, '--damping', n.damping, '--rank', n.rank, '--sgd-lr', s.lr, '--adam-lr', a.lr];
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
