"""Helpers shared by the sparse-training tests (plain imports, no conftest magic).

A "stack" is a bare module holding weights of given shapes (conv 4-D or linear 2-D) whose
forward is a probe: fed a list of tensors G, it returns sum_j <w_j, G_j>, so the loss gradient of
weight j is exactly G_j. The tests drive the real training step (sparse_runner.step) with
arbitrary gradients that way.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from sparse_runner.flops.tables import Layer, LayerTable
from sparse_runner.methods import build_method
from sparse_runner.sparsity import SetupContext, SparsityMethod
from sparse_runner.step import TrainStep


class Stack(nn.Module):
    def __init__(self, shapes: Sequence[Sequence[int]], gen: torch.Generator) -> None:
        super().__init__()
        self.ws = nn.ParameterList([nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes])

    def forward(self, grads: Sequence[Tensor]) -> Tensor:
        return sum((w * g).sum() for w, g in zip(self.ws, grads))

    @property
    def names(self) -> list[str]:
        return [f"ws.{i}" for i in range(len(self.ws))]


def table_of(model: Stack) -> LayerTable:
    """Layer table with 2 FLOPs per weight per sample (a 1x1 spatial output)."""
    return LayerTable(tuple(Layer(n, tuple(p.shape), 2 * p.numel())
                            for n, p in zip(model.names, model.ws)))


def make(method: str, shapes: Sequence[Sequence[int]], s: float, *, total_steps: int = 40,
         distribution: str | dict = "uniform", seed: int = 0, optimizer: str = "sgd",
         **options: Any) -> tuple[Stack, SparsityMethod, torch.optim.Optimizer]:
    """Model, set-up method and attached optimizer (SGD+momentum+wd or AdamW)."""
    model = Stack(shapes, torch.Generator().manual_seed(seed))
    if method in ("set", "rigl", "srigl"):
        options.setdefault("delta_t", 4)
    m = build_method({"name": method, **options})
    table = table_of(model)
    dist = {"name": distribution} if isinstance(distribution, str) else distribution
    m.setup(model, SetupContext(table=table, sparse=model.names, s=s, total_steps=total_steps,
                                seed=seed, distribution=dist))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-2)
    m.attach_optimizer(opt)
    return model, m, opt


def step(model: Stack, method: SparsityMethod, opt: torch.optim.Optimizer, i: int,
         grad: Callable[[int, int, Tensor], Tensor] | None = None, micro: int = 1) -> dict | None:
    """Optimizer step ``i`` through the real training step; the micro-batches' gradients (random
    unless ``grad`` gives them) add up in ``p.grad`` before the optimizer and the method see them."""
    gen = torch.Generator().manual_seed(1000 + i)

    def batches():
        for _ in range(micro):
            gs = [grad(i, j, p) if grad is not None else torch.randn(p.shape, generator=gen)
                  for j, p in enumerate(model.ws)]
            yield [g * micro for g in gs], None   # the step averages micro-batches: undo it

    return TrainStep(model, method, opt, lambda out, y: out, grad_accum=micro)(i, batches()).event


def optimizer_state(opt: torch.optim.Optimizer, p: nn.Parameter) -> list[Tensor]:
    return [v for v in opt.state.get(p, {}).values() if isinstance(v, Tensor) and v.shape == p.shape]


def budget(shape: Sequence[int], s: float) -> int:
    n = math.prod(shape)
    return n - math.floor(s * n)
