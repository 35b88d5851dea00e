"""``sparse-run-bench spectral``: the Ramanujan metrics' cost against one training epoch.

Builds a model exactly as ``sparse-run`` would (default: Sparse Wide s=0.9 CIFAR ResNet-18,
100 classes, static random masks at the Iso-FLOP sparsity), times the whole set of spectral
metrics (:mod:`sparse_runner.sparsity.spectral`) and a few training steps on random 32x32
batches, and extrapolates the steps to one CIFAR epoch (50,000 images). Both run on the same
threads; with a small ``--batch`` the per-image step time over-estimates the epoch (small
batches use the cores less well), which the result states.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch


def build(overrides: list[str]) -> Any:
    """The :class:`~sparse_runner.plan.RunPlan` (model, set-up masks) for the given overrides,
    built exactly as ``sparse-run`` builds it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ..methods.auto import resolve_auto
    from ..plan import RunPlan, build_plan, requested_sparsity

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    plan = RunPlan(cfg=cfg, s=requested_sparsity(cfg))
    plan.cfg = resolve_auto(cfg, plan.s)
    build_plan(plan)
    plan.method.setup(plan.model, plan.context())
    return plan


def time_steps(model: torch.nn.Module, classes: int, batch: int, steps: int) -> float:
    """Seconds per training step (forward, backward, SGD step) after one warm-up step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, classes, (batch,))
    model.train()
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return min(times[1:])


def main(argv: list[str] | None = None) -> int:
    from ..sparsity import spectral

    p = argparse.ArgumentParser(prog="sparse-run-bench spectral", description=__doc__.split("\n\n")[0])
    p.add_argument("--ift", default="wide")
    p.add_argument("--s", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=16, help="images per timed training step")
    p.add_argument("--steps", type=int, default=2, help="timed training steps (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the result JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [f"ift={args.ift}", f"s={args.s}", "method=static", "dataset=synthetic",
                 "dataset.num_classes=100", "dataset.num_samples=64", "dataset.num_test_samples=16",
                 "run.device=cpu"]
    r = build(overrides)
    masks = r.method.mask_state()
    weights = dict(r.model.named_parameters())
    t = time.perf_counter()
    metrics = spectral.model_metrics(weights, masks)
    spectral_s = time.perf_counter() - t
    step_s = time_steps(r.model, 100, args.batch, args.steps)
    epoch_s = step_s / args.batch * 50_000
    result = {
        "benchmark": "spectral", "command": "sparse-run-bench spectral " + " ".join(argv or []),
        "model": f"resnet18 ift={args.ift} s={args.s} (effective {r.s_eff:.4f}), CIFAR 32x32, 100 classes",
        "layers": len(masks), "nonzeros": int(sum(int(m.count_nonzero()) for m in masks.values())),
        "threads": args.threads, "spectral_s": spectral_s,
        "train_step_s": step_s, "batch": args.batch,
        "epoch_s_estimate": epoch_s, "spectral_fraction_of_epoch": spectral_s / epoch_s,
        "mean": {k: (None if not math.isfinite(v) else v) for k, v in metrics["mean"].items()},
        "note": "machine shared with other jobs (timings noisy); the epoch is extrapolated per "
                f"image from batch-{args.batch} steps, which over-estimates it",
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0
