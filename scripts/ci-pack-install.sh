#!/usr/bin/env bash
# CI: prove that the packed tarball installs and works from its prebuilt binary on a machine where
# no compiler and no CMake can be found.
#   1. npm pack (prepack builds dist/ and prebuilds/linux-x64/)
#   2. install the tarball into an empty project with a PATH holding only node, npm, npx, a shell
#      and coreutils (symlinks in a temp dir): cc/c++/g++/gcc/clang/cmake/make/ninja are not found
#   3. require() and import() it and run training steps (statistics, inverse and ordinary)
#   4. npx nysact info and a short npx nysact bench
#   5. nysact/tfjs (require and import) and a short npx nysact train on the embedded data subset
#   5. --build-from-source with the same PATH fails fast with the message naming what is missing
# Set CI_FROM_SOURCE=1 to also install with --build-from-source on the normal PATH (needs cmake,
# g++, Eigen, Random123 and npx access to cmake-js).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/nysact-pack.XXXXXX")
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'ci-pack-install: FAIL: %s\n' "$*" >&2; exit 1; }

step "npm pack"
npm pack --pack-destination "$work" >"$work/pack.log" 2>&1 || { cat "$work/pack.log"; fail "npm pack"; }
tarball=$(ls "$work"/nysact-*.tgz)
tar -tzf "$tarball" >"$work/contents.txt"
grep -qx 'package/prebuilds/linux-x64/node.napi.glibc.node' "$work/contents.txt" || fail "no prebuild in $tarball"
grep -qx 'package/prebuilds/linux-x64/libgomp.so.1' "$work/contents.txt" || fail "no libgomp.so.1 beside the prebuild"
if [ -e build/Release/nysact_cuda.so ]; then
  grep -qx 'package/prebuilds/linux-x64/nysact_cuda.so' "$work/contents.txt" || fail "nysact_cuda.so was built but is not in the prebuild"
fi
echo "$(basename "$tarball"): $(wc -l <"$work/contents.txt") files, prebuilds: $(grep prebuilds/ "$work/contents.txt" | sed 's|package/||' | tr '\n' ' ')"

step "a PATH without compilers or CMake"
bin="$work/bin"
mkdir -p "$bin"
for tool in node npm npx sh bash env cat cp mv rm ln ls mkdir rmdir chmod dirname basename uname \
            readlink realpath grep sed tr head tail sort wc tar gzip mktemp touch date sleep tee printf; do
  src=$(command -v "$tool" || true)
  [ -n "$src" ] && [ "$src" != "$tool" ] && ln -s "$src" "$bin/$tool"
done
for tool in cc c++ gcc g++ clang clang++ cmake make ninja; do
  if PATH="$bin" command -v "$tool" >/dev/null 2>&1; then fail "$tool is still reachable"; fi
done
echo "PATH=$bin: $(ls "$bin" | tr '\n' ' ')"
hidden() { env -u CC -u CXX PATH="$bin" HOME="$HOME" "$@"; }

step "npm install the tarball into an empty project (prebuilt binary expected)"
app="$work/app"
mkdir -p "$app"
cd "$app"
printf '{ "name": "nysact-ci-app", "version": "1.0.0", "private": true }\n' >package.json
hidden npm install --no-audit --no-fund --prefer-offline --foreground-scripts "$tarball" 2>&1 | tee "$work/install.log"
grep -q 'nysact: using prebuilds/linux-x64/node.napi.glibc.node' "$work/install.log" || fail "install did not use the prebuild"
[ ! -e node_modules/nysact/build ] || fail "install built from source"
gomp=$(ldd node_modules/nysact/prebuilds/linux-x64/node.napi.glibc.node | grep 'libgomp.so.1 =>' | sed 's/.*=> \([^ ]*\).*/\1/')
case "$gomp" in
  "$app"/node_modules/nysact/prebuilds/linux-x64/libgomp.so.1) echo "libgomp.so.1 resolves to the prebuild's copy" ;;
  *) fail "libgomp.so.1 resolves to '$gomp', not the prebuild's copy" ;;
esac

step "require() and import(), training steps"
cat >train-check.js <<'EOF'
// Five steps of a 6-4 dense layer: statistics at 0, inverse at 0 and 4 (tcov 2, tinv 4).
module.exports = function check(nysact, how) {
  const { NysAct, nativeInfo } = nysact;
  const opt = new NysAct({ lr: 0.05, rank: 3, tcov: 2, tinv: 4 });
  opt.addDense('fc', { inFeatures: 6, outFeatures: 4 });
  let s = 7;
  const rand = (n) => Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5);
  const weight = rand(24), bias = new Float32Array(4), before = weight.slice();
  let stats = 0, inverses = 0;
  for (let step = 0; step < 5; step++) {
    if (opt.needsActivations) opt.observe('fc', rand(8 * 6), [8, 6]);
    const r = opt.step({ fc: { weight, grad: rand(24), bias, biasGrad: rand(4) } });
    stats += r.statistics ? 1 : 0; inverses += r.inverse ? 1 : 0;
  }
  if (!weight.every(Number.isFinite) || weight.every((w, i) => w === before[i])) throw new Error('weights did not train');
  if (stats !== 3 || inverses !== 2) throw new Error(`expected 3 statistics and 2 inverse steps, got ${stats} and ${inverses}`);
  const info = nativeInfo();
  opt.dispose();
  console.log(`${how}: 5 steps ok (native ${info.version}, backends ${info.backends.map((b) => `${b.name}:${b.available}`).join(' ')})`);
};
EOF
hidden node -e "require('./train-check.js')(require('nysact'), 'require')"
hidden node --input-type=module -e "import * as nysact from 'nysact'; import { createRequire } from 'node:module'; createRequire(import.meta.url)('./train-check.js')(nysact, 'import')"

