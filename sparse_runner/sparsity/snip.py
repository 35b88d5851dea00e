"""SNIP (Lee et al. 2019): keep the weights with the largest connection sensitivity |w * dL/dw|.

Reference: namhoonlee/snip-public (algorithms.md §3). The score |dL/dc| of a multiplicative
mask c = 1 equals |w * dL/dw|; its normalisation by the global sum does not change the ranking,
so it is skipped. Differences from the reference, on purpose:

* biases are never masked (§0), so they are not scored either;
* the gradient may be averaged over ``num_batches`` batches (default 1, as the paper);
* the model's own initialisation is scored (no xavier re-initialisation of a copy), since that
  is the initialisation that then trains.
"""
from __future__ import annotations

from torch import Tensor, nn

from .base import SetupContext, register
from .pai import PruneAtInit, batch_stream, mean_grads, samples, take


@register("snip")
class SNIP(PruneAtInit):
    """One-shot pruning at init by |w * grad| (global top-k by default)."""

    def score(self, model: nn.Module, ctx: SetupContext) -> tuple[list[Tensor], float]:
        batches = take(batch_stream(ctx), max(1, int(self.cfg.get("num_batches", 1))))
        params = dict(model.named_parameters())
        weights = {n: params[n].detach() for n in ctx.sparse}
        grads = mean_grads(model, weights, batches, ctx.loss_fn)
        keys = [(weights[n] * grads[n]).abs() for n in ctx.sparse]
        return keys, 3.0 * ctx.table.dense_fwd() * samples(batches)
