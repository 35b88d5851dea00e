"""Direct sparse convolutions vs masked dense: per layer and for the whole training step.

``sparse-run-bench conv [--s 0.5 0.75 0.9 0.95] [--layer-s 0.9] [--batch 64] [--out FILE]``.
One process, CIFAR-shaped inputs (synthetic data), ``--threads`` threads (default 2):

* **layers**: every sparse Conv2d of ResNet-18 and of the Sparse Wide ResNet-18 at
  ``--layer-s``, with the masks RigL installs at setup: forward, gradient to the input and
  gradient to the weight, masked dense (``F.conv2d`` and its two gradients) against the
  sparse_run::sconv_* kernels, each timed alternately (medians), with achieved GFLOP/s
  (useful FLOPs: 2 per multiply-add of nonzero weights); ``--cpu-time`` adds single-thread
  CPU-time medians (``cpu_1thread``), ``--models`` picks the models;
* **steps**: one training step (TrainStep: forward, backward, masking, SGD) of dense
  ResNet-18 against the Sparse Wide ResNet-18 (``method=rigl``) with ``sparse.backend=masked``
  and ``condensed``, for each ``--s``; steps alternate dense / masked / condensed so load
  changes hit all alike; medians. No mask update falls inside the timed steps (they cost one
  extra dense pass every ΔT steps: ``flops.dense_grad_extra``).

The load average before and after is recorded (the machine may be shared).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as nn_grad

from ..utils.environment import device_name, versions
from ..optim import build_optimizer
from ..plan import RunPlan, build_plan, requested_sparsity
from ..sparsity.backend import apply_backend
from ..sparsity.backend_choice import layer_inputs
from ..step import TrainStep

MODELS = {"resnet18": "none", "wide": "wide"}  # per-layer part: name -> ift
OPT = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sparse-run-bench conv", description=__doc__.split("\n\n")[0])
    p.add_argument("--s", type=float, nargs="+", default=[0.5, 0.75, 0.9, 0.95])
    p.add_argument("--layer-s", type=float, default=0.9, help="sparsity of the per-layer part")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--width", type=int, default=64, help="model.base_width of ResNet-18")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", choices=["layers", "steps"], default=None)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                   help="models of the per-layer part")
    p.add_argument("--cpu-time", action="store_true",
                   help="per layer also single-thread CPU time (time.process_time, medians): "
                        "robust to other jobs on a shared machine")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def _plan(args: argparse.Namespace, s: float, ift: str, backend: str) -> RunPlan:
    """The run ``sparse-run dataset=synthetic ift=<ift> s=<s> method=rigl`` would train."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    overrides = [f"dataset=synthetic", f"dataset.shape=[3,{args.image_size},{args.image_size}]",
                 f"ift={ift}", f"s={s}", f"method={'dense' if s == 0 else 'rigl'}",
                 f"model.base_width={args.width}", f"trainer.batch_size={args.batch}",
                 f"sparse.backend={backend}", "dataset.num_samples=" + str(4 * args.batch)]
    with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    plan = build_plan(RunPlan(cfg=cfg, s=requested_sparsity(cfg)))
    plan.method.setup(plan.model, plan.context())
    return plan


