// The `nysact` command: exit codes (0 help, 2 bad command line, 1 failure), `info --json` fields,
// and tiny `bench --json` runs checked for structure and finite positive numbers (no timing
// assertions: the machine's speed is what bench reports, not what a test may assume).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import t from 'tap';

import { PRESET_NAMES, parseConv, parseDense, presetModel } from '../dist/cjs/cli/bench-models.js';
import type { BenchReport } from '../dist/cjs/cli/bench.js';
import { formatInfo, gpusOf, type InfoReport } from '../dist/cjs/cli/info.js';

const root = path.join(__dirname, '..');
const cli = path.join(root, 'dist', 'cjs', 'cli', 'main.js');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as {
  version: string;
  bin: Record<string, string>;
};

function nysact(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function positiveFinite(x: unknown): boolean {
  return typeof x === 'number' && Number.isFinite(x) && x > 0;
}

t.test('package.json bin points at the built dispatcher', async (t) => {
  t.equal(path.join(root, pkg.bin.nysact), cli);
  t.ok(fs.readFileSync(cli, 'utf8').startsWith('#!/usr/bin/env node\n'), 'shebang on the first line');
});

t.test('help and version exit 0', async (t) => {
  for (const args of [['--help'], ['-h'], ['help'], ['info', '--help'], ['bench', '--help'], ['help', 'bench']]) {
    const r = nysact(...args);
    t.equal(r.code, 0, `nysact ${args.join(' ')}`);
    t.match(r.stdout, /^Usage: nysact/, `nysact ${args.join(' ')} prints usage on stdout`);
  }
  const v = nysact('--version');
  t.equal(v.code, 0);
  t.equal(v.stdout.trim(), pkg.version);
  t.match(nysact('bench', '--help').stdout, /--preset NAME/);
});

t.test('bad command lines exit 2 with a message naming the problem', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [[], /Usage: nysact/],
    [['frobnicate'], /unknown command 'frobnicate'/],
    [['--frobnicate'], /unknown option '--frobnicate'/],
    [['info', '--bogus'], /Unknown option '--bogus'/],
    [['info', 'extra'], /Unexpected argument 'extra'/],
    [['info', '--json=yes'], /--json/],
    [['bench', '--bogus'], /Unknown option '--bogus'/],
    [['bench', '--repeats'], /--repeats/],
    [['bench', '--repeats', '0'], /expected an integer in \[1, 1000\] for --repeats but received '0'/],
    [['bench', '--repeats', 'x'], /for --repeats but received 'x'/],
    [['bench', '--batch', '1.5'], /for --batch but received '1.5'/],
    [['bench', '--rank', '-3'], /--rank/],
    [['bench', '--threads', '0'], /--threads/],
    [['bench', '--preset', 'vgg'], /expected one of resnet32-cifar, resnet50-imagenet, deit-s, mlp for --preset but received 'vgg'/],
    [['bench', '--kernels', 'sketch,bogus'], /for --kernels but received 'bogus'/],
    [['bench', '--dense', '16'], /invalid --dense '16'/],
    [['bench', '--dense', '16x0'], /OUT must be an integer/],
    [['bench', '--dense', '16x8:tokens=0'], /tokens must be an integer/],
    [['bench', '--dense', '16x8:heads=2'], /key one of tokens, bias/],
    [['bench', '--conv', '3x4:k=3'], /the input size is required/],
    [['bench', '--conv', '3x4:k=3,hw=8,k=5'], /k given twice/],
    [['bench', '--conv', '3x4:k=5,hw=3,pad=valid'], /does not fit/],
    [['bench', '--conv', '3x4:hw=8,pad=full'], /pad must be same or valid/],
    [['bench', '--backend', 'tpu'], /for --backend but received 'tpu'/],
  ];
  for (const [args, message] of cases) {
    const r = nysact(...args);
    t.equal(r.code, 2, `nysact ${args.join(' ')} exits 2`);
    t.match(r.stderr, message, `nysact ${args.join(' ')}: ${message}`);
    t.equal(r.stdout, '', `nysact ${args.join(' ')} prints nothing on stdout`);
  }
});

