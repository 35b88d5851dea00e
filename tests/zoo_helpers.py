"""Helpers for the method-zoo tests: a tiny MLP on flattened digits and a minimal training loop
that calls the method hooks exactly as ``sparse_runner.train`` does."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from sparse_runner.flops import trace_layers
from sparse_runner.sparsity import SetupContext, SparsityMethod


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
    """``optimizer step`` by ``optimizer step``, with the loop's hook order (train.py)."""

    def __init__(self, method: SparsityMethod, model: nn.Module, lr: float = 0.1,
                 batches=None) -> None:
        self.method, self.model = method, model
        self.batches = batches if batches is not None else digit_batches()
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        method.attach_optimizer(self.opt)
        self.step = 0

    def run(self, n: int, on_step=None) -> list[dict | None]:
        events = []
        for _ in range(n):
            x, y = self.batches[self.step % len(self.batches)]
            F.cross_entropy(self.model(x), y).backward()
            self.method.after_backward(self.step)
            if self.method.before_optimizer_step(self.step):
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            events.append(self.method.after_optimizer_step(self.step))
            if on_step is not None:
                on_step(self.step, events[-1])
            self.step += 1
        return events
