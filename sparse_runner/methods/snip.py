"""``method=snip`` (Lee et al. 2019): keep the weights with the largest connection sensitivity |w * dL/dw|.

Reference: namhoonlee/snip-public. The score |dL/dc| of a multiplicative
mask c = 1 equals |w * dL/dw|; its normalisation by the global sum does not change the ranking,
so it is skipped. Differences from the reference, on purpose:

* biases are never masked (no method masks them), so they are not scored either;
* the gradient may be averaged over ``num_batches`` batches (default 1, as the paper);
* the model's own initialisation is scored (no xavier re-initialisation of a copy), since that
  is the initialisation that then trains.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..sparsity.method import SetupContext, register
from ..sparsity.pruning import (PruneAtInit, PruneAtInitOptions, batch_stream, mean_grads, samples,
                                take)


@dataclass
class SNIPOptions(PruneAtInitOptions):
    num_batches: int = 1    # training batches the gradient is averaged over (paper: 1 of 100)


@register("snip")
class SNIP(PruneAtInit):
    """One-shot pruning at init by |w * grad| (global top-k by default)."""

    Options = SNIPOptions

    def score(self, model: nn.Module, ctx: SetupContext) -> tuple[list[Tensor], float]:
        batches = take(batch_stream(ctx), max(1, int(self.opts.num_batches)))
        params = dict(model.named_parameters())
        weights = {n: params[n].detach() for n in ctx.sparse}
        grads = mean_grads(model, weights, batches, ctx.loss_fn)
        keys = [(weights[n] * grads[n]).abs() for n in ctx.sparse]
        return keys, 3.0 * ctx.table.dense_fwd() * samples(batches)
