"""``method=static``: static sparse training: a random exact-count mask drawn once from the distribution.

``method.fan_in=constant`` draws a constant fan-in mask instead (every output neuron gets the
same number of random incoming weights; see sparsity/fanin.py), the layout the condensed kernels need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from ..flops.tables import LayerTable
from ..sparsity.fanin import (fanin_density, fanin_plan, fanin_rounding_steps,
                              install_constant_fanin)
from ..sparsity.method import SetupContext, SparsityMethod, nonzero_steps, planned_nnz, register
from ..sparsity.options import MethodOptions, check_choice

FAN_IN = ("unstructured", "constant")


@dataclass
class StaticOptions(MethodOptions):
    fan_in: str = "unstructured"   # unstructured | constant (same k nonzeros per output neuron)


@register("static")
class Static(SparsityMethod):
    """Random mask per layer (counts from the distribution), fixed for the whole run."""

    Options = StaticOptions

    def check_options(self) -> None:
        check_choice(self.name, "fan_in", self.opts.fan_in, FAN_IN)
        self.fan_in = self.opts.fan_in

    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        if self.fan_in == "constant":
            return fanin_density(table, fanin_plan(table, sparse, s, distribution, extra_dense,
                                                   strict=False))
        return super().planned_density(table, sparse, s, distribution, extra_dense)

    def rounding_steps(self, table: LayerTable, sparse: list[str], s: float,
                       distribution: Mapping[str, Any], extra_dense: int = 0
                       ) -> dict[str, tuple[float, int]]:
        if self.fan_in == "constant":
            return fanin_rounding_steps(table, sparse, s, distribution, extra_dense)
        return nonzero_steps(table, sparse, planned_nnz(table, sparse, s, distribution,
                                                        extra_dense))

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self.fan_in == "constant":
            install_constant_fanin(self, model, ctx)
        else:
            super().setup(model, ctx)
