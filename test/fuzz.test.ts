// Seeded fuzz of the raw native binding, in a child process (test/native-fuzz.js) so that a native
// crash (SIGSEGV, abort) fails this test instead of killing the runner.
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import t from 'tap';
import { nativeInfo } from '../dist/cjs/index.js';

const script = path.join(__dirname, 'native-fuzz.js');

interface FuzzStats {
  calls: number;
  returned: number;
  threw: number;
  sentinel: number;
  engine: Record<string, number>;
  codes: Record<string, number>;
  violationCount: number;
  violations: Record<string, number>;
  liveBefore: { layers: number; bytes: number; tensors: number; tensorBytes: number };
  liveAfter: { layers: number; bytes: number; tensors: number; tensorBytes: number };
  async: { resolved: number; rejected: number; rejectedWithoutCode: number };
  threadsUnchanged: boolean;
}

// The CUDA runs need a usable CUDA backend (a GPU, or the host emulation's run:
// scripts/test-cuda-emulation.js); they skip with the reason otherwise.
const cuda = nativeInfo().backends.find((b) => b.name === 'cuda');
const cudaSkip = cuda?.available ? false : `no usable CUDA backend: ${cuda?.reason ?? 'not listed'}`;

for (const [backend, calls, seed] of [
  ['cpu', 3000, 20240601],
  ['cpu', 3000, 7],
  ['cuda', 3000, 20240601],
] as const) {
  t.test(`${calls} malformed native calls on ${backend}, seed ${seed}`, { skip: backend === 'cuda' ? cudaSkip : false }, async (t) => {
    const run = spawnSync(process.execPath, [script, String(calls), String(seed)], {
      cwd: path.join(__dirname, '..'),
      env: { ...process.env, NYSACT_FUZZ_BACKEND: backend },
      encoding: 'utf8',
      timeout: 240_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    t.equal(run.error, undefined, 'child process ran');
    t.equal(run.signal, null, `no signal (a native crash shows up here)\n${run.stderr.slice(-4000)}`);
    t.equal(run.status, 0, `exit code 0\n${run.stderr.slice(-4000)}`);
    const line = run.stdout.trim().split('\n').pop() ?? '';
    let stats: FuzzStats;
    try {
      stats = JSON.parse(line) as FuzzStats;
    } catch {
      t.fail(`child printed no summary: ${run.stdout.slice(-2000)}`);
      return;
    }
    t.comment(
      `native fuzz: ${stats.calls} calls, ${stats.returned} returned, ${stats.threw} threw ` +
        `(codes ${JSON.stringify(stats.codes)}, engine ${JSON.stringify(stats.engine)}, hostile getters ${stats.sentinel})`,
    );
    t.ok(stats.calls >= 2000, `at least 2000 calls (${stats.calls})`);
    t.ok(stats.threw > stats.calls / 3, 'most calls were rejected');
    t.equal(stats.violationCount, 0, `every throw was an Error with a string code: ${JSON.stringify(stats.violations, null, 2)}`);
    const { layers, bytes, tensors, tensorBytes } = stats.liveAfter;
    t.same({ layers, bytes, tensors, tensorBytes }, { layers: 0, bytes: 0, tensors: 0, tensorBytes: 0 }, 'all native layers and tensors freed');
    t.comment(`asynchronous steps: ${JSON.stringify(stats.async)}`);
    t.ok(stats.async.resolved > 0 && stats.async.rejected > 0, 'asynchronous steps both resolved and rejected');
    t.equal(stats.async.rejectedWithoutCode, 0, 'every rejection carried a string code');
    t.ok(stats.threadsUnchanged, 'thread count unchanged by rejected setThreads calls');
  });
}
