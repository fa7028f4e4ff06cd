#!/usr/bin/env bash
# Makes `require('@tensorflow/tfjs-node')` work in this repo's node_modules WITHOUT the network
# access its install script wants (it downloads libtensorflow and a prebuilt addon from
# storage.googleapis.com). Run it after `npm ci`:
#
#   bash scripts/setup-tfjs-node.sh [--force]
#
# What it does:
#   1. checks @tensorflow/tfjs-node is in node_modules (package.json lists it as a devDependency
#      with `"allowScripts": {"@tensorflow/tfjs-node": false}`, so npm >= 11.16 installs it without
#      running the download script (older npm runs it and `npm ci` fails offline: use
#      `npm ci --ignore-scripts` there); if it is missing it is installed here with --ignore-scripts
#      at the version of the installed @tensorflow/tfjs) and that there is ONE @tensorflow/tfjs-core;
#   2. returns at once if the TensorFlow backend already loads (unless --force);
#   3. fetches PyPI's tensorflow-cpu wheel with pip (cached in $NYSACT_CACHE_DIR, default
#      ~/.cache/nysact) and extracts only the TensorFlow C API: libtensorflow_cc.so.2 (which exports
#      the TF_* / TFE_* symbols), libtensorflow_framework.so.2 and the C headers;
#   4. stages them where tfjs-node's binding.gyp looks (node_modules/@tensorflow/tfjs-node/deps/
#      {lib,include}; the addon's rpath is $ORIGIN/../../deps/lib, so no LD_LIBRARY_PATH is needed)
#      and builds the addon with npm's bundled node-gyp against the local Node headers (offline);
#   5. checks that the backend loads and runs an op.
#
# Environment: NYSACT_TF_VERSION (tensorflow-cpu version, default 2.12.1: the oldest on PyPI with a
# cp311 wheel, nearest to the 2.9.1 tfjs-node 4.22 was released with; 2.18.1 also works),
# NYSACT_CACHE_DIR, NODE_GYP (path of node-gyp.js), NODE_GYP_NODEDIR (Node headers prefix,
# containing include/node/common.gypi).
# At run time TensorFlow reads TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS (thread pools) and
# TF_CPP_MIN_LOG_LEVEL (1 hides its startup INFO lines).
set -euo pipefail

