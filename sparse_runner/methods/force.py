"""``method=force``: FORCE and Iter-SNIP (de Jorge et al. 2021), iterative pruning at init.

``num_steps`` iterations shrink the kept set on an exponential (or linear) schedule to the
exact budget; each scores the weights by |theta0 * grad| at theta0 * mask (FORCE: pruned
weights may return; ``variant=iter_snip``: only survivors are scored). The schedule runs once
for the requested s; the final keys then price any trial s of the Iso-FLOP search. Details and
the reference's differences: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..sparsity.distributions import keep_budget
from ..sparsity.method import SetupContext, register
from ..sparsity.options import check, check_choice
from ..sparsity.pruning import (PruneAtInit, PruneAtInitOptions, batch_stream, mean_grads, samples,
                                take)
from ..sparsity.topk import global_topk

VARIANTS = ("force", "iter_snip")
SCHEDULES = ("exp", "linear")


def keep_schedule(total: int, final: int, steps: int, mode: str) -> list[int]:
    """Weights kept after each of ``steps`` iterations; non-increasing, ending at ``final``."""
    pf = final / total if total else 1.0
    out = []
    for t in range(1, steps + 1):
        if mode == "exp":
            frac = math.exp(t / steps * math.log(pf)) if pf > 0 else 0.0
        else:
            frac = 1.0 - t * (1.0 - pf) / steps
        out.append(max(final, min(total, round(frac * total))))
    out[-1] = final
    return out


@dataclass
class FORCEOptions(PruneAtInitOptions):
    variant: str = "force"    # force | iter_snip (saliency on surviving weights; pruned never return)
    num_steps: int = 60       # pruning iterations T (reference README: 60)
    schedule: str = "exp"     # exp: keep pf^(t/T) after iteration t | linear: 1 - t(1-pf)/T
    num_batches: int = 1      # batches per iteration (CIFAR-10: 1, CIFAR-100: 10, ImageNet: 40)


@register("force")
class FORCE(PruneAtInit):
    """Iterative pruning at init (FORCE by default, Iter-SNIP with ``variant=iter_snip``)."""

    Options = FORCEOptions

    def check_options(self) -> None:
        super().check_options()
        o = self.opts
        check_choice(self.name, "variant", o.variant, VARIANTS)
        check_choice(self.name, "schedule", o.schedule, SCHEDULES)
        check(o.num_steps >= 1, self.name, f"num_steps={o.num_steps} must be >= 1 (reference: 60)")
        self.variant, self.mode, self.steps = o.variant, o.schedule, int(o.num_steps)

    def score(self, model: nn.Module, ctx: SetupContext) -> tuple[list[Tensor], float]:
        params = dict(model.named_parameters())
        theta0 = [params[n].detach() for n in ctx.sparse]
        total = sum(w.numel() for w in theta0)
        final = keep_budget(ctx.table, ctx.sparse, ctx.s, ctx.extra_dense)
        stream = batch_stream(ctx)
        n_batches = max(1, int(self.opts.num_batches))
        masks = [torch.ones_like(w, dtype=torch.bool) for w in theta0]
        keys = [torch.zeros_like(w) for w in theta0]
        alive = [torch.zeros_like(w, dtype=torch.int16) for w in theta0]
        seen = 0
        for t, k in enumerate(keep_schedule(total, final, self.steps, self.mode), start=1):
            batches = take(stream, n_batches)
            seen += samples(batches)
            current = {n: w * m for n, w, m in zip(ctx.sparse, theta0, masks)}
            grads = mean_grads(model, current, batches, ctx.loss_fn)
            for key, age, w, m, n in zip(keys, alive, theta0, masks, ctx.sparse):
                sal = (w * grads[n]).abs()
                eligible = m if self.variant == "iter_snip" else torch.ones_like(m)
                key.copy_(torch.where(eligible, sal, key))
                age.masked_fill_(eligible, t)
            masks = self._top(keys, alive, t, k)
        self.major = alive if self.variant == "iter_snip" else None
        return keys, 3.0 * ctx.table.dense_fwd() * seen

    @staticmethod
    def _top(keys: list[Tensor], alive: list[Tensor], t: int, k: int) -> list[Tensor]:
        """The k best weights among those scored at iteration t (exact count)."""
        return global_topk([torch.where(a == t, key, -math.inf) for key, a in zip(keys, alive)], k)
