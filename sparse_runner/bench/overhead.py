"""Overhead of the sparse machinery: RigL at s=0.9 vs dense training of the same model.

``sparse-run-bench overhead [--method rigl|srigl|set] [--out FILE]``. One process, same model
and batch; single steps alternate (dense, RigL, dense, RigL, ...) so that load changes hit both
alike; medians over all steps. RigL runs with ``delta_t = --steps``, so every ``--steps``-th
RigL step is a mask-update step (``--repeats`` of them are timed). Reported:

* steps/s of dense training and of RigL's ordinary steps (gradient masking: one multi-tensor
  multiply), and their ratio (the per-step overhead);
* the cost of one mask update (dense-gradient copy + drop/grow + set_masks) in dense steps;
* the amortised overhead at ``--delta-t`` (default 100): ((ΔT-1)·t_sparse + t_update_step) /
  (ΔT·t_dense) - 1.

The default model is the ``sparse-run`` default (ResNet-18, width 64, on 1x8x8 digits-shaped
inputs, batch 64); the data are random tensors (speed does not depend on values).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..utils.environment import device_name, versions
from ..flops.tables import trace_layers
from ..models import build_model
from ..optim import build_optimizer
from ..methods import build_method
from ..sparsity import SetupContext, SparsityMethod, select_sparse
from ..step import TrainStep


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sparse-run-bench overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=64, help="model.base_width")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--s", type=float, default=0.9)
    p.add_argument("--method", default="rigl", choices=["rigl", "srigl", "set"],
                   help="the DST method measured against dense (default: rigl)")
    p.add_argument("--steps", type=int, default=10, help="steps per timed block")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--delta-t", type=int, default=100, help="ΔT for the amortised overhead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return p.parse_args(argv)


class Bench:
    """One model + optimizer + method, stepped by the training loop's own step."""

    def __init__(self, model: torch.nn.Module, method: SparsityMethod, ctx: SetupContext,
                 opt_cfg: dict, batch: tuple[torch.Tensor, torch.Tensor], sync: Callable[[], None]):
        self.model, self.method, self.batch, self.sync = model, method, batch, sync
        method.setup(model, ctx)
        self.optimizer = build_optimizer(opt_cfg, model)
        method.attach_optimizer(self.optimizer)
        self.train_step = TrainStep(model, method, self.optimizer, F.cross_entropy)
        self.step = 0

    def one_step(self) -> float:
        t0 = time.perf_counter()
        self.train_step(self.step, iter([self.batch]))
        self.sync()
        self.step += 1
        return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(args.seed)
    model = build_model({"name": args.model, "base_width": args.width}, in_channels=args.channels,
                        num_classes=args.classes, image_size=args.image_size).to(device)
    shape = (args.channels, args.image_size, args.image_size)
    table = trace_layers(model, shape)
    sparse = select_sparse(model, table, ["stem", "head"])
    gen = torch.Generator().manual_seed(args.seed)
    batch = (torch.randn(args.batch, *shape, generator=gen).to(device),
             torch.randint(0, args.classes, (args.batch,), generator=gen).to(device))
    opt = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    total = 10**9  # T_end far away: every block of `steps` ends with an update
    ctx = SetupContext(table=table, sparse=sparse, s=args.s, total_steps=total, seed=args.seed,
                       device=device)
    dense = Bench(copy.deepcopy(model), build_method({"name": "dense"}),
                  SetupContext(table=table, sparse=[], s=0.0, total_steps=total, seed=args.seed),
                  opt, batch, sync)
    dst = Bench(copy.deepcopy(model), build_method(
        {"name": args.method, "delta_t": args.steps, "t_end": 1.0, "alpha": 0.3,
         "anneal": "constant"}), ctx, opt, batch, sync)
    for b in (dense, dst):  # warm-up (allocator, first-touch, one update)
        for _ in range(args.steps):
            b.one_step()
    d_step, r_step, r_update = [], [], []
    for _ in range(args.repeats * args.steps):  # alternate single steps: bursts hit both alike
        d_step.append(dense.one_step())
        update = dst.method.schedule.is_update(dst.step)
        (r_update if update else r_step).append(dst.one_step())
    t_d, t_r, t_u = (statistics.median(v) for v in (d_step, r_step, r_update))
    n = args.delta_t
    return {
        "benchmark": "overhead", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_name(device), "threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sparse_layers": len(sparse), "sparse_weights": sum(table[s].numel for s in sparse),
        "dense_steps_per_s": 1 / t_d, "sparse_steps_per_s": 1 / t_r,
        "step_overhead_pct": 100 * (t_r / t_d - 1),
        "mask_update_s": t_u - t_r, "mask_update_in_steps": (t_u - t_r) / t_d,
        f"amortized_overhead_pct_at_delta_t_{n}": 100 * (((n - 1) * t_r + t_u) / (n * t_d) - 1),
        # Minima: a load-robust cross-check of the medians on a shared machine.
        "step_overhead_pct_min": 100 * (min(r_step) / min(d_step) - 1),
        "mask_update_in_steps_min": (min(r_update) - min(r_step)) / min(d_step),
        "raw_s": {"dense_step": d_step, "sparse_step": r_step, "sparse_update_step": r_update},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    res = run(args)
    n = args.delta_t
    print(f"device {res['device']}, {res['threads']} threads, load {res['load_avg_1m']:.2f}")
    print(f"dense  {res['dense_steps_per_s']:.3f} steps/s")
    print(f"{args.method:<6} {res['sparse_steps_per_s']:.3f} steps/s  (s={args.s}; per-step overhead "
          f"{res['step_overhead_pct']:+.2f}%)")
    print(f"mask update {res['mask_update_s'] * 1e3:.1f} ms = {res['mask_update_in_steps']:.2f} "
          f"dense steps; amortised overhead at ΔT={n}: "
          f"{res[f'amortized_overhead_pct_at_delta_t_{n}']:+.2f}%")
    print(f"(from minima: per-step {res['step_overhead_pct_min']:+.2f}%, update "
          f"{res['mask_update_in_steps_min']:.2f} steps)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
