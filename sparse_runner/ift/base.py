"""The Sparse-IFT interface: a family rewrites a dense model into its Iso-FLOP sparse form.

A family is parameterised only by the sparsity s. ``width_mult(s)`` lets Sparse Wide widen the
model through the model builder; ``transform`` replaces Conv2d/Linear layers in place (the
other members). The stem and classifier head (first and last layers executed) are passed in
``keep`` and stay untouched, as in the paper.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

from torch import nn

from ..registry import Registry


class IFTFamily:
    """Identity transform (``ift=none``); subclasses override what they change."""

    name: ClassVar[str] = "none"
    requires_sparsity: ClassVar[bool] = False

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        self.cfg = dict(cfg or {})

    def width_mult(self, s: float) -> float:
        return 1.0

    def transform(self, model: nn.Module, s: float, keep: set[str]) -> nn.Module:
        return model

    def describe(self, s: float) -> dict[str, Any]:
        """Family-specific facts for summary.json (widths, branches, ranks)."""
        return {}


IFTS: Registry[type[IFTFamily]] = Registry("ift")
IFTS.register("none")(IFTFamily)
