"""Sparse Factorized (Sparse-IFT section 2.3, appendix A.1): W -> V · sigma(U), both sparse.

For a layer seen as a D_in x D_out matrix (a k x k conv: D_in = c_in·k·k, D_out = c_out), U is
the layer with d outputs (same kernel, stride, padding) and V a 1x1 conv / Linear from d to
D_out carrying the bias. Forward FLOPs per output position are d·(D_in + D_out)·(1-s), so the
Iso-FLOP rank is

    d = ceil(D_in·D_out / ((D_in + D_out)·(1 - s)))

(the paper's d_sf, rounded up as the official code does; evaluated on s as written, so 64x64
3x3 at s=0.9 gives 576 where the official float arithmetic gives 577). sigma is BatchNorm+ReLU
by default (the paper's choice, the official ``nonlinear_relu``), ``bn`` (BatchNorm only) or
``linear`` (none: a low-rank product).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import IFTS, exact
from ._swap import NONLINEARITIES, Layer, LayerSwap, LowRank, between, factor, fan


def factorized_rank(d_in: int, d_out: int, s: float) -> int:
    return math.ceil(d_in * d_out / ((d_in + d_out) * (1 - exact(s))))


class Factorized(LowRank):
    """v(act(norm(u(x))))."""

    def __init__(self, u: Layer, v: Layer, between: tuple[nn.Module, nn.Module]) -> None:
        super().__init__()
        self.u, self.v = u, v
        self.norm, self.act = between

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(self.act(self.norm(self.u(x))))


@IFTS.register("factorized")
class FactorizedFamily(LayerSwap):
    name = "factorized"
    options = {**LayerSwap.options, "nonlinearity": "bn_relu"}
    choices = {"nonlinearity": NONLINEARITIES}

    def replace(self, layer: Layer, s: float) -> nn.Module:
        rank = factorized_rank(*fan(layer), s)
        u, v = factor(layer, rank, bias=layer.bias is not None)
        return Factorized(u, v, between(layer, rank, self.cfg["nonlinearity"]))

    def describe(self, s: float) -> dict[str, Any]:
        return {"rank_rule": "ceil(Din*Dout / ((Din+Dout)*(1-s)))",
                "nonlinearity": self.cfg["nonlinearity"], "exclude": list(self.cfg["exclude"])}
