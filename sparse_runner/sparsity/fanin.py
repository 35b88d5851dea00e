"""Constant fan-in helpers: every active output neuron has exactly k nonzero incoming weights.

A weight is viewed as ``[n_out, fan_in]`` (conv: fan_in = c_in * kh * kw), as in SRigL and the
condensed layout of the kernels. Shared by SRigL and ``method=static method.fan_in=constant``.

Fan-in per layer. The distribution gives each layer a nonzero budget ``B_l``; SRigL's reference
takes ``k = B_l // n_out`` per layer, which always falls short of the target, and the shortfall
adds up over layers (condensed-sparsity#15). We take ``floor`` or ``ceil(B_l / n_out)`` per layer,
choosing ceilings by largest fractional part while they fit in the global budget, so the sparse
layers together stay within one neuron row of the target (never above it in nonzeros).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..utils.errors import UserError
from ..flops.tables import LayerTable
from .method import SetupContext, SparsityMethod, planned_nnz
from .masks import MaskManager


def rows_cols(shape: Sequence[int]) -> tuple[int, int]:
    """(n_out, fan_in) of a Conv/Linear weight."""
    return int(shape[0]), math.prod(int(d) for d in shape[1:])


def fanin_counts(shapes: Mapping[str, Sequence[int]], nnz: Mapping[str, int], s: float,
                 strict: bool = True) -> dict[str, int]:
    """Fan-in k per layer whose ``k * n_out`` sum to the budget ``sum(nnz)`` as closely as fits.

    ``strict`` raises a UserError when a layer's fan-in would be 0; planning (the Iso-FLOP
    search probes s close to 1) passes False and gets 0 for such layers.
    """
    rc = {n: rows_cols(shapes[n]) for n in shapes}
    k = {n: nnz[n] // rc[n][0] for n in shapes}
    if strict:
        for n in shapes:
            if k[n] == 0:
                raise UserError(
                    f"constant fan-in of {n} would be 0 ({nnz[n]} nonzeros for {rc[n][0]} "
                    f"neurons at s={s:.4g}); lower s, use distribution=erk, or keep the layer "
                    f"dense with sparse.dense=[stem,head,{n}]")
    left = sum(nnz.values()) - sum(k[n] * rc[n][0] for n in shapes)
    for n in sorted(shapes, key=lambda n: (-(nnz[n] / rc[n][0] - k[n]), n)):
        rows, cols = rc[n]
        if 0 < k[n] < cols and nnz[n] > k[n] * rows and rows <= left:
            k[n] += 1
            left -= rows
    return k


def fanin_plan(table: LayerTable, sparse: list[str], s: float, distribution: Mapping[str, Any],
               extra_dense: int = 0, strict: bool = True,
               trim: Mapping[str, int] | None = None) -> dict[str, int]:
    """Fan-in per sparse layer at sparsity s under the configured distribution, plus the
    Iso-FLOP search's FLOP-aware ``trim`` (extra fan-in per layer)."""
    nnz = planned_nnz(table, sparse, s, distribution, extra_dense)
    k = fanin_counts({n: table[n].shape for n in sparse}, nnz, s, strict)
    for n, extra in (trim or {}).items():
        k[n] = min(rows_cols(table[n].shape)[1], max(0, k[n] + int(extra)))
    return k


def fanin_rounding_steps(table: LayerTable, sparse: list[str], s: float,
                         distribution: Mapping[str, Any], extra_dense: int = 0
                         ) -> dict[str, tuple[float, int]]:
    """FLOP-aware rounding for constant fan-in: one step is one more incoming weight for every
    neuron of a layer (a whole column of nonzeros), so it costs n_out times a nonzero's FLOPs;
    the search gets within the cheapest such column of the target, not within one weight."""
    k = fanin_plan(table, sparse, s, distribution, extra_dense, strict=False)
    out = {}
    for n in sparse:
        rows, cols = rows_cols(table[n].shape)
        out[n] = (table[n].fwd_flops * rows / table[n].numel, cols - k[n] if k[n] > 0 else 0)
    return out


def fanin_density(table: LayerTable, k: Mapping[str, int]) -> dict[str, float]:
    return {n: k[n] * rows_cols(table[n].shape)[0] / table[n].numel for n in k}


def row_top(score: Tensor, n: Tensor | int, kmax: int) -> Tensor:
    """Bool mask [rows, cols] of the ``n`` (per row, <= kmax) highest scores of each row."""
    out = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    if kmax == 0:
        return out
    if isinstance(n, int):
        return out.scatter_(1, score.topk(kmax, dim=1, sorted=False).indices, True)
    idx = score.topk(kmax, dim=1).indices  # sorted: each row takes a prefix
    take = torch.arange(kmax, device=score.device)[None, :] < n[:, None]
    return out.scatter_(1, idx, take)


def constant_fanin_mask(shape: Sequence[int], k: int, gen: torch.Generator,
                        device: torch.device | str = "cpu") -> Tensor:
    """Bool mask with exactly k uniformly random positions in every output row."""
    rows, cols = rows_cols(shape)
    return row_top(torch.rand(rows, cols, generator=gen), k, k).view(*shape).to(device)


def row_counts(mask: Tensor) -> Tensor:
    return mask.reshape(mask.shape[0], -1).sum(1)


def constant_fanin(mask: Tensor) -> int | None:
    """k if every nonzero row of the mask has exactly k entries (all-zero rows allowed)."""
    counts = row_counts(mask)
    live = counts[counts > 0]
    if live.numel() == 0 or bool((live != live[0]).any()):
        return None
    return int(live[0])


@torch.no_grad()
def sparse_init_(weight: Tensor, mask: Tensor, gen: torch.Generator,
                 official: bool = False) -> None:
    """Kaiming-normal per neuron over its *sparse* fan-in: N(0, var = 2 / k_row).

    SRigL's reference (``sparse_init.py``) passes 2 / fan_in as the *std*; the variance that
    preserves activation scale through ReLU (He et al. 2015) is 2 / fan_in, so std sqrt(2 / k).
    ``official=True`` reproduces the reference (std = 2 / k). Empty (ablated) rows stay zero.
    """
    rows = weight.shape[0]
    m = mask.reshape(rows, -1)
    k = m.sum(1, keepdim=True).clamp_min(1).to(torch.float32)
    std = 2.0 / k if official else (2.0 / k).sqrt()
    noise = torch.randn(m.shape, generator=gen).to(weight.device) * std
    weight.copy_((noise * m).view_as(weight).to(weight.dtype))


def install_constant_fanin(method: SparsityMethod, model: nn.Module,
                           ctx: SetupContext) -> dict[str, int]:
    """Give ``method`` a MaskManager with random constant fan-in masks; returns k per layer."""
    method.ctx = ctx
    method.masks = MaskManager(model, ctx.sparse)
    k = fanin_plan(ctx.table, ctx.sparse, ctx.s, ctx.distribution, ctx.extra_dense, trim=ctx.trim)
    method.masks.set_masks({
        i: constant_fanin_mask(p.shape, k[n], method.rng(-1, i), p.device)
        for i, (n, p) in enumerate(zip(method.masks.names, method.masks.params))})
    return k
