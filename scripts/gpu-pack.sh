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
  # cmake-js and its dependencies are not needed there (gpu-check builds with CMake directly).
  nice tar -cJf "$out/node_modules.tar.xz" --exclude='node_modules/cmake-js' --exclude='node_modules/.cache' node_modules
  nice tar -cJf "$out/dist.tar.xz" dist
fi
du -sh "$out" "$out"/* >&2
