"""``method=set`` (Mocanu et al. 2018): drop the smallest |w|, grow uniformly at random.

Random growth needs no gradient, so SET costs nothing beyond the masked step.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..sparsity.dst import DynamicSparse
from ..sparsity.method import register


@register("set")
class SET(DynamicSparse):
    """Growth by a uniform random score."""

    needs_dense_grad = False

    def grow_score(self, layer: int, step: int) -> Tensor:
        # Stateless generator seeded by (seed, step, layer): every rank and every resume agree.
        p = self.masks.params[layer]
        return torch.rand(p.shape, generator=self.rng(step, layer)).to(p.device)
