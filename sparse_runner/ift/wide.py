"""Sparse Wide (Sparse-IFT section 2.3): every layer's input and output features grow by
k_sw = sqrt(1/(1-s)), so a layer at sparsity s costs the dense layer's FLOPs.

Widening goes through the model builder (``width_mult``), which owns the channel layout: the
ResNets compute W = int(64·k_sw), i.e. stems of 90 / 128 / 202 at s = 0.5 / 0.75 / 0.9, exactly
the official int(64·sqrt(b)) with b = round(1/(1-s)). For an s where 1/(1-s) is not an integer
(s = 0.6) the official code rounds b first (90 channels); we keep the paper's k_sw (101): the
model is closer to Iso-FLOP before the search, and the search absorbs the rest either way.

Depthwise convs (appendix A.1.1) cost FLOPs linear in their outputs, so they widen their
outputs by 1/(1-s), not sqrt. A width multiplier alone cannot express that (a depthwise conv's
outputs are fixed by its neighbours), so :class:`Width` also tells the builder how many outputs
each depthwise conv should get (:meth:`Width.depthwise_channels`). With ``depthwise: paper``
(default) a model whose depthwise convs do not follow the rule is an error; ``uniform``
accepts the builder's uniform widening and lets the Iso-FLOP search make up the difference.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ..utils.errors import UserError
from ..flops.tables import flop_modules
from .base import IFTS, Builder, IFTFamily, expansion
from ._swap import is_depthwise


class Width(float):
    """k_sw as a float (what every builder multiplies channel counts by), plus the depthwise rule."""

    def __new__(cls, s: float) -> "Width":
        obj = super().__new__(cls, math.sqrt(expansion(s)))
        obj.s = s
        return obj

    def __reduce__(self):
        return (Width, (self.s,))

    @property
    def depthwise(self) -> float:
        """Output multiplier of a depthwise conv: 1/(1-s)."""
        return float(expansion(self.s))

    def depthwise_channels(self, dense_out: int, in_channels: int) -> int:
        """Outputs for a depthwise conv that had ``dense_out`` outputs in the dense model and now
        has ``in_channels`` inputs: dense_out/(1-s), rounded to a multiple of ``in_channels``."""
        return in_channels * max(1, round(expansion(self.s) * dense_out / in_channels))


def _size(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_widened(build: Builder, wide: nn.Module, width: Width, depthwise: str) -> None:
    """Fail loudly if the builder ignores width_mult, or broke the depthwise rule."""
    with torch.device("meta"):
        dense = build(1.0)
        ignored = _size(wide) == _size(dense) and _size(build(2.0)) == _size(dense)
    d, w = dict(flop_modules(dense)), dict(flop_modules(wide))
    if list(d) != list(w):
        raise UserError("ift=wide: the model builder changed the layer structure when widened; "
                        "it must only scale channel counts by width_mult")
    if ignored:
        raise UserError(f"ift=wide: the model ignores width_mult={float(width):.4g} (same size "
                        "as the dense model); its builder must scale channel counts by width_mult")
    if depthwise != "paper":
        return
    for name, module in w.items():
        if not is_depthwise(module):
            continue
        want = width.depthwise_channels(d[name].out_channels, module.in_channels)
        if module.out_channels != want:
            raise UserError(
                f"ift=wide: depthwise conv {name!r} has {module.out_channels} outputs, appendix "
                f"A.1.1 wants {want} (1/(1-s) x {d[name].out_channels}); size it with "
                "width_mult.depthwise_channels() in the model builder, or set ift.depthwise=uniform"
            )


@IFTS.register("wide")
class Wide(IFTFamily):
    name = "wide"
    requires_sparsity = True
    options = {"depthwise": "paper"}
    choices = {"depthwise": ("paper", "uniform")}

    def width_mult(self, s: float) -> Width:
        return Width(s)

    def build(self, build: Builder, s: float, input_shape: Sequence[int]) -> nn.Module:
        width = self.width_mult(s)
        model = build(width)
        check_widened(build, model, width, self.cfg["depthwise"])
        return model

    def describe(self, s: float) -> dict[str, Any]:
        width = self.width_mult(s)
        return {"k_sw": float(width), "depthwise_k": width.depthwise,
                "depthwise": self.cfg["depthwise"]}
