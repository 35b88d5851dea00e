"""The Sparse-IFT interface: a family rewrites a dense model into its Iso-FLOP sparse form.

A family is parameterised only by the sparsity s. ``build`` makes the model through the model
builder (Sparse Wide passes its width multiplier there); ``transform`` replaces Conv2d/Linear
layers in place (the other members). The stem and classifier head (first and last layers
executed) are passed in ``keep`` and stay untouched, as in the paper.

Rounding rules are evaluated on s as the decimal the user wrote (``exact(0.9) == 9/10``), so
ranks and branch counts equal the hand-computed values of the paper's formulas instead of
drifting by one where ``1 - 0.9`` is 0.09999999999999998 in binary floating point.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Callable, ClassVar, Mapping, Sequence

from torch import nn

from ..utils.errors import UserError
from ..utils.registry import Registry

Builder = Callable[[float], nn.Module]


def exact(s: float) -> Fraction:
    """s as the shortest decimal that round-trips (0.9 -> 9/10)."""
    return Fraction(repr(float(s)))


def expansion(s: float) -> Fraction:
    """1 / (1 - s): how many times more weights a sparse layer may hold at dense FLOPs."""
    return 1 / (1 - exact(s))


class IFTFamily:
    """Identity transform (``ift=none``); subclasses override what they change.

    ``options`` lists the config keys a family accepts (besides ``name``) with their defaults;
    anything else in ``cfg`` is a one-line error, so a typo never silently does nothing.
    """

    name: ClassVar[str] = "none"
    requires_sparsity: ClassVar[bool] = False
    options: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        given = dict(cfg or {})
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise UserError(f"ift={self.name} has no option {unknown[0]!r}; valid options: {valid}")
        self.cfg = {**self.options, **given}
        for key, allowed in self.choices.items():
            if self.cfg[key] not in allowed:
                raise UserError(f"ift.{key}={self.cfg[key]!r} is invalid for ift={self.name}; "
                                f"valid: {', '.join(allowed)}")

    def width_mult(self, s: float) -> float:
        return 1.0

    def build(self, build: Builder, s: float, input_shape: Sequence[int]) -> nn.Module:
        """The untransformed model, built through the model builder at ``width_mult(s)``."""
        return build(self.width_mult(s))

    def transform(self, model: nn.Module, s: float, keep: set[str]) -> nn.Module:
        return model

    def describe(self, s: float) -> dict[str, Any]:
        """Family-wide facts for summary.json (width factor, branches, rank rule, options)."""
        return {}


IFTS: Registry[type[IFTFamily]] = Registry("ift")
IFTS.register("none")(IFTFamily)
