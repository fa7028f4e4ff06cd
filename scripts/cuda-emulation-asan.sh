#!/usr/bin/env bash
# The driver's CPU-vs-CUDA parity on the CUDA host emulation (cuda/emu), with AddressSanitizer in
# the emulated backend and the driver: a kernel or cuBLAS/cuSOLVER operand that reads or writes
# past the end of its allocation is reported (the emulation itself only checks the operands it is
# given).  Not part of `npm test` (about 1.5 minutes on 2 cores); run it after changing cuda/.
#   bash scripts/cuda-emulation-asan.sh [build-dir]     (default /tmp/nysact-asan)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-/tmp/nysact-asan}
mkdir -p "$build"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
cmake "${generator[@]}" -S "$root" -B "$build" -DNYSACT_CUDA=ON -DNYSACT_CUDA_EMULATION=ON \
  -DNYSACT_CUDA_EMULATION_ASAN=ON -DNYSACT_BUILD_DRIVER=ON -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$build/out" >/dev/null
cmake --build "$build" --target nysact_cuda_emu nysact_driver -j "$(nproc)"
# detect_leaks=0: the backend's device contexts are deliberately never destroyed (cuda/context.cpp).
NYSACT_CUDA_LIBRARY="$build/out/nysact_cuda_emu.so" ASAN_OPTIONS=detect_leaks=0 \
  "$build/out/nysact_driver" --no-bench >"$build/driver.json"
python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
p = d['parity']
print('asan driver parity: ok=%s, %d passed, %d failed, philox bit-identical=%s, batched factors ok=%s, fault cases ok=%s' % (
    d['ok'], p['passed'], p['failed'], d['philox']['gaussianBitIdentical'], all(r['ok'] for r in d['batchParity']['runs']),
    d.get('faults', {}).get('ok')))
sys.exit(0 if d['ok'] else 1)
" "$build/driver.json"
