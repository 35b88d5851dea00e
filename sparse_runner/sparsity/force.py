"""FORCE and Iter-SNIP (de Jorge et al. 2021): iterative pruning at init (naver/force, §5).

``num_steps`` = T iterations (60 in the reference README); iteration t (1-indexed) keeps
``k_t = N * pf^(t/T)`` weights (``schedule: exp``) or ``N * (1 - t(1-pf)/T)`` (``linear``),
where pf is the final keep fraction; k_T is the exact budget. Each iteration averages the
gradient over ``num_batches`` batches evaluated at θ₀ ⊙ m (the previous mask applied to the
*original* init, no gradient hooks):

* ``variant: force`` -- saliency |θ₀ ⊙ g| on every weight, so pruned weights can come back;
* ``variant: iter_snip`` -- saliency |θ₀ ⊙ m ⊙ g| on the surviving weights only (the reference
  sets the pruned ones to the global minimum so they never return).

Fixed on purpose: the reference draws every batch with ``next(iter(loader))`` (a fresh iterator
per batch) and uses ``nll_loss`` on logits; we read consecutive batches of one stream and use
the run's loss.

Iso-FLOP (the mask depends on s through the schedule, so re-running T iterations per trial s is
out of the question): the schedule runs once, in ``prepare``, for the requested s. The keys kept
for planning are the final iteration's saliencies -- lexicographically after the last iteration
each weight survived, for Iter-SNIP -- and the mask at any s (in particular the searched one) is
their top-k. At the requested s this is exactly FORCE's last step; at a nearby searched s it is
FORCE whose last step targets that s instead (the first T-1 steps follow the requested s).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import UserError
from .base import SetupContext, register
from .pai import PruneAtInit, batch_stream, keep_budget, mean_grads, samples, take

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


@register("force")
class FORCE(PruneAtInit):
    """Iterative pruning at init (FORCE by default, Iter-SNIP with ``variant=iter_snip``)."""

    def __init__(self, cfg=None) -> None:
        super().__init__(cfg)
        self.variant = str(self.cfg.get("variant", "force"))
        self.mode = str(self.cfg.get("schedule", "exp"))
        self.steps = int(self.cfg.get("num_steps", 60))
        if self.variant not in VARIANTS:
            raise UserError(f"method=force: variant={self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.mode not in SCHEDULES:
            raise UserError(f"method=force: schedule={self.mode!r}; valid: {', '.join(SCHEDULES)}")
        if self.steps < 1:
            raise UserError(f"method=force: num_steps={self.steps} must be >= 1 (reference: 60)")

    def score(self, model: nn.Module, ctx: SetupContext) -> tuple[list[Tensor], float]:
        params = dict(model.named_parameters())
        theta0 = [params[n].detach() for n in ctx.sparse]
        total = sum(w.numel() for w in theta0)
        final = keep_budget(ctx.table, ctx.sparse, ctx.s, ctx.extra_dense)
        stream = batch_stream(ctx)
        n_batches = max(1, int(self.cfg.get("num_batches", 1)))
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
        flat = torch.cat([torch.where(a == t, key, -math.inf).flatten() for key, a in zip(keys, alive)])
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(k).indices] = True
        return [part.view(key.shape) for part, key in zip(keep.split([x.numel() for x in keys]), keys)]
