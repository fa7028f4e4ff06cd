#!/usr/bin/env python3
"""Timing of a float32 PyTorch transcription of NysAct (SPEC.md section 1), run the way the
official research code runs it: a dense p x p preconditioner per layer, conv patches built with
torch.nn.functional.unfold on NCHW input, gaussian sketches, and the update V = G P.

Layer shapes: ResNet-32 / CIFAR-10 (option A shortcuts, so no 1x1 convs), i.e. 31 3x3 convs
without bias + a 64->10 dense layer with bias. Activations and gradients are random tensors of
the right shapes, generated once outside the timed regions.

    python3 bench/reference_torch.py [--batch 128] [--rank 10] [--repeats 5] [--quick]

Prints one JSON object:
  stats_step_s     statistics work of one statistics step, all layers
                   (patches + sketch draw + X^T (X S) + EMA)
  inverse_step_s   inverse work, all layers (eigh / cholesky / solve / svd / dense P)
  ordinary_step_s  the update, all layers (V = G P, weight decay, momentum, parameter update)
  amortized_s      ordinary + stats / tcov + inverse / tinv
  patches_s        building the patch matrices only, all layers
  state_bytes      dense P + EMA + momentum buffers, all layers
  layers           per layer {name, p, q, n, P_bytes}
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def resnet32_layers(batch: int):
    """(name, kind, cin, cout, k, stride, in_hw, bias) for ResNet-32 on 32x32 input."""
    layers = [("conv1", "conv", 3, 16, 3, 1, 32, False)]
    cin, hw = 16, 32
    for stage, cout in enumerate((16, 32, 64), start=1):
        for block in range(5):
            for j in (1, 2):
                stride = 2 if (stage > 1 and block == 0 and j == 1) else 1
                layers.append((f"stage{stage}.block{block}.conv{j}", "conv", cin, cout, 3, stride, hw, False))
                if stride == 2:
                    hw //= 2
                cin = cout
    layers.append(("fc", "dense", 64, 10, 1, 1, 1, True))
    return layers


class Layer:
    def __init__(self, spec, batch, rank, gen):
        name, kind, cin, cout, k, stride, hw, bias = spec
        self.name, self.kind, self.k, self.stride, self.bias = name, kind, k, stride, bias
        self.q = cout
        fan_in = cin * k * k if kind == "conv" else cin
        self.p = fan_in + (1 if bias else 0)
        self.r = min(rank, self.p)
        if kind == "conv":
            out_hw = (hw + 2 * (k // 2) - k) // stride + 1
            self.n = batch * out_hw * out_hw
            self.x = torch.randn(batch, cin, hw, hw, generator=gen)
        else:
            self.n = batch
            self.x = torch.randn(batch, cin, generator=gen)
        # official layout: G is q x p (bias gradient as the last column)
        self.grad = torch.randn(self.q, self.p, generator=gen) * 1e-2
        self.theta = torch.randn(self.q, self.p, generator=gen) / math.sqrt(self.p)
        self.buf = torch.zeros(self.q, self.p)
        self.ema = torch.zeros(self.p, self.r)
        self.ema_steps = 0
        self.S = torch.randn(self.p, self.r, generator=gen) / math.sqrt(self.p)
        self.P = torch.eye(self.p)

    def patches(self):
        if self.kind == "conv":
            cols = F.unfold(self.x, kernel_size=self.k, padding=self.k // 2, stride=self.stride)
            a = cols.transpose(1, 2).reshape(-1, cols.shape[1])      # n x (cin k k), a copy
        else:
            a = self.x
        if self.bias:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        return a

    def statistics(self, beta):
        X = self.patches()
        self.S = torch.randn(self.p, self.r) / math.sqrt(self.p)
        C = X.t() @ (X @ self.S) / X.shape[0]
        self.ema.mul_(beta).add_(C, alpha=1 - beta)
        self.ema_steps += 1

    def inverse(self, beta, rho):
        c_hat = self.ema / (1 - beta ** max(self.ema_steps, 1))
        Y = c_hat + rho * self.S
        W = self.S.t() @ Y
        lam, V = torch.linalg.eigh(W)                  # lower triangle
        shift = lam.min().abs() + rho
        Wh = V @ torch.diag(lam + shift) @ V.t()
        L = torch.linalg.cholesky(Wh)
        B = torch.linalg.solve_triangular(L, Y, upper=False, left=False)   # B L = Y
        U, sig, _ = torch.linalg.svd(B, full_matrices=False)
        lam_hat = torch.clamp(sig * sig - shift, min=0.0)
        self.P = (U @ torch.diag(1.0 / (lam_hat + rho)) @ U.t()
                  + (torch.eye(self.p) - U @ U.t()) / rho)

    def update(self, lr, mu, wd):
        V = self.grad @ self.P
        d = V.add_(self.theta, alpha=wd)
        self.buf.mul_(mu).add_(d)
        self.theta.add_(self.buf, alpha=-lr)


def timed(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats of the statistics step (default 5, --quick 2); cheaper parts run 4x more")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", dest="json", action="store_true", default=True)
    ap.add_argument("--no-json", dest="json", action="store_false")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    cheap_repeats = 4 * repeats
    beta, rho, lr, mu, wd, tcov, tinv = 0.95, 1.0, 0.1, 0.9, 5e-4, 5, 50

    t_setup = time.perf_counter()
    gen = torch.Generator().manual_seed(0)
    layers = [Layer(s, args.batch, args.rank, gen) for s in resnet32_layers(args.batch)]
    setup_s = time.perf_counter() - t_setup

    def stats_step():
        for L in layers:
            L.statistics(beta)

    def inverse_step():
        for L in layers:
            L.inverse(beta, rho)

    def ordinary_step():
        for L in layers:
            L.update(lr, mu, wd)

    def patches_only():
        for L in layers:
            L.patches()

    patches_s, _ = timed(patches_only, repeats)
    stats_s, stats_all = timed(stats_step, repeats)
    inverse_s, _ = timed(inverse_step, cheap_repeats, warmup=2)
    ordinary_s, _ = timed(ordinary_step, cheap_repeats, warmup=2)

    per_layer = []
    state_bytes = 0
    for L in layers:
        p_bytes = L.P.numel() * L.P.element_size()
        state_bytes += p_bytes + L.ema.numel() * L.ema.element_size() + L.buf.numel() * L.buf.element_size()
        per_layer.append({"name": L.name, "p": L.p, "q": L.q, "n": L.n, "P_bytes": p_bytes})

    out = {
        "impl": "pytorch-float32-dense-P (SPEC section 1 transcription)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "rank": args.rank,
        "tcov": tcov,
        "tinv": tinv,
        "repeats": {"stats": repeats, "patches": repeats, "inverse": cheap_repeats, "ordinary": cheap_repeats},
        "stats_step_s": stats_s,
        "inverse_step_s": inverse_s,
        "ordinary_step_s": ordinary_s,
        "amortized_s": ordinary_s + stats_s / tcov + inverse_s / tinv,
        "patches_s": patches_s,
        "stats_step_all_s": stats_all,
        "state_bytes": state_bytes,
        "setup_s": setup_s,
        "layers": per_layer,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "layers":
                print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