t.test('info --json', async (t) => {
  const r = nysact('info', '--json');
  t.equal(r.code, 0, r.stderr);
  const info = JSON.parse(r.stdout) as InfoReport;
  t.equal(info.package.name, 'nysact');
  t.equal(info.package.version, pkg.version);
  t.equal(info.node.version, process.version);
  t.equal(info.node.platform, process.platform);
  t.ok(info.native.loaded, 'native addon loaded');
  t.equal(info.native.error, null);
  t.ok(info.native.path && fs.existsSync(info.native.path), 'native.path exists');
  t.ok(['build', 'prebuild', 'override'].includes(info.native.origin as string));
  t.equal(info.native.interfaceVersion, 3);
  t.ok(positiveFinite(info.native.threads));
  const cpu = info.backends.find((b) => b.name === 'cpu');
  t.ok(cpu?.available, 'cpu backend available');
  t.equal(cpu?.reason, '');
  for (const b of info.backends.filter((x) => !x.available)) t.ok(b.reason.length > 0, `${b.name} says why it is unavailable`);
  t.ok(positiveFinite(info.cpu.logicalCpus));
  t.ok(positiveFinite(info.cpu.availableParallelism));
  t.type(info.cpu.model, 'string');
  if (info.cpu.features !== null) t.type(info.cpu.features.avx2, 'boolean');
  t.ok(positiveFinite(info.memory.totalBytes));
  t.ok(Array.isArray(info.gpus));

  const text = nysact('info');
  t.equal(text.code, 0);
  t.match(text.stdout, new RegExp(`^nysact ${pkg.version.replace(/\./g, '\\.')}`));
  t.match(text.stdout, /\n {2}cpu {8}available/);
});

t.test('bench --json on tiny custom shapes', async (t) => {
  const r = nysact(
    'bench', '--json', '--quick', '--backend', 'cpu', '--repeats', '2',
    '--dense', '16x8', '--conv', '3x4:k=3,hw=8', '--batch', '4',
  );
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /\[1\/2\] cpu custom dense 16→8: sketch/, 'progress on stderr');
  const report = JSON.parse(r.stdout) as BenchReport;
  t.same(report.settings.kernels, ['sketch', 'factors', 'update']);
  t.equal(report.settings.repeats, 2);
  t.ok(positiveFinite(report.machine.peaks?.sgemm.rate), 'SGEMM peak');
  t.ok(positiveFinite(report.machine.peaks?.copy.rate), 'copy peak');
  t.equal(report.models.length, 1);
  const [model] = report.models;
  t.equal(model.name, 'custom');
  t.equal(model.batch, 4);
  t.same(
    model.layers.map((l) => [l.name, l.geometry.n, l.geometry.p, l.geometry.q, l.geometry.r]),
    [
      ['dense 16→8', 4, 17, 8, 10],
      ['conv 3→4 3×3 @8', 4 * 8 * 8, 27, 4, 10],
    ],
  );
  t.equal(report.results.length, 6);
  t.same(report.errors, []);
  for (const x of report.results) {
    const what = `${x.kernel} ${x.layer}`;
    t.equal(x.backend, 'cpu');
    for (const m of [x.ours, x.reference]) {
      t.ok(m, `${what} has a measurement and a reference`);
      if (!m) continue;
      t.ok(positiveFinite(m.time.medianS) && m.time.minS <= m.time.medianS && m.time.medianS <= m.time.maxS, `${what} times`);
      t.equal(m.time.samplesS.length, 2);
      t.ok(positiveFinite(m.work.flops) && positiveFinite(m.work.bytes), `${what} work`);
      t.ok(positiveFinite(m.gflops) && positiveFinite(m.gbs), `${what} throughput`);
      t.ok(positiveFinite(m.fractionOfSgemm) && positiveFinite(m.fractionOfCopy), `${what} fractions of peak`);
    }
    t.ok(positiveFinite(x.speedup), `${what} speedup`);
  }
  t.ok(positiveFinite(report.results.find((x) => x.kernel === 'sketch')?.ours.components?.philoxDraw.medianS));
  t.equal(report.totals.length, 1);
  for (const totals of [report.totals[0].ours, report.totals[0].reference]) {
    t.ok(totals);
    if (!totals) continue;
    for (const key of ['statisticsStepS', 'inverseStepS', 'ordinaryStepS', 'amortizedS'] as const) {
      t.ok(positiveFinite(totals[key]), key);
    }
  }
  t.ok(positiveFinite(report.totals[0].amortizedSpeedup));
});

