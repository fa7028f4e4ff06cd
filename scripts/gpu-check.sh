#!/usr/bin/env bash
# GPU check for an offline CUDA machine (no Node, no network): builds nysact_cuda.so and the C++
# driver with CMake directly (no cmake-js), runs the driver's CPU-vs-CUDA parity and benchmarks, and
# prints its JSON.  When a node binary is available (NODE=/path/to/node, or NODE=/path/to/node.xz, or
# .gpu-deps/node.xz) it also builds the addon and runs the JS tests with the CUDA backend.
#
# Inputs it looks for (scripts/gpu-pack.sh prepares them in .gpu-deps/ on a development machine):
#   nvcc                  PATH, CUDACXX, /usr/local/cuda/bin, or the nvidia-cuda-nvcc wheel
#   cmake                 PATH, or python3's `cmake` package
#   cuBLAS / cuSOLVER     python3 -c 'import nvidia' (the wheels), NYSACT_CUDA_ROOT, /usr/local/cuda
#   Eigen, Random123      /usr/include, or .gpu-deps/include
#   node_modules, dist    present, or .gpu-deps/node_modules.tar.xz and .gpu-deps/dist.tar.xz
# Writes $OUT/gpu-check.json, $OUT/driver.json (parity), $OUT/bench.json, $OUT/torch.json (PyTorch
# baselines, bench/torch_reference.py, where python3 has torch), $OUT/report.md (the README's
# figures as Markdown, scripts/gpu-report.py) and logs when OUT is set.  Exits non-zero when a
# build step or a check fails.  Budget: under 5 minutes (build about 1 min on 2 cores here, less on
# 16; parity at most 120 s, benchmarks at most 150 s by their timeouts, usually far less; PyTorch
# baselines at most 100 s; JS tests at most 150 s).
#
# Usage: bash scripts/gpu-check.sh [--quick]     (--quick: small parity set, quick benchmarks)
#
# Rehearsal without a GPU: GPU_CHECK_EMULATION=1 also builds the CUDA host emulation (cuda/emu) and
# points the driver and the JS tests at it (NYSACT_CUDA_LIBRARY), with the benchmarks on tiny shapes
# (--smoke).  The whole script then runs here as it would on a GPU machine; its JSON says
# "emulation": true, and nothing it prints is a GPU figure.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
deps=${NYSACT_DEPS:-$root/.gpu-deps}
out=${OUT:-$root/build-gpu/out}
build=$root/build-gpu
lib_dir=$root/build/Release   # where node-gyp-build finds nysact.node, with nysact_cuda.so beside it
mkdir -p "$out" "$build" "$lib_dir"
quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"
emulation=${GPU_CHECK_EMULATION:-}
start=$(date +%s)
log() { echo "[gpu-check +$(( $(date +%s) - start ))s] $*" >&2; }
json_status=()
record() { json_status+=("\"$1\": $2"); }
finish() {
  local ok=$1
  local body
  body=$(IFS=,; echo "${json_status[*]}")
  echo "{\"gpuCheck\": {${body}, \"seconds\": $(( $(date +%s) - start )), \"ok\": $ok}}" | tee "$out/gpu-check.json"
  [ "$ok" = true ] && exit 0 || exit 1
}

# ---- tools ----------------------------------------------------------------------------------------
py=$(command -v python3 || command -v python || true)
nvcc=${CUDACXX:-}
for c in "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc \
         $( [ -n "$py" ] && "$py" -c 'import nvidia, os; [print(os.path.join(p, c, "bin", "nvcc")) for p in nvidia.__path__ for c in ("cu13", "cuda_nvcc")]' 2>/dev/null ); do
  [ -z "$nvcc" ] && [ -n "$c" ] && [ -x "$c" ] && nvcc=$c
done
cmake=$(command -v cmake || true)
if [ -z "$cmake" ] && [ -n "$py" ]; then
  cmake=$("$py" -c 'import cmake, os; print(os.path.join(cmake.CMAKE_BIN_DIR, "cmake"))' 2>/dev/null || true)
fi
log "nvcc: ${nvcc:-not found}; cmake: ${cmake:-not found}; python3: ${py:-not found}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/[gpu-check] gpu: /' >&2 || true
if [ -z "$nvcc" ] || [ -z "$cmake" ]; then
  record tools "\"missing nvcc or cmake\""
  finish false
fi

# ---- inputs carried in .gpu-deps -----------------------------------------------------------------
extra=()
if [ -n "$emulation" ]; then
  log "GPU_CHECK_EMULATION: the CUDA host emulation stands in for the GPU (a rehearsal: no GPU figures)"
  record emulation true
  extra+=("-DNYSACT_CUDA_EMULATION=ON")
  export NYSACT_CUDA_LIBRARY="$lib_dir/nysact_cuda_emu.so"
fi
if [ ! -f /usr/include/eigen3/Eigen/Dense ] && [ -d "$deps/include/eigen3" ]; then
  extra+=("-DEIGEN3_INCLUDE_DIR=$deps/include/eigen3")
fi
if [ ! -f /usr/include/Random123/philox.h ] && [ -d "$deps/include/Random123" ]; then
  extra+=("-DRANDOM123_INCLUDE_DIR=$deps/include")
fi
node=${NODE:-}
[ -z "$node" ] && [ -f "$deps/node.xz" ] && node=$deps/node.xz
if [ -n "$node" ] && [[ "$node" == *.xz ]]; then
  xz -dc "$node" >/tmp/nysact-node && chmod +x /tmp/nysact-node && node=/tmp/nysact-node
