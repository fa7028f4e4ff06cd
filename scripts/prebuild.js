#!/usr/bin/env node
// npm run prebuildify: turns build/Release into prebuilds/<platform>-<arch>/ following prebuildify's
// conventions, where node-gyp-build (lib/loader.ts, scripts/install.js) finds it:
//   node.napi.glibc.node   the addon (tags: runtime node, Node-API, glibc; node-gyp-build skips a
//                          glibc prebuild on musl and falls back to a source build there)
//   *.so                   sibling shared libraries, copied like prebuildify does (the CUDA
//                          backend nysact_cuda.so when it was built)
//   libgomp.so.1           the OpenMP runtime the addon links (found through RUNPATH $ORIGIN), so
//                          the prebuild loads on machines without a compiler toolchain; GCC runtime
//                          library exception
// The binaries are stripped when `strip` is available.  The prebuild is not committed to git: it is
// generated from the sources by this script (npm pack runs it through `prepack`).
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const release = path.join(root, 'build', 'Release');
const addon = path.join(release, 'nysact.node');
const target = `${process.platform}-${process.arch}`;
const outDir = path.join(root, 'prebuilds', target);
const ADDON_NAME = 'node.napi.glibc.node';

function fail(message) {
  console.error(`prebuild: ${message}`);
  process.exit(1);
}

function run(command, args) {
  return spawnSync(command, args, { encoding: 'utf8' });
}

if (process.platform !== 'linux') fail(`only linux prebuilds are produced (this is ${target})`);
if (!fs.existsSync(addon)) fail(`${path.relative(root, addon)} is missing: run npm run build:native first`);

// Resolve libgomp.so.1 as the dynamic linker does for this addon.
const ldd = run('ldd', [addon]);
if (ldd.status !== 0) fail(`ldd ${addon} failed: ${ldd.stderr || ldd.error}`);
const gompLine = ldd.stdout.split('\n').find((l) => l.trim().startsWith('libgomp.so.1'));
const gompPath = gompLine && /=>\s*(\S+)/.exec(gompLine)?.[1];
if (gompLine && (!gompPath || gompPath === 'not')) fail('libgomp.so.1 does not resolve on this machine (ldd)');

fs.rmSync(outDir, { recursive: true, force: true });
fs.mkdirSync(outDir, { recursive: true });

const copies = [[addon, ADDON_NAME]];
for (const name of fs.readdirSync(release)) {
  // Not the CUDA host emulation (nysact_cuda_emu.so): it is for tests only (cuda/emu/emu.h).
  if (/\.so(\.\d+)*$/.test(name) && !/_emu\.so$/.test(name)) copies.push([path.join(release, name), name]);
}
if (gompPath) copies.push([fs.realpathSync(gompPath), 'libgomp.so.1']);

const hasStrip = run('strip', ['--version']).status === 0;
for (const [from, name] of copies) {
  const to = path.join(outDir, name);
  fs.copyFileSync(from, to);
  fs.chmodSync(to, 0o755);
  if (hasStrip) {
    const r = run('strip', ['--strip-unneeded', to]);
    if (r.status !== 0) fail(`strip ${to} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim()}`);
  }
}

// Report what the prebuild needs from the system: the newest glibc symbol version it uses.
let glibc = 'unknown';
const objdump = run('objdump', ['-T', path.join(outDir, ADDON_NAME)]);
if (objdump.status === 0) {
  const versions = [...objdump.stdout.matchAll(/GLIBC_(\d+)\.(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
  versions.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (versions.length > 0) glibc = versions[versions.length - 1].join('.');
}

for (const name of fs.readdirSync(outDir).sort()) {
  const size = fs.statSync(path.join(outDir, name)).size;
  console.log(`prebuild: ${path.relative(root, path.join(outDir, name))} (${(size / 2 ** 20).toFixed(2)} MiB)`);
}
console.log(`prebuild: needs glibc >= ${glibc} and an x86-64-v3 CPU (AVX2/FMA); ${hasStrip ? 'stripped' : 'not stripped (no strip)'}`);
