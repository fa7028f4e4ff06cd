#!/usr/bin/env node
// The CUDA backend's tests on the host emulation (cuda/emu/emu.h): runs the test files that exercise
// a 'cuda' backend with NYSACT_CUDA_LIBRARY pointing at build/Release/nysact_cuda_emu.so, so the
// CUDA backend's own code (C ABI, context, layers, batched factors, every kernel's indexing) runs
// here and is compared with the CPU backend.  This is not a GPU: nothing it prints is a GPU result.
// Then the C++ driver's CPU-vs-CUDA parity (every case) and its benchmark code on tiny shapes
// (--smoke), when the driver was built.
//
// Skips, saying why, when the emulation library was not built (CMake NYSACT_CUDA_EMULATION=ON,
// which needs the CUDA headers: scripts/setup.sh sets it where nvcc is present).
'use strict';
const { spawnSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const { join } = require('node:path');

const root = join(__dirname, '..');
const release = join(root, 'build', 'Release');
const library = join(release, 'nysact_cuda_emu.so');
if (!existsSync(library)) {
  console.log(`# cuda emulation tests skipped: ${library} was not built (configure with NYSACT_CUDA_EMULATION=ON)`);
  process.exit(0);
}

const env = { ...process.env, NYSACT_CUDA_LIBRARY: library };
let status = 0;

// The emulated cuBLAS / cuSOLVER routines against naive loops, first: the rest relies on them.
const blasTest = join(release, 'nysact_emu_blas_test');
if (existsSync(blasTest)) {
  const b = spawnSync(blasTest, [], { cwd: root, encoding: 'utf8' });
  const last = (b.stdout || '').trim().split('\n').pop();
  if (b.status === 0) {
    console.log(`# cuda emulation: emulated cuBLAS/cuSOLVER vs naive loops: ${last}`);
  } else {
    console.log(`# cuda emulation: emulated cuBLAS/cuSOLVER test FAILED (exit ${b.status})`);
    process.stdout.write(b.stdout || '');
    process.stdout.write(b.stderr || '');
    status = 1;
  }
} else {
  console.log(`# cuda emulation: ${blasTest} was not built; its check skipped`);
}

const files = ['test/cuda.test.ts', 'test/parity.test.ts', 'test/api.test.ts', 'test/errors.test.ts', 'test/fuzz.test.ts'];
console.log(`# cuda emulation: ${files.join(' ')} with NYSACT_CUDA_LIBRARY=${library}`);
const tap = spawnSync(join(root, 'node_modules', '.bin', 'tap'), files, { cwd: root, env, stdio: 'inherit' });
status = status || (tap.status ?? 1);

const driver = join(release, 'nysact_driver');
if (existsSync(driver)) {
  // Every parity case, no benchmarks (they would time the host, not a GPU); then again with an 8 KiB
  // statistics tile budget, so that every sketch runs its tile loop over many tiles (the default
  // 64 MiB holds each case's activations in one tile), and a 2 KiB gradient budget per batched
  // update launch, so that the batched update splits its launches by bytes as well as by count.
  const small = { NYSACT_CUDA_TILE_BYTES: '8192', NYSACT_CUDA_STEP_BATCH_BYTES: '2048' };
  for (const [label, extra] of [['', {}], [' (8 KiB tiles, 2 KiB update launches)', small]]) {
    const d = spawnSync(driver, ['--no-bench'], { cwd: root, env: { ...env, ...extra }, encoding: 'utf8', maxBuffer: 64 << 20 });
    let report = null;
    try {
      report = JSON.parse(d.stdout);
    } catch {
      // reported below with the raw output
    }
    if (d.status === 0 && report && report.ok === true) {
      const runs = report.batchParity.runs;
      console.log(
        `# cuda emulation: driver parity${label} ok: ${report.parity.passed} cases cpu-vs-cuda, ` +
          `Philox bit-identical (${report.philox.draws} draws), batched factors ${runs.filter((r) => r.ok).length}/${runs.length} runs`,
      );
    } else {
      console.log(`# cuda emulation: driver parity${label} FAILED (exit ${d.status})`);
      process.stdout.write(d.stdout || '');
      process.stdout.write(d.stderr || '');
      status = status || d.status || 1;
    }
  }
  // The benchmark code on tiny shapes: that it runs without a fault or an error (its times are host
  // times of an emulation and are not looked at).
  const b = spawnSync(driver, ['--smoke', '--no-parity'], { cwd: root, env, encoding: 'utf8', maxBuffer: 64 << 20 });
  let bench = null;
  try {
    bench = JSON.parse(b.stdout).bench;
  } catch {
    // reported below
  }
  const parts = ['ceilings', 'fusedUpdate', 'fusedUpdateRank10', 'sketch', 'inverse', 'wholeStep', 'wholeStepRank10'];
  if (b.status === 0 && bench && parts.every((k) => bench[k])) {
    console.log(`# cuda emulation: driver benchmark code ran (--smoke): ${parts.join(', ')}`);
  } else {
    console.log(`# cuda emulation: driver benchmark code FAILED (--smoke, exit ${b.status})`);
    process.stdout.write(b.stdout || '');
    process.stdout.write(b.stderr || '');
    status = status || b.status || 1;
  }
} else {
  console.log(`# cuda emulation: driver parity skipped: ${driver} was not built`);
}
process.exit(status);
