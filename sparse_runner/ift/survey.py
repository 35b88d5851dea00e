"""Build IFT members on the meta device and run their Iso-FLOP search, without data or weights.

Shared by the Table-1 report (tables.py) and the search benchmark (bench/isoflop.py): both
need, for one model and dataset shape, every member at several s with its layer table, sparse
set and searched sparsity. Meta tensors make a 10x-wide ResNet-18 cost nothing to build.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..flops import LayerTable, trace_layers
from ..isoflop import IsoFlopResult, isoflop_sparsity
from ..models import build_model
from ..methods import build_method
from ..sparsity import SparsityMethod, select_sparse
from . import build_ift_model

# (in_channels, num_classes, image size) of the datasets the runner ships; data loaders report
# the same values at run time, these let a report describe a model without any data on disk.
DATASET_SPECS: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 10, 32), "cifar100": (3, 100, 32), "imagenet": (3, 1000, 224),
    "digits": (1, 10, 8), "synthetic": (3, 10, 32),
}
MEMBERS = ("wide", "parallel", "factorized", "doped")
PAPER_S = (0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Member:
    """One transformed model (on meta) with what its Iso-FLOP search needs."""

    ift: str
    s: float
    model: nn.Module
    table: LayerTable
    sparse: list[str]

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def sparse_weights(self) -> int:
        """Search-space cardinality: weights the sparse method can place its nonzeros among."""
        return sum(self.table[n].numel for n in self.sparse)


@dataclass
class Survey:
    """A model config + dataset shape; builds baseline and members on the meta device."""

    model_cfg: Mapping[str, Any]
    in_channels: int
    num_classes: int
    image_size: int
    dense: Sequence[str] = ("stem", "head")
    ift_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def for_dataset(cls, model: str, dataset: str, **kw: Any) -> "Survey":
        if dataset not in DATASET_SPECS:
            raise UserError(f"unknown dataset {dataset!r}; valid: {', '.join(sorted(DATASET_SPECS))}")
        c, k, size = DATASET_SPECS[dataset]
        return cls({"name": model}, c, k, size, **kw)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def builder(self) -> Callable[[float], nn.Module]:
        def build(width_mult: float) -> nn.Module:
            return build_model(self.model_cfg, in_channels=self.in_channels,
                               num_classes=self.num_classes, image_size=self.image_size,
                               width_mult=width_mult)
        return build

    @cached_property
    def baseline(self) -> LayerTable:
        with torch.device("meta"):
            return trace_layers(self.builder()(1.0), self.shape)

    def member(self, ift: str, s: float) -> Member:
        cfg = {"name": ift, **self.ift_options.get(ift, {})}
        with torch.device("meta"):
            model = build_ift_model(cfg, s, self.builder(), self.shape)
        table = trace_layers(model, self.shape)
        return Member(ift, s, model, table, select_sparse(model, table, self.dense))


def search(member: Member, target: float, method: SparsityMethod | None = None,
           distribution: Mapping[str, Any] | None = None) -> IsoFlopResult:
    """The run's Iso-FLOP search (run.py) for a member: the sparsity of its sparse layers whose
    mean forward FLOPs equal ``target``."""
    method = method or build_method({"name": "static"})
    dist = dict(distribution or {"name": "uniform"})
    return isoflop_sparsity(
        lambda x: method.mean_fwd_flops(member.table, member.sparse, x, dist), target)
