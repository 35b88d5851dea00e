"""``sparse-run-bench kernels``: constant fan-in kernels vs dense, masked and torch.sparse layers.

Two benchmarks, every case timed side by side in one process (ratios are what to compare;
absolute times on a shared VM drift):

* ``train``: one training step of one linear layer, the forum's shape by default (batch 256,
  2048 -> 2048): forward, backward to the input *and* the weight (a layer inside a network),
  SGD update. Implementations: dense ``nn.Linear`` fp32 and bf16, masked dense (``W * mask``
  in the forward), torch.sparse CSR and COO weights (autograd), ``SparseLinear`` fp32, bf16.
* ``infer``: forward under ``torch.inference_mode`` of SRigL's benchmark layer (3072 -> 768)
  at batch 1 and 256: dense fp32 / bf16, CSR, ``SparseLinear`` fp32 / bf16.

``ratio_vs_dense_fp32`` = median time / median time of dense fp32 for the same bench and
batch (below 1 is faster). ``--out FILE`` writes the JSON recorded in benchmarks/results/.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

from ..utils.environment import device_name, versions

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _shape(text: str, n: int) -> tuple[int, ...]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != n or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected {n} positive integers joined by 'x', "
                                         f"got {text!r}")
    return parts


def _floats(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v]
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must lie in [0, 1), got {text!r}")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sparse-run-bench kernels", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="s=0.9 only and shorter timing (about a minute on 2 CPU cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--sparsities", type=_floats, default=[0.5, 0.8, 0.9, 0.95, 0.99])
    p.add_argument("--dtypes", default="fp32,bf16", help="dtypes of the dense and ours rows")
    p.add_argument("--benches", default="train,infer", help="train, infer or both")
    p.add_argument("--train-shape", type=lambda t: _shape(t, 3), default=(256, 2048, 2048),
                   metavar="BxINxOUT")
    p.add_argument("--infer-shape", type=lambda t: _shape(t, 2), default=(3072, 768),
                   metavar="INxOUT")
    p.add_argument("--infer-batches", default="1,256")
    p.add_argument("--no-sparse", action="store_true", help="skip torch.sparse CSR/COO rows")
    p.add_argument("--min-time", type=float, default=None, help="seconds per case over all "
                   "rounds (default 3, quick 0.6)")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all cases (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.sparsities = [0.9]
    args.min_time = args.min_time or (0.6 if args.quick else 3.0)
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.benches = [b for b in args.benches.split(",") if b]
    args.infer_batches = [int(b) for b in args.infer_batches.split(",") if b]
    unknown = set(args.dtypes) - set(_DTYPES) | set(args.benches) - {"train", "infer"}
    if unknown:
        p.error(f"unknown dtype/bench {sorted(unknown)}")
    return args


# ------------------------------------------------------------------ layers under test
def _random_layer(n_in: int, n_out: int, s: float, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense weight with constant fan-in mask (what every implementation computes), bias."""
    from sparse_runner.kernels import SparseLinear

    layer = SparseLinear(n_in, n_out, s, generator=torch.Generator().manual_seed(0))
    return layer.to_dense().detach().to(device), layer.dense_mask().to(device), \
        layer.bias.detach().to(device)


