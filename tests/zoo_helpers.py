"""Helpers for the method-zoo tests: a tiny MLP on flattened digits, driven step by step through
the real training step (sparse_runner.step)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from sparse_runner.flops.tables import trace_layers
from sparse_runner.sparsity import SetupContext, SparsityMethod
from sparse_runner.step import TrainStep


def digit_batches(n: int = 12, size: int = 64, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return [(x[idx[i * size:(i + 1) * size]], y[idx[i * size:(i + 1) * size]]) for i in range(n)]


def tiny_mlp(width: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def context(model: nn.Module, s: float, total_steps: int, batches=None, **kw: Any) -> SetupContext:
    table = trace_layers(model, (64,))
    batches = batches if batches is not None else digit_batches()
    return SetupContext(table=table, sparse=kw.pop("sparse", table.names), s=s,
                        total_steps=total_steps, seed=0, batches=lambda: iter(batches),
                        loss_fn=F.cross_entropy, **kw)


class Driver:
    """Optimizer step by optimizer step through :class:`TrainStep`, cycling over ``batches``."""

    def __init__(self, method: SparsityMethod, model: nn.Module, lr: float = 0.1,
                 batches=None) -> None:
        self.method, self.model = method, model
        self.batches = batches if batches is not None else digit_batches()
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        method.attach_optimizer(self.opt)
        self.train_step = TrainStep(model, method, self.opt, F.cross_entropy)
        self.step = 0

    def run(self, n: int, on_step=None) -> list[dict | None]:
        events = []
        for _ in range(n):
            batch = self.batches[self.step % len(self.batches)]
            events.append(self.train_step(self.step, iter([batch])).event)
            if on_step is not None:
                on_step(self.step, events[-1])
            self.step += 1
        return events
