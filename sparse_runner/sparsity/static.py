"""Static sparse training: a random exact-count mask drawn once from the distribution.

``method.fan_in=constant`` draws a constant fan-in mask instead (every output neuron gets the
same number of random incoming weights; see fanin.py), the layout the condensed kernels need.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..errors import UserError
from ..flops import LayerTable
from .base import SetupContext, SparsityMethod, register
from .fanin import fanin_density, fanin_plan, install_constant_fanin

FAN_IN = ("unstructured", "constant")


@register("static")
class Static(SparsityMethod):
    """Random mask per layer (counts from the distribution), fixed for the whole run."""

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        self.fan_in = str(self.cfg.get("fan_in") or "unstructured")
        if self.fan_in not in FAN_IN:
            raise UserError(f"method=static: fan_in={self.fan_in!r}; valid: {', '.join(FAN_IN)}")

    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        if self.fan_in == "constant":
            return fanin_density(table, fanin_plan(table, sparse, s, distribution, extra_dense,
                                                   strict=False))
        return super().planned_density(table, sparse, s, distribution, extra_dense)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self.fan_in == "constant":
            install_constant_fanin(self, model, ctx)
        else:
            super().setup(model, ctx)