class _Masked(nn.Module):
    """The forum's masked layer: a dense weight multiplied by its mask in every forward."""

    def __init__(self, w: torch.Tensor, mask: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(w.clone()), nn.Parameter(b.clone())
        self.register_buffer("mask", mask.to(w.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class _SparseParam(nn.Module):
    """torch.sparse weight (CSR or COO) as a trainable parameter, autograd through sparse.mm."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, layout: str) -> None:
        super().__init__()
        ws = w.to_sparse_csr() if layout == "csr" else w.to_sparse().coalesce()
        self.weight, self.bias = nn.Parameter(ws), nn.Parameter(b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.weight, x.t()).t() + self.bias


def _dense(w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> nn.Module:
    lin = nn.Linear(w.shape[1], w.shape[0], device=w.device, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def _layers(w: torch.Tensor, mask: torch.Tensor, b: torch.Tensor,
            args: argparse.Namespace, bench: str) -> dict[str, tuple[str, Callable[[], nn.Module]]]:
    """impl name -> (dtype label, factory); dense rows only once (s-independent)."""
    from sparse_runner.export import CSRLinear
    from sparse_runner.kernels import SparseLinear

    out: dict[str, tuple[str, Callable[[], nn.Module]]] = {}
    for d in args.dtypes:
        out[f"dense_{d}"] = (d, lambda d=d: _dense(w, b, _DTYPES[d]))
    if bench == "train":
        out["masked_fp32"] = ("fp32", lambda: _Masked(w, mask, b))
    if not args.no_sparse:
        if bench == "train":
            for layout in ("csr", "coo"):
                out[f"torch_{layout}_fp32"] = ("fp32", lambda lo=layout: _SparseParam(w, b, lo))
        else:
            out["torch_csr_fp32"] = ("fp32", lambda: CSRLinear(w, b))
    for d in args.dtypes:
        out[f"cfi_{d}"] = (d, lambda d=d: SparseLinear.from_dense(
            w.to(_DTYPES[d]), b.to(_DTYPES[d]), mask=mask))
    return out


# ------------------------------------------------------------------ timing
def _median_ms(fn: Callable[[], object], min_time: float) -> float:
    # Timer runs on 1 thread unless told: time every case on the threads torch uses.
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median * 1e3


def _train_step(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(layer.parameters(), lr=1e-4)

    def step() -> None:
        layer(x).backward(g)
        opt.step()
        opt.zero_grad(set_to_none=True)
        x.grad = None

    return step


def _infer(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            layer(x)

    return run


def _group(bench: str, n_in: int, n_out: int, batch: int, args: argparse.Namespace,
           device: torch.device) -> list[tuple[dict, Callable[[], None]]]:
    """Every (impl, s) case of one bench and batch, ready to time (dense ones once)."""
    gen = torch.Generator().manual_seed(batch)
    x32 = torch.randn(batch, n_in, generator=gen).to(device)
    g32 = torch.randn(batch, n_out, generator=gen).to(device)
    out = []
    for s in args.sparsities:
        w, mask, b = _random_layer(n_in, n_out, s, device)
        for impl, (dlabel, make) in _layers(w, mask, b, args, bench).items():
            if impl.startswith("dense") and s != args.sparsities[0]:
                continue
            x = x32.to(dtype=_DTYPES[dlabel], copy=True)
            layer = make().to(device)
            if bench == "train":
                fn = _train_step(layer, x.requires_grad_(), g32.to(_DTYPES[dlabel]))
            else:
                fn = _infer(layer, x)
            fn()  # warm-up: kernel build, caches, packing
            out.append(({"bench": bench, "impl": impl, "s": 0.0 if impl.startswith("dense") else s,
                         "batch": batch, "dtype": dlabel, "shape": [n_in, n_out]}, fn))
    return out


def run(args: argparse.Namespace) -> dict:
    """Time all cases; within one bench and batch, cases take turns (``--repeats`` rounds) so
    that load changes on a shared machine hit them alike, and report the median round."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    from sparse_runner.kernels import build

    build.ensure(device.type)
    plans = []
    if "train" in args.benches:
        bsz, n_in, n_out = args.train_shape
        plans.append(("train", n_in, n_out, [bsz]))
    if "infer" in args.benches:
        n_in, n_out = args.infer_shape
        plans.append(("infer", n_in, n_out, args.infer_batches))
    cases: list[dict] = []
    for bench, n_in, n_out, batches in plans:
        for batch in batches:
            group = _group(bench, n_in, n_out, batch, args, device)
            runs: list[list[float]] = [[] for _ in group]
            for _ in range(args.repeats):
                for i, (_, fn) in enumerate(group):
                    runs[i].append(_median_ms(fn, args.min_time / args.repeats))
            medians = [statistics.median(r) for r in runs]
            dense = next((m for (c, _), m in zip(group, medians) if c["impl"] == "dense_fp32"),
                         None)
            for (case, _), ms, r in zip(group, medians, runs):
                case.update(median_ms=round(ms, 4), runs_ms=[round(t, 4) for t in r],
                            ratio_vs_dense_fp32=round(ms / dense, 4) if dense else None)
                cases.append(case)
                _print_case(case)
    return {"device": device_name(device), "versions": versions(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads(), "kernels": build.status(),
            "ratio_definition": "median_ms / median_ms of dense_fp32, same bench and batch",
            "train_step": "forward + backward (input and weight) + SGD step; x.requires_grad",
            "cases": cases}


def _print_case(c: dict) -> None:
    ratio = c["ratio_vs_dense_fp32"]
    extra = f"ratio {ratio:7.3f}  speedup {1 / ratio:6.2f}x" if ratio else ""
    print(f"{c['bench']:5s} b={c['batch']:<5d} s={c['s']:<5} {c['impl']:16s} "
          f"{c['median_ms']:10.3f} ms {extra}", flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("sparse-run-bench kernels: error: --device cuda but no CUDA device is available",
              file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*beta.*")
        result = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
