"""``method=dense``: every weight trains; no masks, every hook a no-op."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..flops.tables import LayerTable
from ..sparsity.method import SetupContext, SparsityMethod, register


@register("dense")
class Dense(SparsityMethod):
    """Dense training (s must be 0): the baseline every sparse run is compared with."""

    sparse = False

    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        return {}

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        self.ctx = ctx
