#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs to build nysact and run its main job and tests:
# system packages (CMake, a C++ compiler, Eigen, Random123, Fashion-MNIST), the CUDA 13.0
# cuBLAS/cuSOLVER wheels when nvcc is present (the CUDA backend is then built too), npm
# dependencies, @tensorflow/tfjs-node built offline (scripts/setup-tfjs-node.sh), and the build.
#   bash scripts/setup.sh          (idempotent; `.ci/run` runs it before the tests)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*"; }
sudo_if() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(cmake g++ make libeigen3-dev librandom123-dev dataset-fashion-mnist)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# pip fetches the tensorflow-cpu wheel for tfjs-node (and the CUDA wheels).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if apt-get update -qq
  sudo_if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v nvcc >/dev/null 2>&1; then
  # The CUDA backend is compiled and linked whenever nvcc is here (no GPU is needed to build it).
  say "nvcc found: installing the CUDA 13.0 cuBLAS/cuSOLVER wheels"
  python3 -m pip install -q --disable-pip-version-check \
    nvidia-cublas==13.0.2.14 nvidia-cusolver==12.0.4.66 nvidia-cusparse==12.6.3.3 \
    nvidia-nvjitlink==13.0.88 nvidia-cuda-runtime==13.0.96
  export NYSACT_CUDA=${NYSACT_CUDA:-ON}
  # ... and on the host emulation of CUDA (cuda/emu), so the tests run its code without a GPU.
  export NYSACT_CUDA_EMULATION=${NYSACT_CUDA_EMULATION:-ON}
fi

say "npm ci"
npm ci --no-audit --no-fund
bash scripts/setup-tfjs-node.sh
say "building (native addon and TypeScript)"
npm run build
say "done"