TF_VERSION=${NYSACT_TF_VERSION:-2.12.1}
CACHE_DIR=${NYSACT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nysact}
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup-tfjs-node: unknown argument '$arg' (use --force or --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n[setup-tfjs-node] %s\n' "$*"; }
info() { printf '[setup-tfjs-node]   %s\n' "$*"; }
die() { printf '\n[setup-tfjs-node] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'die "command failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
START=$SECONDS

# ---------------------------------------------------------------------------------------------------
step "checking prerequisites"
for tool in node npm python3 make g++; do
  command -v "$tool" >/dev/null || die "'$tool' is not on PATH (needed to build the tfjs-node addon)"
done
[[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] ||
  die "only linux x86_64 is supported (PyPI's tensorflow-cpu wheels); this is $(uname -sm)"
[[ -d node_modules ]] || die "no node_modules in $ROOT: run 'npm ci' first"
[[ -f node_modules/@tensorflow/tfjs/package.json ]] ||
  die "@tensorflow/tfjs is not installed: run 'npm ci' first (it is a devDependency)"
TFJS_VERSION=$(node -p "require('@tensorflow/tfjs/package.json').version")
info "node $(node -v), npm $(npm -v), @tensorflow/tfjs $TFJS_VERSION, tensorflow-cpu $TF_VERSION"

# ---------------------------------------------------------------------------------------------------
step "checking @tensorflow/tfjs-node"
TFJS_NODE=$ROOT/node_modules/@tensorflow/tfjs-node
if [[ ! -f $TFJS_NODE/package.json ]]; then
  info "not installed; installing @tensorflow/tfjs-node@$TFJS_VERSION without its download script"
  npm install --no-save --ignore-scripts --no-audit --no-fund "@tensorflow/tfjs-node@$TFJS_VERSION" ||
    die "npm install @tensorflow/tfjs-node@$TFJS_VERSION failed"
fi
# One copy of tfjs-core: tfjs-node registers its kernels on the tfjs-core it resolves, which must be
# the one the tests and nysact's tfjs adapter resolve from the repo root.
node - <<'EOF' || die "@tensorflow/tfjs versions disagree (see above); align @tensorflow/tfjs with @tensorflow/tfjs-node's dependency and run 'npm ci'"
const fs = require('fs');
const path = require('path');
const root = process.cwd();
const nodePkgDir = path.join(root, 'node_modules/@tensorflow/tfjs-node');
const nodePkg = require(path.join(nodePkgDir, 'package.json'));
const want = nodePkg.dependencies['@tensorflow/tfjs'];
const tfjsDir = path.dirname(require.resolve('@tensorflow/tfjs/package.json', { paths: [nodePkgDir] }));
const rootTfjsDir = path.dirname(require.resolve('@tensorflow/tfjs/package.json', { paths: [root] }));
const tfjsVersion = require(path.join(tfjsDir, 'package.json')).version;
let ok = true;
if (tfjsVersion !== want) {
  console.error(`tfjs-node ${nodePkg.version} wants @tensorflow/tfjs ${want}, resolves ${tfjsVersion}`);
  ok = false;
}
const core = (from) => fs.realpathSync(require.resolve('@tensorflow/tfjs-core/package.json', { paths: [from] }));
const cores = new Set([root, nodePkgDir, tfjsDir, rootTfjsDir].map(core));
if (cores.size !== 1) {
  console.error(`more than one @tensorflow/tfjs-core: ${[...cores].join(', ')}`);
  ok = false;
}
console.log(`[setup-tfjs-node]   @tensorflow/tfjs-node ${nodePkg.version}, @tensorflow/tfjs ${tfjsVersion}, ` +
  `one @tensorflow/tfjs-core ${require([...cores][0]).version}`);
process.exit(ok ? 0 : 1);
EOF

check_backend() {
  TF_CPP_MIN_LOG_LEVEL=2 WANT_TF="$TF_VERSION" node -e "
    const tf = require('@tensorflow/tfjs-node');
    if (tf.getBackend() !== 'tensorflow') throw new Error('backend is ' + tf.getBackend());
    const have = tf.engine().backend.binding.TF_Version;
    if (have !== process.env.WANT_TF) throw new Error('TensorFlow ' + have + ', want ' + process.env.WANT_TF);
    const v = tf.tensor1d([1, 2, 3]).square().sum().dataSync()[0];
    if (v !== 14) throw new Error('1+4+9 = ' + v);
    console.log('[setup-tfjs-node]   backend ' + tf.getBackend() + ', TensorFlow ' +
      tf.engine().backend.binding.TF_Version + ', tfjs-node ' + tf.version['tfjs-node']);
  "
}

if [[ $FORCE == 0 ]] && check_backend 2>/dev/null; then
  step "already working, nothing to do ($((SECONDS - START)) s)"
  exit 0
fi

# ---------------------------------------------------------------------------------------------------
step "fetching the tensorflow-cpu $TF_VERSION wheel (cache: $CACHE_DIR)"
WHEEL_DIR=$CACHE_DIR/wheels
LIBTF=$CACHE_DIR/libtensorflow-$TF_VERSION
mkdir -p "$WHEEL_DIR"
find_wheel() { compgen -G "$WHEEL_DIR/tensorflow_cpu-$TF_VERSION-*manylinux*x86_64.whl" | head -n 1 || true; }
WHEEL=$(find_wheel)
if [[ -f $LIBTF/.complete ]]; then
  info "already extracted in $LIBTF"
elif [[ -n $WHEEL ]]; then
  info "cached: $WHEEL"
else
  # The libraries do not link libpython, so any cp3xx wheel works; pin 3.11 so that the download
  # does not depend on the local python.
  python3 -m pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 --implementation cp --progress-bar off --dest "$WHEEL_DIR" \
    "tensorflow-cpu==$TF_VERSION" ||
    die "pip could not download tensorflow-cpu==$TF_VERSION (needs PyPI; set NYSACT_TF_VERSION to another version?)"
  WHEEL=$(find_wheel)
  [[ -n $WHEEL ]] || die "pip finished but no tensorflow_cpu-$TF_VERSION-*.whl is in $WHEEL_DIR"
  info "downloaded $(basename "$WHEEL") ($(du -m "$WHEEL" | cut -f1) MB)"
fi

if [[ ! -f $LIBTF/.complete ]]; then
  step "extracting the TensorFlow C API from the wheel"
  TMP=$(mktemp -d "$CACHE_DIR/.extract.XXXXXX")
  chmod 755 "$TMP"
  trap 'rm -rf "$TMP"' EXIT
  python3 - "$WHEEL" "$TMP" <<'EOF' || die "could not extract the C API from the wheel"
import os, re, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
libs = ('tensorflow/libtensorflow_cc.so.2', 'tensorflow/libtensorflow_framework.so.2')
inc = 'tensorflow/include/'
# The C API headers tfjs-node's binding includes, plus everything they include (closure over
# #include "..."): e.g. tf_status.h -> tsl/c/tsl_status.h (tensorflow/tsl/ in 2.12, xla/tsl/ in
# later versions), tf_tstring.h -> core/platform/ctstring*.h -> tsl/platform/ctstring*.h.
seeds = ['tensorflow/c/c_api.h', 'tensorflow/c/eager/c_api.h', 'tensorflow/c/tf_datatype.h',
         'tensorflow/c/tf_status.h', 'tensorflow/c/tf_tensor.h',
         'tensorflow/core/platform/ctstring_internal.h']
with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    missing = [l for l in libs + tuple(inc + h for h in seeds) if l not in names]
    if missing:
        sys.exit(f'wheel lacks {missing}')
    def extract(name, dest):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(name) as src, open(dest, 'wb') as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    for l in libs:
        dest = os.path.join(out, 'lib', os.path.basename(l))
        extract(l, dest)
        os.chmod(dest, 0o755)
    done, todo, unresolved = set(), list(seeds), set()
    while todo:
        h = todo.pop()
        if h in done:
            continue
        done.add(h)
        extract(inc + h, os.path.join(out, 'include', h))
        for m in re.finditer(r'^\s*#\s*include\s+"([^"]+)"', z.read(inc + h).decode('utf-8', 'replace'), re.M):
            dep = m.group(1)
            if inc + dep in names:
                todo.append(dep)
            else:
                unresolved.add(dep)
    print(f'[setup-tfjs-node]   2 libraries, {len(done)} headers')
    if unresolved:
        print(f'[setup-tfjs-node]   (includes not in the wheel: {sorted(unresolved)})')
EOF
  # Which library exports the C API? (libtensorflow_cc.so.2 in 2.12; fail clearly if that moves.)
  nm -D --defined-only "$TMP/lib/libtensorflow_cc.so.2" >"$TMP/symbols.txt"
  for sym in TF_Version TF_NewTensor TFE_NewContext TFE_Execute TF_LoadSessionFromSavedModel; do
    grep -qE " T $sym(@|\$)" "$TMP/symbols.txt" ||
      die "libtensorflow_cc.so.2 of tensorflow-cpu $TF_VERSION does not export $sym (C API moved?)"
  done
  rm -f "$TMP/symbols.txt"
  [[ -f $TMP/include/tensorflow/c/c_api.h && -f $TMP/include/tensorflow/c/eager/c_api.h ]] ||
    die "the wheel lacks the C API headers (include/tensorflow/c/c_api.h, eager/c_api.h)"
  touch "$TMP/.complete"
  rm -rf "$LIBTF"
  mv -T "$TMP" "$LIBTF"
  trap - EXIT
  info "extracted to $LIBTF ($(du -sm "$LIBTF" | cut -f1) MB)"
fi

# ---------------------------------------------------------------------------------------------------
step "staging libtensorflow into $TFJS_NODE/deps"
rm -rf "$TFJS_NODE/deps"
mkdir -p "$TFJS_NODE/deps/lib"
cp -R "$LIBTF/include" "$TFJS_NODE/deps/include"
for lib in libtensorflow_cc.so.2 libtensorflow_framework.so.2; do
  # A hard link when the cache is on the same file system (no 580 MB copy), else a copy.
  ln -f "$LIBTF/lib/$lib" "$TFJS_NODE/deps/lib/$lib" 2>/dev/null || cp "$LIBTF/lib/$lib" "$TFJS_NODE/deps/lib/$lib"
done
# binding.gyp links -ltensorflow -ltensorflow_framework; the addon then records the sonames
# libtensorflow_cc.so.2 and libtensorflow_framework.so.2, found through its rpath
# $ORIGIN/../../deps/lib (libtensorflow_cc.so.2 finds the framework through its own $ORIGIN).
ln -sf libtensorflow_cc.so.2 "$TFJS_NODE/deps/lib/libtensorflow.so"
ln -sf libtensorflow_framework.so.2 "$TFJS_NODE/deps/lib/libtensorflow_framework.so"

# ---------------------------------------------------------------------------------------------------
step "building the tfjs-node addon (node-gyp, offline)"
if [[ -z ${NODE_GYP:-} ]]; then
  npm_cli=$(readlink -f "$(command -v npm)")
  for cand in "$(dirname "$npm_cli")/../node_modules/node-gyp/bin/node-gyp.js" \
    "$(npm root -g 2>/dev/null)/npm/node_modules/node-gyp/bin/node-gyp.js"; do
    if [[ -f $cand ]]; then NODE_GYP=$(readlink -f "$cand"); break; fi
  done
fi
[[ -n ${NODE_GYP:-} && -f $NODE_GYP ]] || die "npm's bundled node-gyp not found; set NODE_GYP=/path/to/node-gyp/bin/node-gyp.js"

# Node headers: node-gyp downloads them unless --nodedir points at a local copy.
NODE_VER=$(node -p process.versions.node)
nodedir_args=()
if [[ -z ${NODE_GYP_NODEDIR:-} ]]; then
  prefix=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
  [[ -f $prefix/include/node/common.gypi && -f $prefix/include/node/node_api.h ]] && NODE_GYP_NODEDIR=$prefix
fi
if [[ -n ${NODE_GYP_NODEDIR:-} ]]; then
  [[ -f $NODE_GYP_NODEDIR/include/node/common.gypi ]] || die "NODE_GYP_NODEDIR=$NODE_GYP_NODEDIR has no include/node/common.gypi"
  nodedir_args=(--nodedir="$NODE_GYP_NODEDIR")
  info "node-gyp $(node "$NODE_GYP" --version 2>/dev/null | tr -d v), Node headers from $NODE_GYP_NODEDIR/include/node"
elif [[ -f ${npm_config_devdir:-${XDG_CACHE_HOME:-$HOME/.cache}/node-gyp}/$NODE_VER/include/node/common.gypi ]]; then
  info "node-gyp $(node "$NODE_GYP" --version 2>/dev/null | tr -d v), Node headers from node-gyp's cache"
else
  die "no local Node $NODE_VER headers (looked for <node prefix>/include/node/common.gypi and node-gyp's cache); install them (e.g. the nodejs package with headers) or set NODE_GYP_NODEDIR"
fi

# The addon path that tfjs-node's loader (@mapbox/node-pre-gyp's find) expects, e.g. lib/napi-v8.
ADDON=$(cd "$TFJS_NODE" && node -p "require('@mapbox/node-pre-gyp').find(require('path').resolve('package.json'))") ||
  die "could not compute the addon path with @mapbox/node-pre-gyp"
NAPI_VERSION=$(basename "$(dirname "$ADDON")" | sed -n 's/^napi-v\([0-9][0-9]*\)$/\1/p')
[[ -n $NAPI_VERSION ]] || die "unexpected addon path $ADDON (expected .../lib/napi-vN/tfjs_binding.node)"

BUILD_LOG=$TFJS_NODE/build-from-source.log
rm -rf "$TFJS_NODE/build" "$(dirname "$ADDON")"
if ! (cd "$TFJS_NODE" && nice node "$NODE_GYP" rebuild "${nodedir_args[@]}" --jobs=2 \
  --module_name=tfjs_binding --module_path="$(dirname "$ADDON")" --napi_build_version="$NAPI_VERSION") \
  >"$BUILD_LOG" 2>&1; then
  tail -n 40 "$BUILD_LOG" >&2
  die "node-gyp failed building tfjs_binding.node (full log: $BUILD_LOG)"
fi
[[ -f $ADDON ]] || die "node-gyp succeeded but $ADDON is missing (full log: $BUILD_LOG)"
info "built ${ADDON#"$ROOT"/} (N-API $NAPI_VERSION)"
if ldd "$ADDON" | grep -q 'not found'; then
  ldd "$ADDON" >&2
  die "the addon has unresolved libraries (see ldd above)"
fi

# ---------------------------------------------------------------------------------------------------
step "checking the TensorFlow backend"
check_backend || die "require('@tensorflow/tfjs-node') still fails (see the error above)"
step "done in $((SECONDS - START)) s"
