"""Per-layer kernel-vs-dense choice of the condensed backend: capture each sparse layer's input
on an example batch once, then time forward+backward of both ways on it.

Timing runs on at most ``TIMING_BATCH`` samples of the example (one batch chunk of the conv
kernels for fp32) so that setup stays short even for the widened models; the ratio between
kernel and dense barely depends on the batch beyond that. Each way is run once to warm up,
then ``REPEATS`` times, alternating, and the fastest run counts (robust to a busy machine).
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

TIMING_BATCH = 16
REPEATS = 2


def layer_inputs(model: nn.Module, modules: Sequence[nn.Module | None],
                 example: Tensor | None, limit: int = TIMING_BATCH) -> dict[int, Tensor]:
    """id(module) -> its input on ``example[:limit]`` (eval mode: no statistics move)."""
    if example is None:
        return {}
    seen: dict[int, Tensor] = {}
    wanted = {id(m) for m in modules if m is not None}

    def hook(module: nn.Module, args: tuple) -> None:
        if id(module) in wanted and args and torch.is_tensor(args[0]):
            seen[id(module)] = args[0].detach()

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if id(m) in wanted]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example[:limit])
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.train(flag)
    return seen


def _fwd_bwd(fn: Callable[[Tensor], Tensor], x: Tensor) -> float:
    xg = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    y = fn(xg)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t0


def time_layer(module: nn.Module, kernel_fn: Callable[[Tensor], Tensor],
               x: Tensor) -> tuple[float, float]:
    """(kernel ms, dense ms) of forward + backward (input and weight gradients) on ``x``."""
    def dense(x_: Tensor) -> Tensor:
        return type(module).forward(module, x_)

    best = {"kernel": float("inf"), "dense": float("inf")}
    with torch.enable_grad():
        for fn in (kernel_fn, dense):  # warm-up (kernel build, allocator, caches)
            _fwd_bwd(fn, x)
        for _ in range(REPEATS):
            best["kernel"] = min(best["kernel"], _fwd_bwd(kernel_fn, x))
            best["dense"] = min(best["dense"], _fwd_bwd(dense, x))
    return best["kernel"] * 1e3, best["dense"] * 1e3
