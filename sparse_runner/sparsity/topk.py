"""Top-k selection with exact counts: per layer, globally across layers, and drop-and-grow.

Every mask decision of every method goes through these functions, so "nnz is exact" is proved
once (tests/test_topk.py) rather than per method.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import Tensor

from . import host


def topk_indices(score: Tensor, k: int, sample: int = 1 << 15, margin: float = 1.25) -> Tensor:
    """Indices (unordered) of the ``k`` largest entries of a 1-D ``score``, exactly.

    A full CPU top-k over millions of entries dominates a mask update, so for large inputs a
    threshold t read off a strided sample selects the candidates above it and the exact top-k
    runs on those only (~8x faster on a 2.4M-weight layer). Entries equal to t fill up by
    lowest index; if fewer than k entries reach t, the full top-k runs instead.
    """
    n = score.numel()
    if k == 0 or n <= 4 * sample or 4 * k > n:
        return score.topk(k, sorted=False).indices
    probe = score[:: n // sample]
    rank = min(probe.numel(), math.ceil(probe.numel() * k * margin / n) + 16)
    t = probe.kthvalue(probe.numel() - rank + 1).values
    above = host.nonzero(score > t, "top-k candidates above a sampled threshold").squeeze(1)
    if above.numel() >= k:
        return above[score[above].topk(k, sorted=False).indices]
    at = host.nonzero(score == t, "top-k candidates at the threshold").squeeze(1)
    if above.numel() + at.numel() < k:
        return score.topk(k, sorted=False).indices
    return torch.cat([above, at[: k - above.numel()]])


def top_flat(score: Tensor, n: int) -> Tensor:
    """Bool mask (score's shape) of the ``n`` highest scores over the whole tensor."""
    out = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    out[topk_indices(score.flatten(), n)] = True
    return out.view_as(score)


def split_flat(flat: Tensor, shapes: Sequence[torch.Size]) -> list[Tensor]:
    """Cut one flat tensor back into per-layer tensors of ``shapes``."""
    parts = flat.split([math.prod(s) for s in shapes])
    return [p.view(s) for p, s in zip(parts, shapes)]


def global_topk(scores: Sequence[Tensor], k: int) -> list[Tensor]:
    """The ``k`` best entries over all layers together, as one bool mask per layer (exact k;
    entries scored ``-inf`` are never kept unless k leaves no choice)."""
    flat = torch.cat([s.detach().float().flatten() for s in scores])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[topk_indices(flat, k)] = True
    return split_flat(keep, [s.shape for s in scores])


@torch.no_grad()
def drop_and_grow(mask: Tensor, drop_score: Tensor, grow_score: Tensor, n: int) -> Tensor:
    """New mask: the ``n`` active positions with the lowest ``drop_score`` leave, then the ``n``
    positions outside the kept set with the highest ``grow_score`` join (just-dropped ones are
    eligible). The count of True entries is unchanged; ``n`` must not exceed it (the callers
    know the count). Static shapes only: no host read, so a mask update queues on a GPU."""
    flat = mask.flatten()
    # sorted=False: only the sets matter, and unsorted top-k is up to 3x faster on the CPU
    drop = drop_score.flatten().float().masked_fill(~flat, math.inf)
    dropped = drop.topk(n, largest=False, sorted=False).indices
    keep = flat.clone()
    keep[dropped] = False
    grow = topk_indices(grow_score.flatten().float().masked_fill(keep, -math.inf), n)
    keep[grow] = True
    return keep.view_as(mask)


def descending(key: Tensor, major: Tensor | None = None) -> Tensor:
    """Stable descending order of ``key`` (flattened); ``major`` first if given (lexicographic)."""
    order = key.flatten().float().argsort(descending=True, stable=True)
    if major is not None:
        order = order[major.flatten()[order].argsort(descending=True, stable=True)]
    return order


def top_per_layer(keys: Sequence[Tensor], counts: Sequence[int],
                  major: Sequence[Tensor] | None = None) -> list[Tensor]:
    """Each layer keeps its ``count`` best weights (exact counts, stable order of ``descending``)."""
    out = []
    for i, (key, k) in enumerate(zip(keys, counts)):
        flat = torch.zeros(key.numel(), dtype=torch.bool, device=key.device)
        flat[descending(key, None if major is None else major[i])[:k]] = True
        out.append(flat.view(key.shape))
    return out


class GlobalRanking:
    """All sparse weights in one stable descending order of their keys, sorted once, so that
    planning (the Iso-FLOP search) re-counts only a prefix per trial sparsity and the mask built
    at the searched s is exactly the prefix that was priced.

    An optional ``major`` (per-layer integer tensors) is compared first (lexicographic order);
    Iter-SNIP ranks weights by the last pruning iteration they survived that way.
    """

    def __init__(self, keys: Sequence[Tensor], major: Sequence[Tensor] | None = None) -> None:
        sizes = [k.numel() for k in keys]
        order = descending(torch.cat([k.detach().flatten() for k in keys]),
                           None if major is None else torch.cat([m.flatten() for m in major]))
        offsets = torch.tensor([0, *itertools.accumulate(sizes)], device=order.device)
        self.order = order
        self.layer = (torch.searchsorted(offsets, order, right=True) - 1).to(torch.int32)
        self.sizes = sizes

    def counts(self, k: int) -> list[int]:
        """Nonzeros per layer when the top ``k`` weights are kept."""
        c = torch.bincount(self.layer[:k], minlength=len(self.sizes))
        return [int(v) for v in host.read(c, "nonzeros per layer of a global ranking")]

    def masks(self, k: int, shapes: Sequence[torch.Size]) -> list[Tensor]:
        keep = torch.zeros(sum(self.sizes), dtype=torch.bool, device=self.order.device)
        keep[self.order[:k]] = True
        return split_flat(keep, shapes)