fi
if [ -n "$node" ]; then
  [ -d node_modules ] || { [ -f "$deps/node_modules.tar.xz" ] && tar -xJf "$deps/node_modules.tar.xz"; }
  [ -d dist ] || { [ -f "$deps/dist.tar.xz" ] && tar -xJf "$deps/dist.tar.xz"; }
  if [ -x "$node" ] && [ -d node_modules/node-api-headers ] && [ -d node_modules/node-addon-api ]; then
    # CMake runs `node -p "require('node-addon-api').include_dir"`: put this node first on PATH.
    mkdir -p /tmp/nysact-node-bin && ln -sf "$(readlink -f "$node")" /tmp/nysact-node-bin/node
    export PATH="/tmp/nysact-node-bin:$PATH"
    extra+=("-DNYSACT_NODE_API_HEADERS=$root/node_modules/node-api-headers/include")
    log "node $(node --version): the addon is built too"
  else
    log "node given but node_modules (node-api-headers, node-addon-api) missing: JS tests skipped"
    node=""
  fi
fi

# ---- build ---------------------------------------------------------------------------------------
log "configuring"
if ! "$cmake" -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DNYSACT_CUDA=ON -DNYSACT_WERROR=ON \
     -DNYSACT_BUILD_DRIVER=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$lib_dir" \
     "${extra[@]}" >"$out/configure.log" 2>&1; then
  tail -30 "$out/configure.log" >&2
  record configure false
  finish false
fi
record configure true
log "building ($(nproc) jobs)"
build_start=$(date +%s)
if ! "$cmake" --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1; then
  grep -E "error|Error" "$out/build.log" | head -40 >&2
  record build false
  finish false
fi
record build true
record buildSeconds $(( $(date +%s) - build_start ))
ls -la "$lib_dir" >&2

# ---- the C++ driver ------------------------------------------------------------------------------
# Parity first, then the benchmarks, each with its own time limit, so that a slow benchmark cannot
# cost the parity verdict.
log "driver: parity"
timeout 120 "$lib_dir/nysact_driver" $quick --no-bench >"$out/driver.json" 2>"$out/driver.err"
driver_rc=$?
cat "$out/driver.json"
tail -5 "$out/driver.err" >&2
record driverExit $driver_rc
ok=true
[ $driver_rc -eq 0 ] || ok=false
if ! grep -q '"available": true' "$out/driver.json"; then
  log "the CUDA backend did not come up: see cuda.reason above"
  ok=false
else
  log "driver: benchmarks"
  bench_size=$quick
  [ -n "$emulation" ] && bench_size="--smoke"
  timeout 150 "$lib_dir/nysact_driver" $bench_size --no-parity >"$out/bench.json" 2>>"$out/driver.err"
  bench_rc=$?
  cat "$out/bench.json"
  record benchExit $bench_rc
  [ $bench_rc -eq 0 ] || ok=false
fi

# ---- PyTorch baselines on the same GPU (bench/torch_reference.py) ----------------------------------
# Where python3's torch sees the GPU (the rehearsal: --smoke on the CPU, where torch is installed).
# A baseline, not a check: its failure is recorded, not a failed check.
if [ -n "$py" ] && "$py" -c 'import torch' 2>/dev/null; then
  torch_args=""
  [ -n "$emulation" ] && torch_args="--smoke"
  [ -n "$quick" ] && torch_args="$torch_args --repeats 1"
  log "PyTorch baselines"
  timeout 100 "$py" bench/torch_reference.py $torch_args >"$out/torch.json" 2>"$out/torch.err"
  torch_rc=$?
  tail -3 "$out/torch.err" >&2
  record torchExit $torch_rc
else
  record torchExit "\"skipped: python3 has no torch\""
fi

# ---- JS tests with the CUDA backend --------------------------------------------------------------
if [ -n "$node" ]; then
  backends=$(node -e "console.log(JSON.stringify(require('./dist/cjs/index.js').nativeInfo().backends))" 2>&1)
  echo "[gpu-check] node sees: $backends" >&2
  record nodeBackends "$(node -e "console.log(JSON.stringify(JSON.stringify(require('./dist/cjs/index.js').nativeInfo().backends)))" 2>/dev/null || echo '"error"')"
  if ! echo "$backends" | grep -q '"name":"cuda","available":true'; then
    log "node does not see a usable CUDA backend"
    ok=false
  fi
  if [ -x node_modules/.bin/tap ]; then
    log "JS tests (tap)"
    # The files the CUDA host emulation runs in every `npm test` (scripts/test-cuda-emulation.js):
    # the CUDA suite, fixture parity, the API and error tables ('auto' picks CUDA) and the CUDA fuzz.
    # The rest default to the CPU or compare with CPU-set tolerances: GPU_CHECK_ALL_TESTS=1 runs all.
    files="test/cuda.test.ts test/parity.test.ts test/api.test.ts test/errors.test.ts test/fuzz.test.ts"
    [ -n "${GPU_CHECK_ALL_TESTS:-}" ] && files=""
    timeout 150 node node_modules/.bin/tap --disable-coverage $files >"$out/tap.log" 2>&1
    tap_rc=$?
    grep -E "^# \{ total|SKIP|not ok" "$out/tap.log" | head -20 >&2
    summary=$(grep -E '^# \{ total' "$out/tap.log" | tail -1 | sed 's/^# //')
    record tap "{\"exit\": $tap_rc, \"summary\": \"${summary:-none}\"}"
    [ $tap_rc -eq 0 ] || ok=false
  else
    record tap "\"node_modules/.bin/tap missing\""
  fi
fi
# ---- the README's figures, as Markdown ------------------------------------------------------------
if [ -n "$py" ] && "$py" scripts/gpu-report.py "$out" >"$out/report.md" 2>"$out/report.err"; then
  cat "$out/report.md" >&2
  record report "\"report.md\""
else
  record report "\"failed: see report.err\""
fi
finish $ok
