#!/usr/bin/env python3
"""PyTorch baselines for the GPU check, on the same GPU and ResNet-50 shapes as bench/driver.cpp.

1. NysAct computed the way the reference code computes it (SPEC.md sections 1 and 3):
   - statistics from the im2col patch matrix: F.unfold, then C = Xᵀ (X S) / n and the EMA;
   - the inverse with torch.linalg, one layer at a time: eigh, cholesky, solve_triangular and svd,
     then the dense p x p preconditioner P;
   - the update V' = P G', then momentum SGD with in-place tensor ops, one parameter at a time.
   This is this project's float32 PyTorch transcription of SPEC §1 (scripts/reference_nysact.py is
   the float64 one the tests use).  The original research code is not available offline, so these
   figures stand in for it.  They are not the original code's own timings.
2. torch.optim.SGD (momentum 0.9, weight decay 5e-4) over the same parameters, in its foreach and
   fused forms: the plain SGD-momentum step that PyTorch users run.

Times are medians of CUDA-event timings after a warm-up, as in the driver; on a CPU (--smoke) they
are wall-clock times and mean nothing.  Prints one JSON object.

    python3 bench/torch_reference.py [--batch 256] [--repeats 3] [--smoke]

scripts/gpu-check.sh runs it where python3's torch sees a GPU, and scripts/gpu-report.py puts its
figures beside the driver's.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from reference_nysact import LayerSpec, patch_matrix  # noqa: E402  (the tests' im2col, any dtype)


def resnet50():
    """bench/driver.cpp resnet50(): (name, kh, kw, cin, cout, stride, inH, bias)."""
    layers = [("conv1", 7, 7, 3, 64, 2, 224, False)]
    cin = 64
    for si, (blocks, width, out, in_h) in enumerate([(3, 64, 256, 56), (4, 128, 512, 56), (6, 256, 1024, 28),
                                                      (3, 512, 2048, 14)]):
        for b in range(blocks):
            stride = 2 if (b == 0 and si > 0) else 1
            h = in_h if b == 0 else in_h // (2 if si > 0 else 1)
            base = f"layer{si + 1}.{b}"
            layers.append((base + ".conv1", 1, 1, cin, width, 1, h, False))
            layers.append((base + ".conv2", 3, 3, width, width, stride, h, False))
            layers.append((base + ".conv3", 1, 1, width, out, 1, h // stride, False))
            if b == 0:
                layers.append((base + ".downsample", 1, 1, cin, out, stride, h, False))
            cin = out
    layers.append(("fc", 1, 1, 2048, 1000, 1, 1, True))
    return layers


def smoke_net():
    """bench/driver.cpp smokeNet()."""
    return [("conv1", 3, 3, 3, 8, 2, 16, False), ("conv2", 1, 1, 8, 16, 1, 8, False), ("fc", 1, 1, 16, 10, 1, 1, True)]


def spec_of(layer):
    name, kh, kw, cin, cout, stride, _, bias = layer
    if name == "fc":
        return LayerSpec(name=name, kind="dense", weight=name + ".w", bias_param=name + ".b" if bias else None,
                         in_features=cin, out_features=cout)
    return LayerSpec(name=name, kind="conv2d", weight=name + ".w", bias_param=name + ".b" if bias else None,
                     kernel_size=(kh, kw), in_channels=cin, out_channels=cout, strides=(stride, stride),
                     padding="same", dilation=(1, 1))


class Timer:
    """Median milliseconds of `repeats` runs of f after one untimed run."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def median(self, f, repeats):
        f()
        self.sync()
        times = []
        for _ in range(max(1, repeats)):
            if self.cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                f()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                f()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def activation(spec, x):
    """The activation matrix X (n x p) the reference forms: patches (or the dense input) and, with
    a bias, a column of ones."""
    m = x if spec.kind == "dense" else patch_matrix(x, spec)
    if spec.bias:
        m = torch.cat([m, torch.ones(m.shape[0], 1, dtype=m.dtype, device=m.device)], dim=1)
    return m