def _median_ms(fns: dict[str, Callable[[], Any]], repeats: int,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Each fn once to warm up, then ``repeats`` alternating rounds; medians in ms."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = clock()
            fn()
            times[key].append(clock() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _cpu_ms_one_thread(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Single-thread CPU-time medians (other jobs on the machine barely move these)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _median_ms(fns, repeats, time.process_time)
    finally:
        torch.set_num_threads(threads)


def _ratios(t: dict[str, float], useful: float) -> dict[str, Any]:
    dense = t["dense_fwd"] + t["dense_dx"] + t["dense_dw"]
    sparse = t["sparse_fwd"] + t["sparse_dx"] + t["sparse_dw"]
    return {"fwd_bwd_ratio": sparse / dense,
            "gflops_s": {k: useful / (v * 1e-3) / 1e9 for k, v in t.items()}}


def _layer_row(name: str, conv: nn.Conv2d, mask: torch.Tensor, x: torch.Tensor,
               layer: Any, repeats: int, cpu_time: bool = False) -> dict[str, Any]:
    """fwd / dx / dW of masked dense and the kernels; GFLOP/s count useful FLOPs only (2 per
    multiply-add of a nonzero weight), for dense too."""
    ops = torch.ops.sparse_run
    w = layer.store.dense()     # the condensed layer's weight, dense (masked dense timing)
    geo = (list(conv.kernel_size), list(conv.stride), list(conv.padding))
    kw = dict(stride=conv.stride, padding=conv.padding)
    y = F.conv2d(x, w, **kw)
    gy = torch.randn_like(y)
    idx = layer.store.index
    values = layer.store.values.detach()
    fns = {
        "dense_fwd": lambda: F.conv2d(x, w, **kw),
        "dense_dx": lambda: nn_grad.conv2d_input(x.shape, w, gy, **kw),
        "dense_dw": lambda: nn_grad.conv2d_weight(x, w.shape, gy, **kw),
        "sparse_fwd": lambda: ops.sconv_forward(x, values, idx, *geo),
        "sparse_dx": lambda: ops.sconv_backward_input(gy, values, idx, list(x.shape[1:]), *geo),
        "sparse_dw": lambda: ops.sconv_backward_weight(gy, x, idx, *geo)}
    t = _median_ms(fns, repeats)
    nnz = int(mask.sum())
    useful = 2 * x.shape[0] * y.shape[2] * y.shape[3] * nnz  # FLOPs of one of the three products
    dense = t["dense_fwd"] + t["dense_dx"] + t["dense_dw"]
    row = {"name": name, "in_shape": list(x.shape), "out_channels": w.shape[0],
           "kernel": list(conv.kernel_size), "stride": list(conv.stride),
           "density": nnz / mask.numel(), "ell_k": int(idx.shape[1]), "ms": t,
           **_ratios(t, useful),
           "dense_gflops_s": 3 * useful / mask.float().mean().item() / (dense * 1e-3) / 1e9}
    if cpu_time:
        t1 = _cpu_ms_one_thread(fns, repeats)
        r1 = _ratios(t1, useful)
        row["cpu_1thread"] = {"ms": t1, "fwd_bwd_ratio": r1["fwd_bwd_ratio"],
                              "gflops_s": r1["gflops_s"]}
    return row


def bench_layers(args: argparse.Namespace, ift: str) -> list[dict[str, Any]]:
    """Per sparse Conv2d of the model at --layer-s: masked dense vs the kernels."""
    plan = _plan(args, args.layer_s, ift, "condensed")
    backend = apply_backend("condensed", plan.model, plan.method)
    modules = dict(plan.model.named_modules())
    by_name = {layer.name: layer for layer in backend.layers}
    convs = {n: modules[n.rsplit(".", 1)[0]] for n in plan.method.masks.names}
    convs = {n: m for n, m in convs.items() if isinstance(m, nn.Conv2d) and n in by_name}
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen)
    inputs = layer_inputs(plan.model, list(convs.values()), example, limit=args.batch)
    masks = dict(zip(plan.method.masks.names, plan.method.masks.masks))
    rows = []
    with torch.no_grad():
        for name, conv in convs.items():
            rows.append(_layer_row(name, conv, masks[name], inputs[id(conv)], by_name[name],
                                   args.repeats, args.cpu_time))
            one = rows[-1].get("cpu_1thread", {}).get("fwd_bwd_ratio")
            print(f"  {ift:5} {name:28} {rows[-1]['in_shape']} -> {conv.out_channels}: "
                  f"fwd+bwd {rows[-1]['fwd_bwd_ratio']:.3f}x masked"
                  + (f" (1-thread CPU time {one:.3f}x)" if one else ""), flush=True)
    return rows


def _stepper(plan: RunPlan, batch: tuple[torch.Tensor, torch.Tensor]) -> Callable[[], None]:
    optimizer = build_optimizer(OPT, plan.model)
    plan.method.attach_optimizer(optimizer)
    apply_backend(str(plan.cfg.sparse.backend), plan.model, plan.method, batch[0][:16])
    train_step = TrainStep(plan.model, plan.method, optimizer, F.cross_entropy)
    state = {"step": 1}  # RigL's first update is at step delta_t: none in the timed steps

    def one() -> None:
        train_step(state["step"], iter([batch]))
        state["step"] += 1
    return one


def bench_steps(args: argparse.Namespace,
                save: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 3, args.image_size, args.image_size, generator=gen),
             torch.randint(0, 10, (args.batch,), generator=gen))
    dense = _stepper(_plan(args, 0.0, "none", "masked"), batch)
    rows = []
    for s in args.s:
        steps = {"dense": dense, "masked": _stepper(_plan(args, s, "wide", "masked"), batch),
                 "condensed": _stepper(_plan(args, s, "wide", "condensed"), batch)}
        t = _median_ms(steps, args.repeats)
        rows.append({"s": s, "ms": t, "masked_x_dense": t["masked"] / t["dense"],
                     "condensed_x_dense": t["condensed"] / t["dense"],
                     "condensed_x_masked": t["condensed"] / t["masked"]})
        print(f"  s={s}: dense {t['dense']:.0f} ms, wide masked {rows[-1]['masked_x_dense']:.2f}x, "
              f"wide condensed {rows[-1]['condensed_x_dense']:.2f}x dense", flush=True)
        save(rows)  # partial results survive an interrupted run
        del steps
    return rows


def _write(out: dict[str, Any], path: Path | None) -> None:
    if path is None:
        return
    out["load_avg_after"] = list(os.getloadavg())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2) + "\n")
    tmp.replace(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out: dict[str, Any] = {
        "benchmark": "conv", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
        "load_avg_before": list(os.getloadavg()), "versions": versions(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.skip != "layers":
        out["layers"] = {m: bench_layers(args, MODELS[m]) for m in args.models}
        _write(out, args.out)
    if args.skip != "steps":
        out["steps"] = bench_steps(args, lambda rows: _write({**out, "steps": rows}, args.out))
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
