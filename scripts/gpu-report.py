#!/usr/bin/env python3
"""The README's GPU figures from one scripts/gpu-check.sh run: reads driver.json (parity) and
bench.json (benchmarks) from the check's output folder and prints a Markdown block with every
figure, the issue's target beside it and whether it was met, the device and the date.  Numbers are
the check's own; nothing is computed here but ratios of them.

Usage: python3 scripts/gpu-report.py OUT_DIR     (gpu-check.sh runs it and writes OUT_DIR/report.md)
"""
import datetime
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    driver = load(os.path.join(out, "driver.json")) or {}
    bench_file = load(os.path.join(out, "bench.json")) or {}
    bench = bench_file.get("bench") if isinstance(bench_file.get("bench"), dict) else None
    device = (driver.get("cuda") or {}).get("device", "unknown device")
    emulated = "host emulation" in device
    lines = []
    when = datetime.date.today().isoformat()
    quick = bool(bench) and not bench.get("smoke") and (bench.get("inverse") or {}).get("layers", 54) < 54
    lines.append(f"GPU check, {when}, on {device}" + (" (--quick: not the issue's full ResNet-50 set)" if quick else ""))
    if emulated or (bench and bench.get("smoke")):
        lines.append("")
        lines.append("**Not GPU figures**: the host emulation or --smoke shapes; these rows only show the report works.")
    lines.append("")

    parity = driver.get("parity") or {}
    cases = parity.get("cases") or []
    worst = max((c.get("weights", 0.0) for c in cases), default=float("nan"))
    batch_runs = (driver.get("batchParity") or {}).get("runs") or []
    lines.append("| check | result |")
    lines.append("|---|---|")
    lines.append(f"| CPU-vs-CUDA parity ({parity.get('mode', 'not run')}) | {parity.get('passed', 0)} passed, "
                 f"{parity.get('failed', 0)} failed; worst weight error {worst:.2e} relative (bound 1e-4) |")
    lines.append(f"| Philox sketches bit-identical | {(driver.get('philox') or {}).get('gaussianBitIdentical')} |")
    lines.append(f"| device-resident / page-locked paths bit-identical | "
                 f"{all(c.get('residentIdentical') for c in cases) if cases else None} / "
                 f"{all(c.get('residentActivationsIdentical') for c in cases) if cases else None} (weights / activations) |")
    lines.append(f"| batched inverse vs CPU and per-layer | {sum(1 for r in batch_runs if r.get('ok'))}/{len(batch_runs)} runs ok |")
    sb = driver.get("stepBatch") or {}
    lines.append(f"| batched update vs one launch per layer | {sb.get('layers', 0)} layers and parameters, "
                 f"{sb.get('layersNotBitIdentical', 'not run')} not bit-identical |")
    lines.append("")

    if not bench:
        lines.append(f"Benchmarks: {bench_file.get('bench', 'not run')}")
        print("\n".join(lines))
        return
    c = bench.get("ceilings", {})
    f = bench.get("fusedUpdate", {})
    s = bench.get("sketch", {})
    inv = bench.get("inverse", {})
    w = bench.get("wholeStep", {})

    def met(ok):
        return "yes" if ok else "**no**"

    lines.append(f"Ceilings measured in the same run: device-to-device copy {c.get('copyGBps_readPlusWrite', 0):.0f} GB/s "
                 f"(read + write, {c.get('copyBytes', 0) / 2**20:.0f} MiB), SGEMM {c.get('sgemmSize')}³ "
                 f"{c.get('sgemmTflops', 0):.1f} TFLOP/s.")
    lines.append("")
    lines.append("| benchmark | measured | target | met |")
    lines.append("|---|---|---|---|")
    for fu in (f, bench.get("fusedUpdateRank10") or {}):
        if not fu:
            continue
        frac = fu.get("fractionOfCopyBandwidth", 0)
        lines.append(f"| fused update, {fu.get('layers')} layers one by one, rank {fu.get('rank')} | "
                     f"{fu.get('totalMs', 0):.2f} ms, {fu.get('GBps', 0):.0f} GB/s = {100 * frac:.0f}% of copy "
                     f"bandwidth | ≥ 80% | {met(frac >= 0.8)} |")
    sf = s.get("fractionOfSgemm", 0)
    lines.append(f"| sketch, {len(s.get('perLayer', [])) if bench.get('smoke') else 'all'} layers, batch {s.get('batch')}, "
                 f"rank {s.get('rank')} | {s.get('totalMs', 0):.1f} ms, {s.get('tflops', 0):.1f} TFLOP/s = "
                 f"{100 * sf:.0f}% of SGEMM | ≥ 50% | {met(sf >= 0.5)} |")
    lines.append(f"| inverse update, {inv.get('layers')} layers, rank {inv.get('rank')} | batched "
                 f"{inv.get('cudaBatchedMs', 0):.2f} ms (per layer {inv.get('cudaPerLayerMs', 0):.2f} ms, "
                 f"{inv.get('batchedSpeedup', 0):.1f}×; CPU {inv.get('cpuMs', 0):.0f} ms) | ≤ 5 ms | "
                 f"{met(inv.get('withinTarget'))} |")
    for ws in (w, bench.get("wholeStepRank10") or {}):
        if not ws:
            continue
        lines.append(f"| whole step, {ws.get('layers')} layers, rank {ws.get('rank')}, "
                     f"{ws.get('parameters', 0) / 1e6:.1f} M parameters | device-resident "
                     f"{ws.get('deviceResidentMs', 0):.2f} ms (one launch per layer: "
                     f"{ws.get('deviceResidentPerLayerMs', 0):.2f} ms) = {ws.get('deviceResidentOverSgd', 0):.2f}× SGD-momentum "
                     f"({ws.get('sgdMomentumMs', 0):.2f} ms); as fractions of copy bandwidth "
                     f"{100 * ws.get('deviceResidentFractionOfCopyBandwidth', 0):.0f}% vs SGD's "
                     f"{100 * ws.get('sgdMomentumFractionOfCopyBandwidth', 0):.0f}%; host arrays "
                     f"{ws.get('hostOverDevice', 0):.2f}×, page-locked {ws.get('pinnedOverDevice', 0):.2f}× "
                     f"device-resident | reported | — |")

    # PyTorch on the same GPU (bench/torch_reference.py), where it ran.
    torch_file = load(os.path.join(out, "torch.json")) or {}
    tr = torch_file.get("torchReference")
    if isinstance(tr, dict):
        by_rank = {row.get("rank"): row for row in tr.get("nysact", [])}
        sgd = tr.get("sgd", {})

        def vs(ours, theirs):
            if not ours or not theirs:
                return "—"
            return f"{theirs / ours:.1f}× faster" if theirs >= ours else f"{ours / theirs:.1f}× slower"

        lines.append("")
        lines.append(f"Against PyTorch {tr.get('torch')} on the same GPU ({tr.get('device')}): NysAct computed the "
                     f"reference code's way (im2col statistics, dense P, V = P G; this project's float32 "
                     f"transcription of SPEC §1, not the original code's own timings) and torch.optim.SGD, "
                     f"batch {tr.get('batch')}, {tr.get('layers')} layers:")
        lines.append("")
        lines.append("| step part | nysact | PyTorch | nysact is |")
        lines.append("|---|---|---|---|")
        r50 = by_rank.get(s.get("rank")) or {}
        if r50:
            lines.append(f"| statistics, rank {s.get('rank')} | {s.get('totalMs', 0):.1f} ms | "
                         f"{r50.get('sketchMs', 0):.1f} ms (im2col) | {vs(s.get('totalMs'), r50.get('sketchMs'))} |")
            lines.append(f"| inverse, rank {inv.get('rank')} | {inv.get('cudaBatchedMs', 0):.2f} ms (batched) | "
                         f"{r50.get('inverseMs', 0):.1f} ms (per layer, dense P) | "
                         f"{vs(inv.get('cudaBatchedMs'), r50.get('inverseMs'))} |")
        for ws in (w, bench.get("wholeStepRank10") or {}):
            row = by_rank.get(ws.get("rank")) or {}
            if row:
                lines.append(f"| update step, rank {ws.get('rank')} | {ws.get('deviceResidentMs', 0):.2f} ms | "
                             f"{row.get('updateMs', 0):.2f} ms (P G, then SGD) | "
                             f"{vs(ws.get('deviceResidentMs'), row.get('updateMs'))} |")
                lines.append(f"| preconditioner memory, rank {ws.get('rank')} | "
                             f"{row.get('lowRankFactorBytes', 0) / 2**20:.1f} MiB (U and coefficients) | "
                             f"{row.get('preconditionerBytes', 0) / 2**20:.1f} MiB (dense P) | "
                             f"{row.get('preconditionerBytes', 0) / max(1, row.get('lowRankFactorBytes', 1)):.0f}× less |")
        for mode in ("foreach", "fused"):
            theirs = sgd.get(mode + "Ms")
            if theirs:
                lines.append(f"| plain SGD-momentum | {w.get('sgdMomentumMs', 0):.2f} ms (multi-tensor kernel) | "
                             f"{theirs:.2f} ms (torch.optim.SGD {mode}) | {vs(w.get('sgdMomentumMs'), theirs)} |")
    elif tr:
        lines.append("")
        lines.append(f"PyTorch baselines: {tr}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
