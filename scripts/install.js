#!/usr/bin/env node
// npm "install" script.  Uses the prebuilt binary when one matches this machine and loads; builds
// from source only when none does (or with `npm install --build-from-source`).
//
//   installed package, a prebuild/build loads      -> nothing to do
//   source checkout (.git present), nothing built  -> skip: `npm run build` / `npm test` build it
//   installed package, nothing loads               -> cmake-js build, or a clear message and exit 1
//
// The load is tried in a child process, so that a binary which cannot run here (older glibc, no
// AVX2) is reported instead of crashing the install.  cmake-js is not a dependency: the prebuild
// serves linux-x64/glibc, and the rare source build takes cmake-js from the project when it is
// installed there, else runs it through npx (one download, cached).
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const log = (message) => console.log(`nysact: ${message}`);
const rel = (file) => path.relative(root, file) || '.';
const APT = 'sudo apt-get install -y cmake g++ make libeigen3-dev librandom123-dev';
// x86-64-v3, the default target of the CPU backend (CMakeLists.txt NYSACT_X86_64_V3).
const X86_64_V3 = ['avx', 'avx2', 'bmi1', 'bmi2', 'f16c', 'fma', 'abm', 'movbe', 'xsave'];

function cpuRunsV3() {
  if (process.arch !== 'x64') return true;
  try {
    const line = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => /^flags\s*:/.test(l));
    if (!line) return true;
    const flags = new Set(line.slice(line.indexOf(':') + 1).trim().split(/\s+/));
    return X86_64_V3.every((f) => flags.has(f));
  } catch {
    return true; // unknown: let the load test decide
  }
}

// The binary node-gyp-build picks (build/Release first, then prebuilds/), and whether it loads.
function probe() {
  let file;
  try {
    file = require('node-gyp-build').resolve(root);
  } catch (error) {
    return { ok: false, file: null, reason: String(error.message).split('\n')[0] };
  }
  const isPrebuild = rel(file).split(path.sep)[0] === 'prebuilds';
  if (isPrebuild && !cpuRunsV3()) {
    return { ok: false, file, reason: 'the prebuilt binary needs an x86-64-v3 CPU (AVX2, FMA) and this CPU is older' };
  }
  const check =
    `const b = require(${JSON.stringify(file)});` +
    "if (typeof b.interfaceVersion !== 'number') throw new Error('not a nysact addon');";
  const r = spawnSync(process.execPath, ['-e', check], { encoding: 'utf8' });
  if (r.status !== 0) {
    const why = (r.stderr || `exit ${r.status ?? r.signal}`).trim().split('\n').find((l) => /Error|error/.test(l));
    return { ok: false, file, reason: `${rel(file)} does not load here: ${why ?? 'unknown error'}` };
  }
  return { ok: true, file, reason: '' };
}

function onPath(command) {
  const dirs = (process.env.PATH || '').split(path.delimiter).filter(Boolean);
  return dirs.some((dir) => {
    try {
      fs.accessSync(path.join(dir, command), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

function hasHeader(relative) {
  const dirs = [
    ...(process.env.CPLUS_INCLUDE_PATH || '').split(path.delimiter),
    ...(process.env.CPATH || '').split(path.delimiter),
    '/usr/local/include',
    '/usr/include',
  ].filter(Boolean);
  return dirs.some((d) => fs.existsSync(path.join(d, relative)) || fs.existsSync(path.join(d, 'eigen3', relative)));
}

function missingPrerequisites() {
  const missing = [];
  if (!onPath('cmake')) missing.push('cmake (>= 3.18)');
  const cxx = process.env.CXX;
  if (cxx ? !(path.isAbsolute(cxx) ? fs.existsSync(cxx) : onPath(cxx)) : !['c++', 'g++', 'clang++'].some(onPath)) {
    missing.push(cxx ? `the C++ compiler $CXX=${cxx}` : 'a C++17 compiler (c++, g++ or clang++)');
  }
  if (!onPath('make') && !onPath('ninja')) missing.push('make or ninja');
  if (!hasHeader('Eigen/Dense')) missing.push('Eigen 3.4 headers (libeigen3-dev)');
  if (!hasHeader('Random123/philox.h')) missing.push('Random123 headers (librandom123-dev)');
  return missing;
}

function buildFromSource(why) {
  log(`building the native addon from source (${why})`);
  const missing = missingPrerequisites();
  if (missing.length > 0) {
    console.error(
      [
        `nysact: cannot build the native addon from source: missing ${missing.join(', ')}.`,
        `  Why a build was needed: ${why}.`,
        '  Prebuilt binaries cover linux-x64 with glibc >= 2.36 on x86-64-v3 (AVX2/FMA) CPUs.',
        `  To build here, install the prerequisites (Debian/Ubuntu: ${APT})`,
        '  and run `npm rebuild nysact`.',
      ].join('\n'),
    );
    process.exit(1);
  }
  const args = ['compile', '--out', 'build'];
  if (process.arch === 'x64' && !cpuRunsV3()) args.push('--CDNYSACT_X86_64_V3=OFF');
  let command;
  let commandArgs;
  let local = null;
  try {
    local = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  } catch {
    // not installed alongside: use npx
  }
  if (local) {
    command = process.execPath;
    commandArgs = [local, ...args];
  } else {
    command = 'npx';
    commandArgs = ['--yes', 'cmake-js@8', ...args];
  }
  log(`running ${local ? 'cmake-js' : 'npx --yes cmake-js@8'} ${args.join(' ')}`);
  const r = spawnSync(command, commandArgs, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(
      `nysact: the source build failed (${r.error ? r.error.message : `exit ${r.status ?? r.signal}`}); ` +
        `see the output above. Prerequisites: ${APT}; then \`npm rebuild nysact\`.`,
    );
    process.exit(1);
  }
  const after = probe();
  if (!after.ok) {
    console.error(`nysact: the source build finished but the addon does not load: ${after.reason}`);
    process.exit(1);
  }
  log(`built ${rel(after.file)}`);
}

function main() {
  const fromSource = process.env.npm_config_build_from_source;
  if (fromSource === 'true' || fromSource === 'nysact') {
    buildFromSource('--build-from-source was requested');
    return;
  }
  const found = probe();
  if (found.ok) {
    log(`using ${rel(found.file)}`);
    return;
  }
  if (fs.existsSync(path.join(root, '.git'))) {
    log('source checkout without a usable native build: `npm run build` builds it (`npm test` does too)');
    return;
  }
  buildFromSource(found.reason);
}

main();