def nystrom_preconditioner(c_hat, s, rho):
    """SPEC §1 step 2 in float32 with torch.linalg, as the reference forms it: the dense P."""
    p, r = c_hat.shape
    y = c_hat + rho * s
    w = s.T @ y
    w = torch.tril(w) + torch.tril(w, -1).T
    lam, v = torch.linalg.eigh(w)
    shift = lam.min().abs() + rho
    wh = v @ torch.diag(lam + shift) @ v.T
    l = torch.linalg.cholesky(wh)
    b = torch.linalg.solve_triangular(l, y, upper=False, left=False)
    u, sig, _ = torch.linalg.svd(b, full_matrices=False)
    lam_hat = torch.clamp(sig * sig - shift, min=0.0)
    return u @ torch.diag(1.0 / (lam_hat + rho)) @ u.T + (torch.eye(p, device=c_hat.device) - u @ u.T) / rho


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="three tiny layers (any device): runs the code, times nothing")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        print(json.dumps({"torchReference": "skipped: torch sees no GPU (use --smoke to run the code on the CPU)"}))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False  # plain fp32, as the driver's SGEMM and kernels
    torch.backends.cudnn.allow_tf32 = False
    net = smoke_net() if args.smoke else resnet50()
    batch = min(args.batch, 2) if args.smoke else args.batch
    ranks = [4, 2] if args.smoke else [50, 10]
    timer = Timer(device)
    gen = torch.Generator(device=device).manual_seed(7)
    specs = [spec_of(l) for l in net]
    out = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": batch,
        "layers": len(net),
        "parameters": sum(s.p * s.q for s in specs),
        "note": "this project's float32 PyTorch transcription of SPEC §1, computed the reference code's way "
                "(im2col statistics, dense P, V = P G); not the original code's own timings",
    }
    if args.smoke:
        out["smoke"] = "tiny shapes to run the code (--smoke): these times are not benchmarks"

    # Parameters, gradients and momentum buffers of every layer (G' as p x q, bias row last).
    theta = [torch.rand(s.p, s.q, device=device, generator=gen) * 0.1 - 0.05 for s in specs]
    grads = [torch.rand(s.p, s.q, device=device, generator=gen) * 0.02 - 0.01 for s in specs]
    bufs = [torch.zeros_like(t) for t in theta]
    lr, mu, wd, beta, rho = 1e-3, 0.9, 5e-4, 0.95, 1.0

    runs = []
    for r in ranks:
        row = {"rank": r}
        # Statistics: every layer at `batch` from a resident NHWC input (as the driver's sketch bench).
        emas = [torch.zeros(s.p, min(r, s.p), device=device) for s in specs]
        inputs = []
        for (name, kh, kw, cin, cout, stride, in_h, bias), s in zip(net, specs):
            shape = (batch, cin) if s.kind == "dense" else (batch, in_h, in_h, cin)
            inputs.append(torch.rand(*shape, device=device, generator=gen) * 2 - 1)
        flop = 0.0
        for s, x in zip(specs, inputs):
            n = x.shape[0] if s.kind == "dense" else x.shape[0] * math.ceil(x.shape[1] / s.strides[0]) * math.ceil(
                x.shape[2] / s.strides[1])
            flop += 4.0 * n * s.p * min(r, s.p)

        def statistics_step():
            for s, x, ema in zip(specs, inputs, emas):
                xm = activation(s, x)
                k = min(r, s.p)
                sk = torch.randn(s.p, k, device=device, generator=gen) / math.sqrt(s.p)
                c = xm.T @ (xm @ sk) / xm.shape[0]
                ema.mul_(beta).add_(c, alpha=1 - beta)

        ms = timer.median(statistics_step, args.repeats)
        row.update(sketchMs=ms, sketchTflops=flop / (ms * 1e-3) / 1e12)
        del inputs

        # Inverse: statistics from 256 random rows per layer (as the driver's inverse bench), then
        # every layer's dense P, one layer at a time.
        sketches, chats = [], []
        for s in specs:
            k = min(r, s.p)
            xm = torch.rand(256, s.p, device=device, generator=gen)
            sk = torch.randn(s.p, k, device=device, generator=gen) / math.sqrt(s.p)
            sketches.append(sk)
            chats.append(xm.T @ (xm @ sk) / 256)
        ps = [None] * len(specs)

        def inverse_step():
            for i, (c_hat, sk) in enumerate(zip(chats, sketches)):
                ps[i] = nystrom_preconditioner(c_hat, sk, rho)

        row["inverseMs"] = timer.median(inverse_step, args.repeats)
        row["preconditionerBytes"] = sum(int(p.numel()) * 4 for p in ps)
        # What replaces P in this package: U (p x k) and k coefficients per layer, float32.
        row["lowRankFactorBytes"] = sum((s.p * min(r, s.p) + min(r, s.p)) * 4 for s in specs)

        # Update: V' = P G', then momentum SGD with coupled weight decay, one parameter at a time.
        def update_step():
            for p_mat, g, t, b in zip(ps, grads, theta, bufs):
                v = p_mat @ g
                v.add_(t, alpha=wd)
                b.mul_(mu).add_(v)
                t.add_(b, alpha=-lr)

        row["updateMs"] = timer.median(update_step, args.repeats)
        row["updateFlop"] = sum(2.0 * s.p * s.p * s.q for s in specs)
        runs.append(row)
        del ps, chats, sketches
    out["nysact"] = runs

    # torch.optim.SGD over the same parameters (weights with the fc bias row, as one tensor each).
    sgd = {}
    for mode in ("foreach", "fused"):
        params = [torch.nn.Parameter(t.clone()) for t in theta]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        try:
            opt = torch.optim.SGD(params, lr=lr, momentum=mu, weight_decay=wd, **{mode: True})
            sgd[mode + "Ms"] = timer.median(opt.step, args.repeats)
        except (RuntimeError, TypeError, ValueError) as e:  # fused needs a device that supports it
            sgd[mode + "Ms"] = None
            sgd[mode + "Error"] = str(e).splitlines()[0]
    out["sgd"] = sgd
    print(json.dumps({"torchReference": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
