#!/usr/bin/env python3
"""Generate the NysAct reference fixtures (test/fixtures/<name>.json).

Each fixture trains a real small network (float64 torch, fixed seeds) for 60 steps with the
independent reference optimizer of scripts/reference_nysact.py (SPEC.md section 1). Everything
the optimizer under test receives (initial params, layer inputs, gradients, gaussian sketches) is
rounded to float32-representable values, and the reference uses exactly those rounded values.

    python3 scripts/gen_fixtures.py --out test/fixtures [--only NAME ...]

Output is deterministic (single-threaded torch, seeded generators): running twice gives the same
bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_nysact as ref  # noqa: E402
from reference_nysact import DT, Hyper, LayerSpec, NysActReference  # noqa: E402

STEPS = 60
PARAM_STEPS = {0, 1, 2, 3, 4, 9, 19, 29, 39, 49, 59}
BASE = dict(lr=0.05, momentum=0.9, stat_decay=0.95, damping=1.0, weight_decay=5e-4, tcov=5, tinv=10)


def f32(x: torch.Tensor) -> torch.Tensor:
    """Round to float32-representable values, kept in float64."""
    return x.detach().float().double()


def flat(x: torch.Tensor) -> List[float]:
    return [float(v) for v in x.detach().reshape(-1).tolist()]


def dense(name, i, o, bias=True):
    return LayerSpec(name, "dense", f"{name}/kernel", f"{name}/bias" if bias else None,
                     in_features=i, out_features=o)


def conv(name, k, ci, co, stride=1, padding="same", dilation=1, bias=True):
    return LayerSpec(name, "conv2d", f"{name}/kernel", f"{name}/bias" if bias else None,
                     kernel_size=(k, k), in_channels=ci, out_channels=co,
                     strides=(stride, stride), padding=padding, dilation=(dilation, dilation))


# --------------------------------------------------------------------------------------------
# Networks: forward(params, x) -> (outputs, {layer: layer input})
# --------------------------------------------------------------------------------------------

class MLP:
    description_net = "3-layer ReLU MLP 8-16-12-4 with biases and a plain output gain vector, MSE regression, batch 16"

    def __init__(self, gen):
        self.layers = [dense("fc1", 8, 16), dense("fc2", 16, 12), dense("fc3", 12, 4)]
        self.plain = ["gain"]
        self.shapes = {"gain": [4]}
        n_data = 64
        self.batch = 16
        # offset + scale so the activation covariances have eigenvalues well above the damping
        self.x = f32(1.0 + 2.0 * torch.randn(n_data, 8, generator=gen, dtype=DT))
        teacher = torch.randn(8, 4, generator=gen, dtype=DT) / 8 ** 0.5
        self.y = torch.sin(0.5 * self.x @ teacher) + 0.1 * torch.randn(n_data, 4, generator=gen, dtype=DT)

    def init_plain(self, gen):
        return {"gain": f32(1.0 + 0.1 * torch.randn(4, generator=gen, dtype=DT))}

    def batch_at(self, t):
        i = (t % (self.x.shape[0] // self.batch)) * self.batch
        return self.x[i:i + self.batch], self.y[i:i + self.batch]

    def forward(self, params, x):
        ins = {}
        h = x
        for j, L in enumerate(self.layers):
            ins[L.name] = h
            h = ref.layer_forward(L, h, params)
            if j < len(self.layers) - 1:
                h = torch.relu(h)
        return h * params["gain"], ins

    def loss(self, out, y):
        return 0.5 * ((out - y) ** 2).sum(dim=1).mean()


class ConvNet:
    def __init__(self, gen, input_shape, convs, dense_out, dense_bias, n_classes_batches=15):
        self.input_shape = list(input_shape)
        n, h, w, c = input_shape
        self.layers = list(convs)
        shape = [n, h, w, c]
        for L in convs:
            oh, ow, *_ = ref.conv_geometry(shape, L)
            shape = [n, oh, ow, L.out_channels]
        self.flat_dim = shape[1] * shape[2] * shape[3]
        self.layers.append(dense("fc", self.flat_dim, dense_out, bias=dense_bias))
        self.plain = []
        self.shapes = {}
        self.batch = n
        self.n_batches = n_classes_batches
        self.x = f32(1.0 + 2.0 * torch.randn(n * self.n_batches, h, w, c, generator=gen, dtype=DT))
        # labels from a random linear teacher on the centred input (learnable)
        teacher = torch.randn(h * w * c, dense_out, generator=gen, dtype=DT)
        self.y = ((self.x - 1.0).reshape(self.x.shape[0], -1) @ teacher).argmax(dim=1)

    def init_plain(self, gen):
        return {}

    def batch_at(self, t):
        i = (t % self.n_batches) * self.batch
        return self.x[i:i + self.batch], self.y[i:i + self.batch]

    def forward(self, params, x):
        ins = {}
        h = x
        for L in self.layers[:-1]:
            ins[L.name] = h
            h = torch.relu(ref.layer_forward(L, h, params))
        h = h.reshape(h.shape[0], -1)                 # NHWC flatten (h, w, c), as tfjs
        L = self.layers[-1]
        ins[L.name] = h
        return ref.layer_forward(L, h, params), ins

    def loss(self, out, y):
        return F.cross_entropy(out, y)


def init_layer_params(layers, gen):
    params = {}
    for L in layers:
        params[L.weight] = f32(torch.randn(*L.weight_shape(), generator=gen, dtype=DT) / L.fan_in ** 0.5)
        if L.bias:
            params[L.bias_param] = f32(0.1 * torch.randn(L.q, generator=gen, dtype=DT))
    return params


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

def cases():
    return [
        dict(name="mlp-gaussian", seed=101, rank=4, sketch="gaussian", nesterov=False, net="mlp",
             description="3-layer ReLU MLP 8-16-12-4 (biases) + plain gain vector, MSE regression, batch 16; "
                         "rank 4 < p for every layer, gaussian sketches."),
        dict(name="mlp-subcolumns-nesterov", seed=202, rank=6, sketch="subcolumns", nesterov=True, net="mlp",
             description="Same MLP as mlp-gaussian; rank 6 < p, subcolumn sketches, Nesterov momentum."),
        dict(name="mlp-full", seed=303, rank=20, sketch="gaussian", nesterov=False, net="mlp",
             description="Same MLP as mlp-gaussian; rank 20 >= p for every layer, so every layer uses the full "
                         "covariance (no sketches)."),
        dict(name="conv-gaussian", seed=404, rank=8, sketch="gaussian", nesterov=False, net="conv-gaussian",
             description="NHWC CNN on [4,8,8,3]: conv3x3 same 3->4, conv3x3 valid stride 2 4->6, conv1x1 same "
                         "6->5 (p=7, full covariance), dense 45->3; relu, cross-entropy; rank 8 gaussian."),
        dict(name="conv-subcolumns", seed=505, rank=5, sketch="subcolumns", nesterov=True, net="conv-subcolumns",
             description="NHWC CNN on [3,10,10,2]: conv3x3 same stride 2 2->4 (TF asymmetric padding 0/1), "
                         "conv3x3 same dilation 2 4->4 no bias, conv1x1 valid 4->3 (p=5, full covariance), "
                         "dense 75->2 no bias; relu, cross-entropy; rank 5 subcolumns, Nesterov."),
    ]


def build_net(kind, gen):
    if kind == "mlp":
        return MLP(gen)
    if kind == "conv-gaussian":
        return ConvNet(gen, [4, 8, 8, 3], [
            conv("conv1", 3, 3, 4, stride=1, padding="same"),
            conv("conv2", 3, 4, 6, stride=2, padding="valid"),
            conv("conv3", 1, 6, 5, stride=1, padding="same"),
        ], dense_out=3, dense_bias=True)
    if kind == "conv-subcolumns":
        # 10x10 input so that 'same' stride 2 with a 3x3 kernel pads asymmetrically (top 0, bottom 1);
        # a 9x9 input would pad 1/1.
        return ConvNet(gen, [3, 10, 10, 2], [
            conv("conv1", 3, 2, 4, stride=2, padding="same"),
            conv("conv2", 3, 4, 4, stride=1, padding="same", dilation=2, bias=False),
            conv("conv3", 1, 4, 3, stride=1, padding="valid"),
        ], dense_out=2, dense_bias=False)
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------
# Self-checks (fail loudly)
# --------------------------------------------------------------------------------------------

def check_patches(layer: LayerSpec, x: torch.Tensor):
    a = ref.patch_matrix(x, layer)
    b = ref.patch_matrix_naive(x, layer)
    if a.shape != b.shape or not torch.equal(a, b):
        raise SystemExit(f"SELF-CHECK FAILED: patch matrix of {layer.name} differs from the naive loop")
    # and the layer forward equals torch's conv2d on the TF-padded input
    oh, ow, pt, pb, pl, pr = ref.conv_geometry(x.shape, layer)
    w = torch.randn(*layer.weight_shape(), dtype=DT)
    y = ref.layer_forward(layer, x, {layer.weight: w, **({layer.bias_param: torch.zeros(layer.q, dtype=DT)} if layer.bias else {})})
    y2 = F.conv2d(F.pad(x.permute(0, 3, 1, 2), (pl, pr, pt, pb)), w.permute(3, 2, 0, 1),
                  stride=tuple(layer.strides), dilation=tuple(layer.dilation)).permute(0, 2, 3, 1)
    if not torch.allclose(y, y2, rtol=1e-12, atol=1e-12):
        raise SystemExit(f"SELF-CHECK FAILED: conv forward of {layer.name} differs from F.conv2d")


def check_preconditioner(opt: NysActReference, name: str):
    for L in opt.layers:
        st = opt.state[L.name]
        P = st.P
        if not torch.allclose(P, P.T, rtol=0, atol=1e-12 * max(1.0, P.abs().max().item())):
            raise SystemExit(f"SELF-CHECK FAILED ({name}): P of {L.name} is not symmetric")
        ev = torch.linalg.eigvalsh(0.5 * (P + P.T))
        rho = opt.h.damping
        if ev.min() <= 0 or ev.max() > 1.0 / rho + 1e-10:
            raise SystemExit(f"SELF-CHECK FAILED ({name}): P of {L.name} eigenvalues outside (0, 1/rho]")
        if not st.full:
            # factored application G/rho + (G U) diag(1/(lam+rho) - 1/rho) U^T equals P G'
            u, lam = st.factors["U"], st.factors["lambdaHat"]
            g = torch.randn(L.p, L.q, dtype=DT)
            v1 = P @ g
            v2 = g / rho + u @ (torch.diag(1.0 / (lam + rho) - 1.0 / rho) @ (u.T @ g))
            if not torch.allclose(v1, v2, rtol=1e-10, atol=1e-12):
                raise SystemExit(f"SELF-CHECK FAILED ({name}): factored P application of {L.name} differs")


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------

def generate(case) -> dict:
    gen = torch.Generator().manual_seed(case["seed"])          # data + init
    sk_gen = torch.Generator().manual_seed(case["seed"] + 7)    # sketches
    net = build_net(case["net"], gen)
    hyper = Hyper(rank=case["rank"], sketch=case["sketch"], nesterov=case["nesterov"], **BASE)
    params = init_layer_params(net.layers, gen)
    params.update(net.init_plain(gen))
    shapes = {}
    for L in net.layers:
        shapes[L.weight] = L.weight_shape()
        if L.bias:
            shapes[L.bias_param] = [L.q]
    shapes.update(net.shapes)
    order = list(shapes.keys())

    opt = NysActReference(net.layers, net.plain, hyper, params)
    trace = []
    losses = []
    checked_patches = False
    lam_nonzero = [0, 0]
    for t in range(STEPS):
        x, y = net.batch_at(t)
        leaves = {k: v.clone().requires_grad_(True) for k, v in opt.params.items()}
        out, ins = net.forward(leaves, x)
        loss = net.loss(out, y)
        losses.append(loss.item())
        grads_t = torch.autograd.grad(loss, [leaves[k] for k in order])
        grads = {k: f32(g) for k, g in zip(order, grads_t)}
        rec = {"t": t}
        acts = sketches = None
        if t % hyper.tcov == 0:
            acts = {L.name: f32(ins[L.name]) for L in net.layers}
            if not checked_patches:
                for L in net.layers:
                    if L.kind == "conv2d":
                        check_patches(L, acts[L.name])
                checked_patches = True
            sketches = {}
            for L in net.layers:
                st = opt.state[L.name]
                if not st.full:
                    sketches[L.name] = ref.draw_sketch(hyper.sketch, L.p, st.r, sk_gen)
            rec["activations"] = {k: {"shape": list(a.shape), "data": flat(a)} for k, a in acts.items()}
            rec["sketches"] = {
                k: ({"indices": [int(i) for i in s.tolist()]} if hyper.sketch == "subcolumns"
                    else {"matrix": flat(s)})
                for k, s in sketches.items()}
        rec["grads"] = {k: flat(grads[k]) for k in order}
        opt.step(t, grads, acts, sketches)
        if t % hyper.tinv == 0:
            check_preconditioner(opt, case["name"])
            fac = {L.name: {"lambdaHat": flat(opt.state[L.name].factors["lambdaHat"]),
                            "shift": float(opt.state[L.name].factors["shift"])}
                   for L in net.layers if not opt.state[L.name].full}
            if fac:
                rec["factors"] = fac
                for v in fac.values():
                    lam_nonzero[0] += sum(1 for x in v["lambdaHat"] if x > 0)
                    lam_nonzero[1] += len(v["lambdaHat"])
        if t in PARAM_STEPS:
            rec["params"] = {k: flat(opt.params[k]) for k in order}
        # keep key order as in the schema
        ordered = {"t": t}
        for key in ("activations", "sketches", "grads", "params", "factors"):
            if key in rec:
                ordered[key] = rec[key]
        trace.append(ordered)
        if not all(torch.isfinite(v).all() for v in opt.params.values()):
            raise SystemExit(f"{case['name']}: parameters diverged at step {t}")

    fixture = {
        "name": case["name"],
        "description": case["description"],
        "hyper": hyper.to_json(),
        "steps": STEPS,
        "layers": [L.to_json() for L in net.layers],
        "plain": list(net.plain),
        "shapes": shapes,
        "init": {k: flat(params[k]) for k in order},
        "trace": trace,
    }
    return fixture, losses, lam_nonzero


def dumps(fx: dict) -> str:
    """Compact JSON, one top-level key / trace record per line (floats as float64 repr)."""
    c = dict(separators=(",", ":"), allow_nan=False)
    lines = ["{"]
    keys = list(fx.keys())
    for i, k in enumerate(keys):
        end = "," if i < len(keys) - 1 else ""
        if k == "trace":
            lines.append(json.dumps(k) + ":[")
            for j, rec in enumerate(fx[k]):
                lines.append(json.dumps(rec, **c) + ("," if j < len(fx[k]) - 1 else ""))
            lines.append("]" + end)
        else:
            lines.append(json.dumps(k) + ":" + json.dumps(fx[k], **c) + end)
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "test", "fixtures"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for case in cases():
        if args.only and case["name"] not in args.only:
            continue
        fx, losses, lnz = generate(case)
        text = dumps(fx)
        json.loads(text)  # valid JSON
        path = os.path.join(args.out, case["name"] + ".json")
        with open(path, "w") as f:
            f.write(text)
        print(f"{path}: {len(text)} bytes, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
              f"lambdaHat > 0: {lnz[0]}/{lnz[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
