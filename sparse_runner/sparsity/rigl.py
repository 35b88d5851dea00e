"""RigL (Evci et al. 2020): SET with growth by the largest dense-gradient magnitude (§7)."""
from __future__ import annotations

from torch import Tensor

from .base import register
from .dst import DynamicSparse


@register("rigl")
class RigL(DynamicSparse):
    """Per layer: drop the smallest |w|, grow the largest |dense grad| outside the kept set.

    The dense gradient is the accumulator of :class:`DynamicSparse` (mean over the last
    ``grad_accumulation_n`` steps), so nnz per layer stays constant and exact.
    """

    def grow_score(self, layer: int, step: int) -> Tensor:
        return self.dense_grad(layer).abs()
