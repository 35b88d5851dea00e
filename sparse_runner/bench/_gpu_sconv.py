"""gpu_check stage sconv: the direct sparse convolutions (Triton) on the GPU.

Correctness: ``sparse_run::sconv_*`` on CUDA (the Triton kernels) against the float64
reference on the CPU (dense conv of the scattered weight) for strides 1/2, kernels 1x1, 3x3,
5x3, padding 0..2, odd sizes, an all-padded output channel, batch 0, fp32/bf16/fp64, one
Sparse Wide ResNet-18 layer, and ``sconv2d``'s autograd. Timing: every distinct sparse conv
shape of the Sparse Wide ResNet-18 at s=0.9 (CIFAR, batch 64), forward and both gradients,
ours against cuDNN's dense kernels (and the masked forward, ``conv2d(x, W * M)``), CUDA-event
medians over rotated inputs (as the kernels stage).
"""
from __future__ import annotations

import argparse
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad

from ._gpu_stage import compare
from ._gpu_timing import _l2, cuda_time, ratio, rotations
from ._gpu_stage import Check

# (batch, C, O, H, W, kernel, stride, padding)
SMALL = [(2, 5, 6, 7, 5, (1, 1), (1, 1), (0, 0)), (3, 4, 7, 9, 7, (1, 1), (2, 2), (0, 0)),
         (2, 4, 9, 7, 9, (3, 3), (1, 1), (1, 1)), (33, 17, 40, 9, 7, (3, 3), (2, 2), (1, 1)),
         (5, 3, 37, 8, 7, (5, 3), (1, 1), (2, 1)), (2, 3, 6, 11, 9, (5, 3), (2, 2), (0, 2)),
         (0, 3, 4, 5, 5, (3, 3), (1, 1), (2, 2))]
