#!/usr/bin/env python3
"""Independent float64 PyTorch reference of NysAct (SPEC.md section 1).

Written from the SPEC only; it is what the native implementation is tested against.
All tensors are torch.float64 and in tfjs layouts:

  dense  weight [in, out]              activation X = input (n x in)      (+ ones column)
  conv2d weight [kh, kw, inC, outC]    activation X = im2col patches,     (+ ones column)
                                       columns in (kh, kw, c) order, rows (batch, oh, ow)

The layer gradient G' (p x q) is the weight gradient reshaped to (fan_in, out) with the bias
gradient appended as the LAST ROW; the preconditioned update is V' = P G'.

Sketches are always injected by the caller (gaussian: a p x r matrix; subcolumns: r distinct
column indices). When r = min(rank, p) == p the layer keeps the full covariance instead.

Usage as a module:
    opt = NysActReference(layers, plain_shapes, hyper, params)
    opt.step(t, grads, activations=..., sketches=...)   # activations/sketches on t % tcov == 0

CLI:
    python3 scripts/reference_nysact.py check test/fixtures/mlp-gaussian.json [...]
        replays a fixture (its recorded inputs) through this reference and compares the recorded
        parameters; exits non-zero on a mismatch.
    python3 scripts/reference_nysact.py selftest
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

DT = torch.float64


# --------------------------------------------------------------------------------------------
# Layer description and activation matrices
# --------------------------------------------------------------------------------------------

@dataclass
class LayerSpec:
    name: str
    kind: str                       # "dense" | "conv2d"
    weight: str                     # parameter name of the kernel
    bias_param: Optional[str]       # parameter name of the bias, or None
    in_features: int = 0            # dense
    out_features: int = 0           # dense
    kernel_size: Sequence[int] = (1, 1)   # conv2d
    in_channels: int = 0
    out_channels: int = 0
    strides: Sequence[int] = (1, 1)
    padding: str = "valid"          # "valid" | "same"
    dilation: Sequence[int] = (1, 1)

    @property
    def bias(self) -> bool:
        return self.bias_param is not None

    @property
    def fan_in(self) -> int:
        if self.kind == "dense":
            return self.in_features
        kh, kw = self.kernel_size
        return kh * kw * self.in_channels

    @property
    def p(self) -> int:
        return self.fan_in + (1 if self.bias else 0)

    @property
    def q(self) -> int:
        return self.out_features if self.kind == "dense" else self.out_channels

    def weight_shape(self) -> List[int]:
        if self.kind == "dense":
            return [self.in_features, self.out_features]
        kh, kw = self.kernel_size
        return [kh, kw, self.in_channels, self.out_channels]

    def to_json(self) -> dict:
        if self.kind == "dense":
            return {"name": self.name, "kind": "dense", "inFeatures": self.in_features,
                    "outFeatures": self.out_features, "bias": self.bias,
                    "weight": self.weight, "biasParam": self.bias_param}
        return {"name": self.name, "kind": "conv2d", "kernelSize": list(self.kernel_size),
                "inChannels": self.in_channels, "outChannels": self.out_channels,
                "strides": list(self.strides), "padding": self.padding,
                "dilation": list(self.dilation), "bias": self.bias,
                "weight": self.weight, "biasParam": self.bias_param}

    @staticmethod
    def from_json(d: dict) -> "LayerSpec":
        if d["kind"] == "dense":
            return LayerSpec(name=d["name"], kind="dense", weight=d["weight"],
                             bias_param=d.get("biasParam") if d.get("bias") else None,
                             in_features=d["inFeatures"], out_features=d["outFeatures"])
        return LayerSpec(name=d["name"], kind="conv2d", weight=d["weight"],
                         bias_param=d.get("biasParam") if d.get("bias") else None,
                         kernel_size=tuple(d["kernelSize"]), in_channels=d["inChannels"],
                         out_channels=d["outChannels"], strides=tuple(d["strides"]),
                         padding=d["padding"], dilation=tuple(d["dilation"]))


def tf_padding_1d(size: int, k: int, s: int, d: int, padding: str):
    """TensorFlow output size and (before, after) padding along one spatial axis."""
    eff = (k - 1) * d + 1
    if padding == "valid":
        out = -(-(size - (k - 1) * d) // s)   # ceil((size - (k-1) d) / s)
        return out, 0, 0
    if padding == "same":
        out = -(-size // s)                   # ceil(size / s)
        total = max((out - 1) * s + eff - size, 0)
        before = total // 2
        return out, before, total - before
    raise ValueError(f"unknown padding {padding!r}")


def conv_geometry(x_shape: Sequence[int], layer: LayerSpec):
    """(outH, outW, padTop, padBottom, padLeft, padRight) for an NHWC input shape."""
    _, h, w, _ = x_shape
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation
    oh, pt, pb = tf_padding_1d(h, kh, sh, dh, layer.padding)
    ow, pl, pr = tf_padding_1d(w, kw, sw, dw, layer.padding)
    return oh, ow, pt, pb, pl, pr


def patch_matrix(x_nhwc: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """im2col of an NHWC input: (N*outH*outW) x (kh*kw*C), columns in (kh, kw, c) order.

    Differentiable (used for the fixture networks' forward pass as well)."""
    n, h, w, c = x_nhwc.shape
    kh, kw = layer.kernel_size
    oh, ow, pt, pb, pl, pr = conv_geometry(x_nhwc.shape, layer)
    x = x_nhwc.permute(0, 3, 1, 2)                       # NCHW
    x = F.pad(x, (pl, pr, pt, pb))                        # (left, right, top, bottom)
    cols = F.unfold(x, kernel_size=(kh, kw), dilation=tuple(layer.dilation),
                    padding=0, stride=tuple(layer.strides))   # N x (c*kh*kw) x L, c slowest
    assert cols.shape[2] == oh * ow, (cols.shape, oh, ow)
    cols = cols.reshape(n, c, kh, kw, oh * ow).permute(0, 4, 2, 3, 1)   # N, L, kh, kw, c
    return cols.reshape(n * oh * ow, kh * kw * c)


def patch_matrix_naive(x_nhwc: torch.Tensor, layer: LayerSpec) -> torch.Tensor:
    """Loop implementation of patch_matrix (for self-checks)."""
    n, h, w, c = x_nhwc.shape
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation
    oh, ow, pt, _, pl, _ = conv_geometry(x_nhwc.shape, layer)
    out = torch.zeros(n * oh * ow, kh * kw * c, dtype=x_nhwc.dtype)
    row = 0
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                col = 0
                for a in range(kh):
                    for e in range(kw):
                        yy = i * sh + a * dh - pt
                        xx = j * sw + e * dw - pl
                        for ch in range(c):
                            if 0 <= yy < h and 0 <= xx < w:
                                out[row, col] = x_nhwc[b, yy, xx, ch]
                            col += 1
                row += 1
    return out


def activation_matrix(layer: LayerSpec, x: torch.Tensor) -> torch.Tensor:
    """X (n x p): dense input / conv patches, plus a ones column when the layer has a bias."""
    x = x.to(DT)
    if layer.kind == "dense":
        a = x.reshape(-1, layer.in_features)
    else:
        a = patch_matrix(x, layer)
    if layer.bias:
        a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=DT)], dim=1)
    return a


