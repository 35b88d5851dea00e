"""GPT training step: dense vs Sparse Wide, masked vs condensed backend, RigL and SET.

``sparse-run-bench gpt [--s 0.5 0.75] [--methods rigl set] [--embd 128 256] [--out FILE]``.
One process, ``--threads`` threads (default 2), the Shakespeare GPT (``model=gpt
dataset=shakespeare``: 4 layers, ``--embd`` 128 is the default model, 256 the 4-layer x 256
one), one real training batch of the task: for every embedding width, the dense GPT's
training step (TrainStep: forward, backward, masking, AdamW) against the Sparse Wide GPT
(``ift=wide``) at each ``--s`` with each method, ``sparse.backend=masked`` and ``condensed``;
the steps of one row alternate (dense / masked / condensed) so load changes hit all alike;
medians of ``--repeats``. No mask update falls inside the timed steps (the first is at
``delta_t``). The load average before and after is recorded (the machine may be shared).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any, Callable

import torch

from ..utils.environment import device_name, versions
from ..optim import build_optimizer
from ..plan import RunPlan, build_plan, requested_sparsity
from ..sparsity.backend import apply_backend
from ..step import TrainStep
from ..tasks.language_model import token_loss
from .conv import _median_ms, _write

OPT = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1, "eps": 1e-8}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sparse-run-bench gpt", description=__doc__.split("\n\n")[0])
    p.add_argument("--s", type=float, nargs="+", default=[0.5, 0.75])
    p.add_argument("--methods", nargs="+", choices=["rigl", "set"], default=["rigl", "set"])
    p.add_argument("--embd", type=int, nargs="+", default=[128, 256],
                   help="model.n_embd of the 4-layer GPT (128: the default Shakespeare model)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=12, help="windows per step (the preset's 12)")
    p.add_argument("--block", type=int, default=64, help="window length (model.block_size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def _plan(args: argparse.Namespace, embd: int, s: float, method: str, backend: str) -> RunPlan:
    """The run ``sparse-run model=gpt dataset=shakespeare ift=wide s=<s> method=<m>`` trains."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    overrides = ["model=gpt", "dataset=shakespeare", f"model.n_layer={args.layers}",
                 f"model.n_embd={embd}", f"model.block_size={args.block}",
                 f"ift={'none' if s == 0 else 'wide'}", f"s={s}",
                 f"method={'dense' if s == 0 else method}", f"trainer.batch_size={args.batch}",
                 f"sparse.backend={backend}", "trainer.max_steps=1000"]
    with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    plan = build_plan(RunPlan(cfg=cfg, s=requested_sparsity(cfg)))
    plan.method.setup(plan.model, plan.context())
    return plan


def _stepper(plan: RunPlan, batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], None]:
    optimizer = build_optimizer(OPT, plan.model)
    plan.method.attach_optimizer(optimizer)
    apply_backend(str(plan.cfg.sparse.backend), plan.model, plan.method, batch[0])
    train_step = TrainStep(plan.model, plan.method, optimizer, token_loss)
    state = {"step": 1}   # the first mask update is at step delta_t: none in the timed steps

    def one() -> None:
        train_step(state["step"], iter([batch]))
        state["step"] += 1
    return one


def bench_width(args: argparse.Namespace, embd: int,
                save: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Rows of one embedding width: dense, and each (s, method) masked and condensed."""
    torch.manual_seed(0)
    dense_plan = _plan(args, embd, 0.0, "dense", "masked")
    batch = next(iter(dense_plan.data.train.batches(0)))
    dense = _stepper(dense_plan, batch)
    rows: list[dict[str, Any]] = []
    for s in args.s:
        for method in args.methods:
            steps = {"dense": dense,
                     "masked": _stepper(_plan(args, embd, s, method, "masked"), batch),
                     "condensed": _stepper(_plan(args, embd, s, method, "condensed"), batch)}
            t = _median_ms(steps, args.repeats)
            rows.append({"n_embd": embd, "s": s, "method": method, "ms": t,
                         "masked_x_dense": t["masked"] / t["dense"],
                         "condensed_x_dense": t["condensed"] / t["dense"],
                         "condensed_x_masked": t["condensed"] / t["masked"]})
            print(f"  n_embd={embd} s={s} {method}: dense {t['dense']:.0f} ms, wide masked "
                  f"{rows[-1]['masked_x_dense']:.2f}x, condensed "
                  f"{rows[-1]['condensed_x_dense']:.2f}x dense", flush=True)
            save({"rows": rows})
            del steps
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "benchmark": "gpt", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
        "load_avg_before": list(os.getloadavg()), "versions": versions(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "steps": []}
    for embd in args.embd:
        done = list(out["steps"])
        out["steps"] = done + bench_width(
            args, embd, lambda part: _write({**out, "steps": done + part["rows"]}, args.out))
    _write(out, args.out)
    out["load_avg_after"] = list(os.getloadavg())
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(f"load average {os.getloadavg()[0]:.2f} (a shared machine inflates every time)")
    run(args)
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