step "npx nysact info"
hidden npx --no-install nysact info
hidden npx --no-install nysact info --json >"$work/info.json"
hidden node -e "
const r = require('$work/info.json');
if (!r.native.loaded || r.native.origin !== 'prebuild') throw new Error('info: native ' + JSON.stringify(r.native));
if (!r.backends.some((b) => b.name === 'cpu' && b.available)) throw new Error('info: no cpu backend');
console.log('info --json: prebuild loaded from ' + r.native.path);"

step "npx nysact bench (short)"
hidden npx --no-install nysact bench --quick --preset mlp --repeats 2
hidden npx --no-install nysact bench --quick --quiet --json --dense 64x32 --conv 8x8:k=3,hw=8 --batch 4 --repeats 2 >"$work/bench.json"
hidden node -e "
const r = require('$work/bench.json');
if (r.errors.length) throw new Error('bench errors: ' + JSON.stringify(r.errors));
if (r.results.length !== 6) throw new Error('bench: expected 6 results, got ' + r.results.length);
console.log('bench --json: ' + r.results.length + ' results, SGEMM peak ' + r.machine.peaks.sgemm.rate.toFixed(1) + ' GFLOP/s');"

step "nysact/tfjs and npx nysact train from the tarball (pure-JS @tensorflow/tfjs, the embedded subset)"
hidden npm install --no-audit --no-fund --prefer-offline @tensorflow/tfjs@4.22.0 >"$work/tfjs.log" 2>&1 || { cat "$work/tfjs.log"; fail "npm install @tensorflow/tfjs"; }
hidden node -e "
const tf = require('@tensorflow/tfjs');
const { NysActOptimizer } = require('nysact/tfjs');
const model = tf.sequential({ layers: [tf.layers.dense({ inputShape: [4], units: 3, activation: 'softmax' })] });
const opt = new NysActOptimizer({ learningRate: 0.1 }).attach(model);
model.compile({ optimizer: opt, loss: 'categoricalCrossentropy' });
model.trainOnBatch(tf.randomNormal([8, 4]), tf.oneHot(tf.tensor1d([0, 1, 2, 0, 1, 2, 0, 1], 'int32'), 3).toFloat())
  .then(() => { if (opt.iterations !== 1) throw new Error('nysact/tfjs: no step'); console.log('nysact/tfjs (require): one step on', tf.getBackend()); });
" 2>&1 | grep -v 'Hi, looks like\|^=*$\|tfjs-node for more' || true
hidden node --input-type=module -e "
import { NysActOptimizer } from 'nysact/tfjs';
if (typeof NysActOptimizer !== 'function') throw new Error('nysact/tfjs (import)');
console.log('nysact/tfjs (import): ok');"
hidden npx --no-install nysact train --tfjs js --epochs 1 --train 512 --data node_modules/nysact/data/fashion-mnist-subset \
  --out "$work/train.svg" --json "$work/train.json" --quiet 2>&1 | grep -v 'Hi, looks like\|^=*$\|tfjs-node for more'
hidden node -e "
const r = require('$work/train.json');
if (r.results.length !== 3 || !r.results.every((x) => x.accuracy > 0.3)) throw new Error('train: ' + JSON.stringify(r.summaries));
console.log('nysact train: ' + r.summaries.map((s) => s.optimizer + ' ' + (100 * s.accuracy.mean).toFixed(1) + '%').join(', '));"
[ -s "$work/train.svg" ] || fail "nysact train wrote no SVG"

step "--build-from-source without a toolchain fails with a clear message"
cd "$work" && rm -rf app2 && mkdir app2 && cd app2
printf '{ "name": "nysact-ci-app2", "version": "1.0.0", "private": true }\n' >package.json
if hidden npm install --no-audit --no-fund --prefer-offline --foreground-scripts --build-from-source "$tarball" >"$work/source.log" 2>&1; then
  fail "--build-from-source succeeded without cmake or a compiler"
fi
grep -q 'cannot build the native addon from source: missing cmake' "$work/source.log" || { cat "$work/source.log"; fail "no clear message"; }
grep 'cannot build the native addon' "$work/source.log"

if [ "${CI_FROM_SOURCE:-0}" = 1 ]; then
  step "--build-from-source with the toolchain"
  cd "$work" && rm -rf app3 && mkdir app3 && cd app3
  printf '{ "name": "nysact-ci-app3", "version": "1.0.0", "private": true }\n' >package.json
  npm install --no-audit --no-fund --prefer-offline --foreground-scripts --build-from-source "$tarball" 2>&1 | tail -n 5
  [ -e node_modules/nysact/build/Release/nysact.node ] || fail "no source build"
  npx --no-install nysact info | grep -q 'build: ' || fail "info does not report the source build"
  node -e "require('$work/app/train-check.js')(require('nysact'), 'source build')"
fi

cd "$repo"
printf '\nci-pack-install: OK\n'