t.test('bench: kernel subset, no reference, no probes', async (t) => {
  const r = nysact(
    'bench', '--json', '--quiet', '--quick', '--repeats', '1', '--warmup', '0',
    '--kernels', 'update', '--no-reference', '--no-probes', '--dense', '8x4:bias=0', '--batch', '2',
  );
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stderr, '', '--quiet: nothing on stderr');
  const report = JSON.parse(r.stdout) as BenchReport;
  t.equal(report.machine.peaks, null);
  t.same(report.results.map((x) => x.kernel), ['update']);
  const [x] = report.results;
  t.equal(x.reference, null);
  t.equal(x.ours.fractionOfSgemm, null);
  t.ok(positiveFinite(x.ours.time.medianS));
  t.equal(report.totals[0].ours.amortizedS, null, 'no amortized total without every kernel');
  t.ok(positiveFinite(report.totals[0].ours.ordinaryStepS));
});

const unusable = (JSON.parse(nysact('info', '--json').stdout) as InfoReport).backends.find((b) => !b.available);
t.test('bench: an unusable backend fails with its reason (exit 1)', { skip: unusable ? false : 'every backend is usable here' }, async (t) => {
  if (!unusable) return;
  const r = nysact('bench', '--backend', unusable.name, '--quick', '--dense', '4x4');
  t.equal(r.code, 1);
  t.match(r.stderr, unusable.reason);
});

t.test('presets and the shape grammar', async (t) => {
  const layers = (name: (typeof PRESET_NAMES)[number]) => presetModel(name).layers.reduce((a, l) => a + l.count, 0);
  t.equal(layers('resnet32-cifar'), 32, 'ResNet-32: 31 convs + fc');
  t.equal(layers('resnet50-imagenet'), 54, 'ResNet-50: 53 convs + fc');
  t.equal(layers('deit-s'), 50, 'DeiT-S: patch embedding + 12×4 dense + head');
  t.equal(layers('mlp'), 2);
  t.same(parseDense('384x1536:tokens=197,bias=0'), { kind: 'dense', inFeatures: 384, outFeatures: 1536, tokens: 197, bias: false });
  t.match(parseConv('3x64:k=7,s=2,hw=224'), {
    inChannels: 3,
    outChannels: 64,
    kernelH: 7,
    kernelW: 7,
    strideH: 2,
    height: 224,
    width: 224,
    padding: 'same',
    bias: false,
  });
  t.match(parseConv('8x8:kh=1,kw=3,h=5,w=9,d=2,pad=valid,bias=1'), { kernelH: 1, kernelW: 3, height: 5, width: 9, dilationW: 2, padding: 'valid', bias: true });
});