def layer_forward(layer: LayerSpec, x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward of a dense / conv2d layer in tfjs layouts (NHWC), differentiable."""
    wgt = params[layer.weight]
    if layer.kind == "dense":
        y = x @ wgt
    else:
        n = x.shape[0]
        oh, ow, *_ = conv_geometry(x.shape, layer)
        y = patch_matrix(x, layer) @ wgt.reshape(layer.fan_in, layer.out_channels)
        y = y.reshape(n, oh, ow, layer.out_channels)
    if layer.bias:
        y = y + params[layer.bias_param]
    return y


# --------------------------------------------------------------------------------------------
# Sketches (drawn by callers; the optimizer only consumes them)
# --------------------------------------------------------------------------------------------

def draw_sketch(kind: str, p: int, r: int, gen: torch.Generator, round_f32: bool = True):
    """gaussian: S = randn(p, r)/sqrt(p) (rounded to float32 values); subcolumns: r distinct
    indices in random order (a LongTensor)."""
    if kind == "gaussian":
        s = torch.randn(p, r, generator=gen, dtype=DT) / math.sqrt(p)
        return s.float().double() if round_f32 else s
    if kind == "subcolumns":
        return torch.randperm(p, generator=gen)[:r].clone()
    raise ValueError(f"unknown sketch {kind!r}")


def selector(idx: torch.Tensor, p: int) -> torch.Tensor:
    s = torch.zeros(p, len(idx), dtype=DT)
    s[idx, torch.arange(len(idx))] = 1.0
    return s


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------

@dataclass
class Hyper:
    lr: float = 0.1
    momentum: float = 0.9
    stat_decay: float = 0.95
    damping: float = 1.0
    weight_decay: float = 5e-4
    tcov: int = 5
    tinv: int = 50
    rank: int = 10
    sketch: str = "gaussian"
    nesterov: bool = False

    def to_json(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "statDecay": self.stat_decay,
                "damping": self.damping, "weightDecay": self.weight_decay, "tcov": self.tcov,
                "tinv": self.tinv, "rank": self.rank, "sketch": self.sketch,
                "nesterov": self.nesterov}

    @staticmethod
    def from_json(d: dict) -> "Hyper":
        return Hyper(lr=d["lr"], momentum=d["momentum"], stat_decay=d["statDecay"],
                     damping=d["damping"], weight_decay=d["weightDecay"], tcov=d["tcov"],
                     tinv=d["tinv"], rank=d["rank"], sketch=d["sketch"],
                     nesterov=bool(d["nesterov"]))


@dataclass
class LayerState:
    r: int
    full: bool
    ema: Optional[torch.Tensor] = None        # p x r (sketched) or p x p (full)
    ema_steps: int = 0
    sketch: Optional[torch.Tensor] = None     # last sketch: p x r matrix or r indices
    P: Optional[torch.Tensor] = None          # dense p x p preconditioner
    factors: dict = field(default_factory=dict)


def nystrom_factors(c_hat: torch.Tensor, sketch: torch.Tensor, kind: str, rho: float):
    """SPEC section 1 step 2 (sketched case). Returns (U, lambda_hat, shift)."""
    p, r = c_hat.shape
    if kind == "subcolumns":
        idx = sketch
        y = c_hat.clone()
        y[idx, torch.arange(r)] += rho
        w = y[idx, :]                                      # S^T Y = rows idx of Y
    else:
        s = sketch
        y = c_hat + rho * s
        w = s.T @ y
    # eigendecomposition of the LOWER triangle of W (made explicit)
    w_low = torch.tril(w) + torch.tril(w, -1).T
    lam, v = torch.linalg.eigh(w_low)
    shift = abs(lam.min().item()) + rho
    wh = v @ torch.diag(lam + shift) @ v.T
    l = torch.linalg.cholesky(wh)                         # lower
    b = torch.linalg.solve_triangular(l, y, upper=False, left=False)   # B L = Y
    u, sig, _ = torch.linalg.svd(b, full_matrices=False)
    u = u[:, :r]
    sig = sig[:r]
    lam_hat = torch.clamp(sig * sig - shift, min=0.0)
    return u, lam_hat, shift


def preconditioner_from_factors(u: torch.Tensor, lam_hat: torch.Tensor, rho: float) -> torch.Tensor:
    p = u.shape[0]
    return (u @ torch.diag(1.0 / (lam_hat + rho)) @ u.T
            + (torch.eye(p, dtype=DT) - u @ u.T) / rho)


class NysActReference:
    def __init__(self, layers: List[LayerSpec], plain: List[str], hyper: Hyper,
                 params: Dict[str, torch.Tensor]):
        self.layers = layers
        self.plain = list(plain)
        self.h = hyper
        self.params = {k: v.clone().to(DT) for k, v in params.items()}
        self.buf = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.state: Dict[str, LayerState] = {}
        for L in layers:
            r = min(hyper.rank, L.p)
            self.state[L.name] = LayerState(r=r, full=(r == L.p))

    # -- step pieces -------------------------------------------------------------------------
    def update_statistics(self, layer: LayerSpec, x_input: torch.Tensor, sketch=None):
        st = self.state[layer.name]
        X = activation_matrix(layer, x_input)
        n = X.shape[0]
        if st.full:
            c = X.T @ X / n
        else:
            if sketch is None:
                raise ValueError(f"layer {layer.name}: a sketch is required (r < p)")
            if self.h.sketch == "subcolumns":
                idx = torch.as_tensor(sketch, dtype=torch.long)
                assert idx.numel() == st.r and len(set(idx.tolist())) == st.r
                c = X.T @ X[:, idx] / n                    # X^T (X S)
                st.sketch = idx
            else:
                s = torch.as_tensor(sketch, dtype=DT).reshape(layer.p, st.r)
                c = X.T @ (X @ s) / n
                st.sketch = s
        beta = self.h.stat_decay
        st.ema = (1 - beta) * c if st.ema is None else beta * st.ema + (1 - beta) * c
        st.ema_steps += 1

    def update_inverse(self, layer: LayerSpec):
        st = self.state[layer.name]
        if st.ema is None:
            raise RuntimeError(f"layer {layer.name}: inverse before any statistics")
        rho = self.h.damping
        c_hat = st.ema / (1 - self.h.stat_decay ** st.ema_steps)
        if st.full:
            st.P = torch.linalg.inv(c_hat + rho * torch.eye(layer.p, dtype=DT))
            st.factors = {}
        else:
            u, lam_hat, shift = nystrom_factors(c_hat, st.sketch, self.h.sketch, rho)
            st.P = preconditioner_from_factors(u, lam_hat, rho)
            st.factors = {"U": u, "lambdaHat": lam_hat, "shift": shift}

    def _sgd(self, name: str, v: torch.Tensor):
        h = self.h
        theta = self.params[name]
        d = v + h.weight_decay * theta
        self.buf[name] = h.momentum * self.buf[name] + d
        if h.nesterov:
            d = d + h.momentum * self.buf[name]
        else:
            d = self.buf[name]
        self.params[name] = theta - h.lr * d

    def apply_update(self, grads: Dict[str, torch.Tensor]):
        for L in self.layers:
            gw = torch.as_tensor(grads[L.weight], dtype=DT).reshape(L.fan_in, L.q)
            if L.bias:
                gb = torch.as_tensor(grads[L.bias_param], dtype=DT).reshape(1, L.q)
                gp = torch.cat([gw, gb], dim=0)              # G' (p x q), bias row last
            else:
                gp = gw
            v = self.state[L.name].P @ gp                    # V' = P G'
            self._sgd(L.weight, v[:L.fan_in].reshape(L.weight_shape()))
            if L.bias:
                self._sgd(L.bias_param, v[L.fan_in].reshape(L.q))
        for name in self.plain:
            g = torch.as_tensor(grads[name], dtype=DT).reshape(self.params[name].shape)
            self._sgd(name, g)

    def step(self, t: int, grads: Dict[str, torch.Tensor],
             activations: Optional[Dict[str, torch.Tensor]] = None,
             sketches: Optional[Dict[str, object]] = None):
        """One optimizer step: statistics (t % tcov == 0) -> inverse (t % tinv == 0) -> update."""
        if t % self.h.tcov == 0:
            if activations is None:
                raise ValueError(f"step {t} is a statistics step: activations required")
            for L in self.layers:
                sk = None if sketches is None else sketches.get(L.name)
                self.update_statistics(L, activations[L.name], sk)
        if t % self.h.tinv == 0:
            for L in self.layers:
                self.update_inverse(L)
        self.apply_update(grads)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def replay_fixture(path: str, verbose: bool = True) -> float:
    with open(path) as f:
        fx = json.load(f)
    hyper = Hyper.from_json(fx["hyper"])
    layers = [LayerSpec.from_json(d) for d in fx["layers"]]
    shapes = fx["shapes"]
    params = {k: torch.tensor(v, dtype=DT).reshape(shapes[k]) for k, v in fx["init"].items()}
    opt = NysActReference(layers, fx["plain"], hyper, params)
    worst = 0.0
    for rec in fx["trace"]:
        t = rec["t"]
        acts = None
        sk = None
        if "activations" in rec:
            acts = {k: torch.tensor(a["data"], dtype=DT).reshape(a["shape"])
                    for k, a in rec["activations"].items()}
            sk = {}
            for k, s in rec.get("sketches", {}).items():
                sk[k] = torch.tensor(s["indices"]) if "indices" in s else torch.tensor(s["matrix"], dtype=DT)
        grads = {k: torch.tensor(v, dtype=DT).reshape(shapes[k]) for k, v in rec["grads"].items()}
        opt.step(t, grads, acts, sk)
        if "params" in rec:
            for k, v in rec["params"].items():
                ref = torch.tensor(v, dtype=DT)
                got = opt.params[k].reshape(-1)
                err = ((got - ref).abs() / (1e-8 + ref.abs().max())).max().item()
                worst = max(worst, err)
    if verbose:
        print(f"{path}: max relative param difference {worst:.3e}")
    return worst


def selftest() -> None:
    torch.manual_seed(0)
    # padding arithmetic (TF semantics)
    assert tf_padding_1d(9, 3, 2, 1, "same") == (5, 1, 1)
    assert tf_padding_1d(10, 3, 2, 1, "same") == (5, 0, 1)
    assert tf_padding_1d(8, 3, 2, 1, "valid") == (3, 0, 0)
    assert tf_padding_1d(5, 3, 1, 2, "same") == (5, 2, 2)
    layer = LayerSpec("c", "conv2d", "c/k", "c/b", kernel_size=(3, 2), in_channels=3,
                      out_channels=4, strides=(2, 1), padding="same", dilation=(1, 2))
    x = torch.randn(2, 7, 6, 3, dtype=DT)
    assert torch.equal(patch_matrix(x, layer), patch_matrix_naive(x, layer))
    # conv forward vs torch conv2d
    params = {"c/k": torch.randn(3, 2, 3, 4, dtype=DT), "c/b": torch.randn(4, dtype=DT)}
    y = layer_forward(layer, x, params)
    oh, ow, pt, pb, pl, pr = conv_geometry(x.shape, layer)
    y2 = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (pl, pr, pt, pb)), params["c/k"].permute(3, 2, 0, 1),
                  params["c/b"], stride=layer.strides, dilation=layer.dilation).permute(0, 2, 3, 1)
    assert torch.allclose(y, y2, atol=1e-12), (y - y2).abs().max()
    # Nystrom preconditioner: symmetric, SPD, eigenvalues in (0, 1/rho]
    X = torch.randn(50, 12, dtype=DT)
    c = X.T @ X / 50
    s = torch.randn(12, 4, dtype=DT) / math.sqrt(12)
    u, lam, shift = nystrom_factors(c @ s, s, "gaussian", 1.0)
    P = preconditioner_from_factors(u, lam, 1.0)
    assert torch.allclose(P, P.T, atol=1e-12)
    ev = torch.linalg.eigvalsh(P)
    assert ev.min() > 0 and ev.max() <= 1.0 + 1e-12
    print("selftest ok")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="replay fixture(s) and compare the recorded params")
    c.add_argument("fixtures", nargs="+")
    c.add_argument("--tol", type=float, default=1e-10)
    sub.add_parser("selftest")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "selftest":
        selftest()
        return 0
    bad = 0
    for p in args.fixtures:
        if replay_fixture(p) > args.tol:
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
