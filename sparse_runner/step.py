"""The one training step: every caller (the loop, the benchmarks, the tests) runs this code.

One optimizer step calls the method's hooks in this order (the contract of
:class:`~sparse_runner.sparsity.method.SparsityMethod`)::

    method.before_step(step)
    for each micro-batch: forward, loss, (loss / n_micro).backward(), method.after_backward(step)
        (data-parallel runs: all but the last micro-batch under DDP's no_sync)
    learning rate <- lr_at(step)
    if method.before_optimizer_step(step): optimizer.step()      # masks gradients; may skip
    optimizer.zero_grad(set_to_none=True)
    event = method.after_optimizer_step(step)                     # mask updates on schedule
    (data-parallel runs: the ranks' masks are compared or rank 0's broadcast, see ddp.py)

Losses, statistics and the non-finite flag stay on the device (no host sync per step).
With a :class:`~sparse_runner.precision.Precision` (``precision=``) the forward runs in its
autocast, the backward is loss-scaled under fp16 and the optimizer step goes through its
GradScaler (skipped on inf/NaN gradients); masking is multiplicative, so scaled gradients
are masked the same way.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import Tensor, nn

from .distributed import ddp
from .precision import Precision
from .sparsity.method import SparsityMethod

Batch = tuple[Any, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
StatsFn = Callable[[Tensor, Tensor], dict[str, Tensor]]


@dataclass
class StepResult:
    """What one optimizer step produced (device tensors; the caller decides when to sync)."""

    loss_sum: Tensor                   # sum over units (samples or tokens) of the per-unit loss
    samples: int                       # units the step saw: samples, or tokens for a language model
    finite: Tensor                     # bool: every micro-batch loss was finite
    stats: dict[str, Tensor] = field(default_factory=dict)   # sums, e.g. correct predictions
    event: dict[str, Any] | None = None                      # the method's mask-update event


class TrainStep:
    """Forward/backward over ``grad_accum`` micro-batches, then the optimizer and the method."""

    def __init__(self, model: nn.Module, method: SparsityMethod, optimizer: torch.optim.Optimizer,
                 loss_fn: LossFn, *, grad_accum: int = 1, forward: Callable[[Any], Tensor] | None = None,
                 lr_at: Callable[[int], float] | None = None, stats: StatsFn | None = None,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 prep: Callable[[Any], Any] = lambda x: x,
                 precision: Precision | None = None,
                 units: Callable[[Tensor], int] | None = None, mask_sync: str | None = None) -> None:
        self.model, self.method, self.optimizer, self.loss_fn = model, method, optimizer, loss_fn
        self.forward = model if forward is None else forward   # maybe torch.compile'd: no bool()
        self.grad_accum, self.lr_at, self.stats = grad_accum, lr_at, stats
        self.precision = precision
        self.autocast = autocast if precision is None else precision.autocast
        self.backward = Tensor.backward if precision is None else precision.backward
        self.prep = prep
        self.units = units  # samples (default: y.shape[0]) or tokens a batch holds (the task's)
        self.mask_sync = mask_sync   # data-parallel runs: "verify" | "broadcast" after mask updates
        self.no_sync = ddp.no_sync(self.forward)   # gradients all-reduced once per step

    def __call__(self, step: int, batches: Iterator[Batch]) -> StepResult:
        """Run optimizer step ``step`` (steps completed before this one) on the next batches."""
        method, micro = self.method, self.grad_accum
        method.before_step(step)
        loss_sum, finite, n = None, None, 0
        stats: dict[str, Tensor] = {}
        for k in range(micro):
            x, y = next(batches)
            with self.no_sync() if k < micro - 1 else contextlib.nullcontext():
                with self.autocast():
                    out = self.forward(self.prep(x))
                    loss = self.loss_fn(out.float(), y)
                self.backward(loss / micro)
                method.after_backward(step)
            detached = loss.detach()
            count = self.units(y) if self.units is not None else (
                int(y.shape[0]) if isinstance(y, Tensor) and y.ndim else 1)
            loss_sum = detached * count if loss_sum is None else loss_sum + detached * count
            ok = torch.isfinite(detached)
            finite = ok if finite is None else finite & ok
            if self.stats is not None:
                for k, v in self.stats(out.detach(), y).items():
                    stats[k] = v if k not in stats else stats[k] + v
            n += count
        self._optimizer_step(step)
        event = method.after_optimizer_step(step)
        if event is not None and self.mask_sync is not None:  # every rank, at the same step
            event = {**event, "mask_hashes": ddp.sync_after_update(method, self.mask_sync,
                                                                   step + 1)}
        return StepResult(loss_sum, n, finite, stats, event)

    def _optimizer_step(self, step: int) -> None:
        if self.lr_at is not None:
            lr = self.lr_at(step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        if self.precision is not None and self.method.dense_grad_wanted(step):
            self._unscale()
        if self.method.before_optimizer_step(step):
            if self.precision is None:
                self.optimizer.step()
            else:
                self.precision.step(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)

    def _unscale(self) -> None:
        """fp16: the method is about to read dense gradients (growth scores): divide them by
        the loss scale first, the optimizer's (the step then does not unscale again) and the
        dense views the optimizer does not hold. Overflowed entries stay inf/NaN here; the
        method's reader sanitises them (``DynamicSparse._accumulate``), the step is skipped."""
        inv = self.precision.inv_scale()
        if inv is None:
            return
        self.precision.unscale_(self.optimizer)
        self.method.unscale_dense_grads(inv)
