"""``method=rigl`` (Evci et al. 2020): drop the smallest |w|, grow the largest |dense grad|.

Every ``delta_t`` steps, per layer, ``int(nnz * f_t)`` active weights with the smallest
magnitude leave and as many inactive positions with the largest dense-gradient magnitude (the
mean over the last ``grad_accumulation_n`` steps) join, so nnz per layer stays exact. The
schedule, accumulation and bookkeeping are the shared DST updater's
(:class:`~sparse_runner.sparsity.dst.DynamicSparse`).
"""
from __future__ import annotations

from torch import Tensor

from ..sparsity.dst import DynamicSparse
from ..sparsity.method import register


@register("rigl")
class RigL(DynamicSparse):
    """Growth by |dense gradient|."""

    def grow_score(self, layer: int, step: int) -> Tensor:
        return self.dense_grad(layer).abs()
