"""Sparse Doped (Sparse-IFT section 2.3, appendix A.1): W -> dense low-rank V·U + sparse W.

The layer itself stays as the sparse full matrix; beside it runs U (the layer's kernel and
stride, d outputs) then V (1x1 / Linear, d -> D_out), both *dense*. FLOPs per output position
are d·(D_in + D_out) + (1-s)·D_in·D_out, so the Iso-FLOP rank is

    d = floor(s·D_in·D_out / (D_in + D_out))

(the paper's d_sd, rounded down as the official code does). U and V are marked dense
(:func:`~sparse_runner.sparsity.filter.mark_dense`): the mask engine never sparsifies them and
the Iso-FLOP search counts them at full FLOPs. The official code sparsifies them too (its
generic ``should_sparsify`` takes every tensor with ndim > 1), which makes its Doped model use
fewer FLOPs than the dense baseline; here the total really is Iso-FLOP. A layer whose rank
rounds to 0 (tiny layers at small s) keeps only the sparse matrix.

``nonlinearity``: what runs between U and V. ``linear`` (default: the official code, and Table
7's Doped row without non-linearity), or ``bn_relu`` / ``bn`` (the paper's BatchNorm + ReLU,
Table 7's non-linear row); a low-rank path with a non-linearity no longer folds into W.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..sparsity.filter import mark_dense
from .base import IFTS, exact
from ._swap import NONLINEARITIES, Layer, LayerSwap, LowRank, between, factor, fan


def doped_rank(d_in: int, d_out: int, s: float) -> int:
    return math.floor(exact(s) * d_in * d_out / (d_in + d_out))


class Doped(LowRank):
    """sparse(x) + v(act(norm(u(x)))) with u, v dense by construction."""

    def __init__(self, sparse: Layer, u: Layer, v: Layer, dense_low_rank: bool = True,
                 between: tuple[nn.Module, nn.Module] | None = None) -> None:
        super().__init__()
        self.sparse, self.u, self.v = sparse, u, v
        self.norm, self.act = between if between is not None else (nn.Identity(), nn.Identity())
        if dense_low_rank:
            mark_dense(u.weight)
            mark_dense(v.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse(x) + self.v(self.act(self.norm(self.u(x))))


@IFTS.register("doped")
class DopedFamily(LayerSwap):
    name = "doped"
    # low_rank=sparse: U and V are sparsified with the rest, as the official code does
    options = {**LayerSwap.options, "low_rank": "dense", "nonlinearity": "linear"}
    choices = {"low_rank": ("dense", "sparse"), "nonlinearity": NONLINEARITIES}

    def replace(self, layer: Layer, s: float) -> nn.Module:
        rank = doped_rank(*fan(layer), s)
        if rank == 0:
            return layer
        u, v = factor(layer, rank, bias=False)  # the sparse matrix keeps the layer's bias
        return Doped(layer, u, v, dense_low_rank=self.cfg["low_rank"] == "dense",
                     between=between(layer, rank, self.cfg["nonlinearity"]))

    def describe(self, s: float) -> dict[str, Any]:
        return {"rank_rule": "floor(s*Din*Dout / (Din+Dout))", "low_rank": self.cfg["low_rank"],
                "nonlinearity": self.cfg["nonlinearity"], "exclude": list(self.cfg["exclude"])}
