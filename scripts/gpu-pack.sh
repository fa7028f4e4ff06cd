#!/usr/bin/env bash
# Prepares .gpu-deps/ (git-ignored) for scripts/gpu-check.sh on an offline GPU machine that has
# CMake, nvcc and the cuBLAS/cuSOLVER wheels but none of this project's other build inputs:
#   include/eigen3/Eigen, include/Random123   header-only libraries of the CPU backend (the reference)
#   node.xz                                   this machine's node binary, xz-compressed
#   node_modules.tar.xz                       the npm dependencies (tap, typescript, node-api-headers, ...)
#   dist.tar.xz                               the compiled TypeScript (npm run build:ts)
# Usage: bash scripts/gpu-pack.sh [--no-node]     (then carry .gpu-deps with the device call)
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-deps
with_node=1
[ "${1:-}" = "--no-node" ] && with_node=0

rm -rf "$out"
mkdir -p "$out/include/eigen3"
cp -r /usr/include/eigen3/Eigen "$out/include/eigen3/"
cp -r /usr/include/Random123 "$out/include/"
if [ "$with_node" = 1 ]; then
  [ -d node_modules ] || { echo "gpu-pack: run npm ci first" >&2; exit 1; }
  [ -d dist ] || npm run build:ts >/dev/null
  nice xz -T2 -6 -c "$(readlink -f "$(command -v node)")" >"$out/node.xz"
  # Only what the JS tests need there: not cmake-js (gpu-check builds with CMake directly), not
  # tfjs-node (556 MB with libtensorflow; the CUDA tests use the pure-JS @tensorflow/tfjs), not
  # tshy's native TypeScript preview, no source maps, browser bundles or HTML reports.  The device
  # tool carries 64 MiB at most: everything here was 163 MB before these exclusions, 44 MB after.
  nice tar -cJf "$out/node_modules.tar.xz" --exclude='node_modules/cmake-js' --exclude='node_modules/.cache' \
    --exclude='node_modules/@tensorflow/tfjs-node' --exclude='node_modules/@typescript/native-preview*' \
    --exclude='*.map' --exclude='*.html' --exclude='node_modules/@tensorflow/*/dist/*.min.js' \
    --exclude='node_modules/@tensorflow/*/dist/*es2017*' --exclude='node_modules/@tensorflow/*/dist/*fesm*' \
    --exclude='node_modules/@tensorflow/*/dist/miniprogram' node_modules
  nice tar -cJf "$out/dist.tar.xz" dist
fi
du -sh "$out" "$out"/* >&2
# The device call carries at most 64 MiB (with everything else carried).
kib=$(du -sk "$out" | cut -f1)
if [ "$kib" -gt $((60 * 1024)) ]; then
  echo "gpu-pack: $out is $((kib / 1024)) MiB, over the 60 MiB this script allows for the 64 MiB carry limit" >&2
  exit 1
fi