t.test('info shows what a GPU backend reports about its device (the hook for CUDA)', async (t) => {
  const backends = [
    { name: 'cpu', available: true, reason: '', device: '' },
    { name: 'cuda', available: true, reason: '', device: 'NVIDIA H200 (compute capability 9.0, 139.8 GiB)', streams: 2 },
  ];
  const gpus = gpusOf(backends);
  t.same(gpus, [{ backend: 'cuda', name: 'NVIDIA H200 (compute capability 9.0, 139.8 GiB)', memoryBytes: null }]);
  const report = { ...(JSON.parse(nysact('info', '--json').stdout) as InfoReport), backends, gpus };
  const text = formatInfo(report);
  t.match(text, /\n {2}cuda {7}available; device: NVIDIA H200 \(compute capability 9\.0, 139\.8 GiB\); streams=2\n/);
  t.match(text, /\ngpu\n {2}cuda {7}NVIDIA H200/);
  t.same(gpusOf([{ name: 'x', available: true, reason: '', devices: [{ name: 'A', memoryBytes: 1024 }] }]), [
    { name: 'A', memoryBytes: 1024, backend: 'x' },
  ]);
});

t.test('train: bad command lines exit 2 naming the flag', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['train', '--schedule', 'linear'], /--schedule expects one of constant, cosine, got "linear"/],
    [['train', '--nystrom', 'exact'], /--nystrom expects one of reference, textbook, got "exact"/],
    [['train', '--lr', '0'], /--lr expects a positive number, got "0"/],
    [['train', '--optimizers', 'nysact,rmsprop'], /--optimizers expects names from nysact, sgd, adam, got "rmsprop"/],
    [['train', '--epochs', '1.5'], /--epochs expects an integer >= 1/],
  ];
  for (const [args, message] of cases) {
    const r = nysact(...args);
    t.equal(r.code, 2, `nysact ${args.join(' ')} exits 2`);
    t.match(r.stderr, message, `nysact ${args.join(' ')}: ${message}`);
  }
});

t.test('train: a tiny run on the pure-JS backend, constant and cosine schedules', async (t) => {
  const dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'nysact-train-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  interface Report {
    header: string;
    args: { schedule: string; nystrom: string };
    summaries: { optimizer: string; runs: number; accuracy: { mean: number } }[];
    results: { optimizer: string; accuracy: number; loss: number; lossCurve: [number, number][] }[];
  }
  const run = (schedule: string, extra: string[] = []): Report => {
    const json = path.join(dir, `${schedule}.json`);
    const r = nysact('train', '--tfjs', 'js', '--model', 'mlp', '--train', '640', '--validation', '128', '--epochs', '2',
      '--schedule', schedule, '--quiet', '--out', 'none', '--json', json, ...extra);
    t.equal(r.code, 0, `train --schedule ${schedule} exits 0 (${r.stderr.trim().split('\n').pop()})`);
    return JSON.parse(fs.readFileSync(json, 'utf8')) as Report;
  };
  const constant = run('constant');
  const cosine = run('cosine', ['--nystrom', 'textbook']);
  t.equal(cosine.args.schedule, 'cosine');
  t.equal(cosine.args.nystrom, 'textbook');
  t.match(cosine.header, /cosine learning-rate schedule/);
  t.notMatch(constant.header, /cosine/);
  for (const report of [constant, cosine]) {
    t.same(report.summaries.map((s) => [s.optimizer, s.runs]), [['nysact', 1], ['sgd', 1], ['adam', 1]]);
    for (const r of report.results) {
      t.ok(r.accuracy >= 0 && r.accuracy <= 1, `${r.optimizer} accuracy ${r.accuracy} in [0, 1]`);
      t.ok(Number.isFinite(r.loss) && r.loss > 0, `${r.optimizer} loss ${r.loss} finite`);
    }
  }
  // The same seed, data and initial weights: the runs can differ only by the learning rates. The
  // first loss (step 0's, taken before any update) matches; the last differs.
  for (const o of ['sgd', 'adam']) {
    const a = constant.results.find((r) => r.optimizer === o)!;
    const b = cosine.results.find((r) => r.optimizer === o)!;
    t.equal(a.lossCurve[0][1], b.lossCurve[0][1], `${o}: the same first loss`);
    t.not(a.lossCurve.at(-1)![1], b.lossCurve.at(-1)![1], `${o}: the cosine schedule changes training`);
  }
});
