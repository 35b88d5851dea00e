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

from ..utils.errors import UserError
from ..flops.tables import LayerTable, trace_layers
from ..flops.isoflop import S_MAX, IsoFlopResult, isoflop_sparsity
from ..models import build_model
from ..methods import build_method
from ..sparsity import SparsityMethod, rounding_refine, select_sparse
from . import build_ift_model
from .feasible import isoflop_or_explain

# (in_channels, num_classes, image size) of the datasets the runner ships; data loaders report
# the same values at run time, these let a report describe a model without any data on disk.
DATASET_SPECS: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 10, 32), "cifar100": (3, 100, 32), "imagenet": (3, 1000, 224),
    "digits": (1, 10, 8), "synthetic": (3, 10, 32),
}
# text datasets: vocabulary size (shakespeare: the 84 characters of the modern edition)
TEXT_SPECS: dict[str, int] = {"shakespeare": 84}
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
    seq_len: int = 0  # > 0: a text model fed token windows of this length (FLOPs per token)

    @classmethod
    def for_dataset(cls, model: str | Mapping[str, Any], dataset: str, **kw: Any) -> "Survey":
        model_cfg = {"name": model} if isinstance(model, str) else dict(model)
        if dataset in TEXT_SPECS:
            seq = int(model_cfg.get("block_size") or 128)
            return cls(model_cfg, 0, TEXT_SPECS[dataset], 0, seq_len=seq, **kw)
        if dataset not in DATASET_SPECS:
            valid = sorted([*DATASET_SPECS, *TEXT_SPECS])
            raise UserError(f"unknown dataset {dataset!r}; valid: {', '.join(valid)}")
        c, k, size = DATASET_SPECS[dataset]
        return cls(model_cfg, c, k, size, **kw)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.seq_len,) if self.seq_len else (self.in_channels, self.image_size, self.image_size)

    @property
    def trace_kw(self) -> dict[str, Any]:
        return {"dtype": torch.long, "unit": "token"} if self.seq_len else {}

    def builder(self) -> Callable[[float], nn.Module]:
        def build(width_mult: float) -> nn.Module:
            return build_model(self.model_cfg, in_channels=self.in_channels,
                               num_classes=self.num_classes, image_size=self.image_size,
                               width_mult=width_mult, kind="text" if self.seq_len else "image",
                               seq_len=self.seq_len)
        return build

    @cached_property
    def baseline(self) -> LayerTable:
        with torch.device("meta"):
            return trace_layers(self.builder()(1.0), self.shape, **self.trace_kw)

    def member(self, ift: str, s: float) -> Member:
        cfg = {"name": ift, **self.ift_options.get(ift, {})}
        kw = self.trace_kw
        with torch.device("meta"):
            model = build_ift_model(cfg, s, self.builder(), self.shape, kw.get("dtype", torch.float32))
        table = trace_layers(model, self.shape, **kw)
        dense = [d for d in self.dense if d != "stem" or "stem" in getattr(model, "dense_layers", ("stem",))]
        return Member(ift, s, model, table, select_sparse(model, table, dense))


def search(member: Member, target: float, method: SparsityMethod | None = None,
           distribution: Mapping[str, Any] | None = None, survey: Survey | None = None
           ) -> IsoFlopResult:
    """The run's Iso-FLOP search (run.py) for a member: the sparsity of its sparse layers whose
    mean forward FLOPs equal ``target``. With ``survey``, an infeasible s is a one-line error
    that names the highest feasible s."""
    method = method or build_method({"name": "static"})
    dist = dict(distribution or {"name": "uniform"})

    def flops_at(m: Member) -> Callable[[float], float]:
        return lambda x: method.mean_fwd_flops(m.table, m.sparse, x, dist)

    refine = rounding_refine(method, member.table, member.sparse, dist)
    if survey is None:
        return isoflop_sparsity(flops_at(member), target, refine=refine)

    def floor_at(s: float) -> float:
        return flops_at(survey.member(member.ift, s) if s > 0 else member)(S_MAX)

    return isoflop_or_explain(flops_at(member), target, member.s, member.ift, floor_at, refine)