# the distinct sparse convs of the Sparse Wide ResNet-18 at s=0.9 on CIFAR: (C, O, H, k, s)
WIDE = [(202, 202, 32, 3, 1), (202, 404, 32, 3, 2), (404, 404, 16, 3, 1), (202, 404, 32, 1, 2),
        (404, 808, 16, 3, 2), (808, 808, 8, 3, 1), (404, 808, 16, 1, 2), (808, 1616, 8, 3, 2),
        (1616, 1616, 4, 3, 1), (808, 1616, 8, 1, 2)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


def _wide_case(c: int, o: int, h: int, k: int, s: int, batch: int = 64) -> tuple:
    return (batch, c, o, h, h, (k, k), (s, s), (k // 2, k // 2))


def problem(case: tuple, dtype: torch.dtype, density: float, device: str, seed: int = 0):
    """(index, values, x, grad_out) on ``device``; output channel 0 has no nonzeros."""
    from ..kernels.sconv_ops import _out_hw, ell_from_mask

    nb, c, o, h, w, kernel, stride, padding = case
    g = torch.Generator(device=device).manual_seed(seed)  # on the device: wide layers are big
    mask = torch.rand(o, c, *kernel, generator=g, device=device) < density
    mask[0] = False
    idx = ell_from_mask(mask)
    ho, wo = _out_hw(h, w, kernel, stride, padding)
    r = lambda *s: torch.randn(*s, generator=g, device=device).to(dtype)  # noqa: E731
    return idx, r(*idx.shape), r(nb, c, h, w), r(nb, o, ho, wo)


def _label(case: tuple) -> str:
    nb, c, o, h, w, k, s, p = case
    return f"b{nb} {c}->{o} {h}x{w} k{k[0]}x{k[1]} s{s[0]} p{p[0]}{p[1]}"


def op_checks(case: tuple, dname: str, density: float = 0.35, device: str = "cuda",
              stage: str = "sconv") -> Iterator[Check]:
    """Forward, dx and dW of ``case`` on ``device`` against the float64 reference (CPU)."""
    from ..kernels import sconv_ops as so

    dtype = DTYPES[dname]
    idx, v, x, gy = problem(case, dtype, density, device)
    geom = [list(g) for g in case[5:]]
    ops = torch.ops.sparse_run
    d = lambda t: t.double().cpu()  # noqa: E731
    ci = idx.cpu()
    taps = case[5][0] * case[5][1]
    runs = {
        "fwd": (ops.sconv_forward(x, v, idx, *geom), so._ref_forward(d(x), d(v), ci, *geom),
                idx.shape[1]),
        "dx": (ops.sconv_backward_input(gy, v, idx, list(x.shape[1:]), *geom),
               so._ref_backward_input(d(gy), d(v), ci, list(x.shape[1:]), *geom),
               case[2] * taps),
        "dW": (ops.sconv_backward_weight(gy, x, idx, *geom),
               so._ref_backward_weight(d(gy), d(x), ci, *geom), max(1, gy[:, 0].numel())),
    }
    for name, (got, want, terms) in runs.items():
        ok, err = compare(got, want, dtype, terms)
        pad_ok = name != "dW" or bool((got[idx < 0] == 0).all())
        yield Check(stage, f"sconv {name} {dname} {_label(case)}",
                    "ok" if ok and pad_ok else "fail",
                    err, detail="max abs error vs float64" + ("" if pad_ok else
                                                              "; padded slot got a gradient"))


def autograd_check() -> Check:
    """sconv2d forward + backward on CUDA (float64) equals dense F.conv2d's on the CPU."""
    from ..kernels import sconv2d
    from ..kernels.sconv_ops import dense_conv_weight

    case = (9, 6, 11, 10, 9, (3, 3), (2, 2), (1, 1))
    idx, v, x, _ = problem(case, torch.float64, 0.4, "cpu", seed=3)
    b = torch.randn(11, dtype=torch.float64)
    xs, vs = x.clone().requires_grad_(), v.clone().requires_grad_()
    dense = F.conv2d(xs, dense_conv_weight(vs, idx, 6, (3, 3)), b, stride=2, padding=1)
    want = torch.autograd.grad(dense.square().sum(), (xs, vs))
    xg, vg = (t.cuda().requires_grad_() for t in (x, v))
    y = sconv2d(xg, vg, idx.cuda(), b.cuda(), (3, 3), (2, 2), (1, 1))
    got = torch.autograd.grad(y.square().sum(), (xg, vg))
    oks = [compare(a, w_, torch.float64, 100)[0] for a, w_ in
           ((y, dense.detach()), *zip(got, want))]
    return Check("sconv", "sconv2d autograd fp64", "ok" if all(oks) else "fail",
                 detail="output, dx, dvalues vs dense float64")


def make_sets(case: tuple, dtype: torch.dtype, density: float, device: str = "cuda",
              l2_bytes: int | None = None) -> list[tuple]:
    """Rotated (x, grad, dense W, mask, values, index) sets (no two calls share L2)."""
    from ..kernels.sconv_ops import dense_conv_weight

    idx, v, x, gy = problem(case, dtype, density, device)
    elt = torch.finfo(dtype).bits // 8
    per_set = elt * (x.numel() + gy.numel() + 2 * case[1] * case[2] * case[5][0] * case[5][1])
    out = []
    for _ in range(rotations(per_set, _l2() if l2_bytes is None else l2_bytes, cap=8)):
        w = dense_conv_weight(v, idx, case[1], case[5])
        out.append((torch.randn_like(x), torch.randn_like(gy), w, (w != 0).to(dtype),
                    v.clone(), idx))
    return out


def calls(case: tuple) -> dict[str, Callable[..., object]]:
    """The timed calls, each taking one set of :func:`make_sets`."""
    _, _, _, _, _, kernel, stride, padding = case
    geom = (list(kernel), list(stride), list(padding))
    ops = torch.ops.sparse_run
    conv = dict(stride=stride, padding=padding)
    return {
        "dense fwd": lambda x, g, w, m, v, i: F.conv2d(x, w, **conv),
        "dense dx": lambda x, g, w, m, v, i: nn_grad.conv2d_input(x.shape, w, g, **conv),
        "dense dW": lambda x, g, w, m, v, i: nn_grad.conv2d_weight(x, w.shape, g, **conv),
        "masked fwd": lambda x, g, w, m, v, i: F.conv2d(x, w * m, **conv),
        "ours fwd": lambda x, g, w, m, v, i: ops.sconv_forward(x, v, i, *geom),
        "ours dx": lambda x, g, w, m, v, i: ops.sconv_backward_input(g, v, i, list(x.shape[1:]),
                                                                     *geom),
        "ours dW": lambda x, g, w, m, v, i: ops.sconv_backward_weight(g, x, i, *geom),
    }


def timings(dname: str, density: float = 0.1) -> Iterator[Check]:
    """Each Sparse Wide layer: ours and masked vs cuDNN, forward and both gradients."""
    dtype = DTYPES[dname]
    for layer in WIDE:
        case = _wide_case(*layer)
        sets = make_sets(case, dtype, density)
        ms = {name: cuda_time(fn, sets, reps=15) for name, fn in calls(case).items()}
        total = {k: sum(ms[f"{k} {p}"] for p in ("fwd", "dx", "dW")) for k in ("dense", "ours")}
        for name in ("masked fwd", "ours fwd", "ours dx", "ours dW"):
            dense = ms["dense " + name.split()[1]]
            yield Check("sconv", f"{name} {dname} {_label(case)}", "info", round(ms[name], 4),
                        " ms", f"{ratio(ms[name], dense)}x cuDNN ({dense:.4f} ms)",
                        {"ms": ms[name], "dense_ms": dense, "dtype": dname, "layer": layer})
        yield Check("sconv", f"ours fwd+bwd {dname} {_label(case)}", "info",
                    ratio(total["ours"], total["dense"]), "x cuDNN",
                    f"{total['ours']:.3f} ms vs {total['dense']:.3f} ms", {"ms": total})
        del sets


def sconv(args: argparse.Namespace) -> Iterator[Check]:
    """Correctness (small shapes under --small), then the Sparse Wide layer timings."""
    from ..kernels import build as kbuild

    status = kbuild.ensure("cuda")
    names = ("sconv_forward", "sconv_backward_input", "sconv_backward_weight")
    installed = all(torch._C._dispatch_has_kernel_for_dispatch_key(f"sparse_run::{n}", "CUDA")
                    for n in names)  # else the checks below would test the dense reference
    yield Check("sconv", "triton kernels registered", "ok" if installed else "fail", status)
    for dname in ("fp32", "bf16") if args.small else DTYPES:
        for case in SMALL:
            yield from op_checks(case, dname)
    if args.small:
        return
    yield from op_checks(_wide_case(*WIDE[1]), "fp32", density=0.1)
    yield autograd_check()
    for dname in ("fp32", "bf16"):
        yield from timings(dname)
