"""Sparse Iso-FLOP Transformations (Sparse-IFT): one module per family, selected by ``ift=<name>``."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from torch import nn

from ..errors import UserError
from ..flops import trace_layers
from .base import IFTS, IFTFamily


def build_family(cfg: Mapping[str, Any]) -> IFTFamily:
    cls = IFTS.get(str(cfg["name"]))
    return cls({k: v for k, v in dict(cfg).items() if k != "name"})


def build_ift_model(cfg: Mapping[str, Any], s: float, build: Callable[[float], nn.Module],
                    input_shape: Sequence[int]) -> nn.Module:
    """Build the base model through ``build(width_mult)`` and apply the IFT family for s."""
    family = build_family(cfg)
    if family.requires_sparsity and s <= 0:
        raise UserError(f"ift={family.name} needs a sparsity s > 0 (it is parameterised by s); "
                        "set e.g. s=0.5, or use ift=none for the dense model")
    model = build(family.width_mult(s))
    names = trace_layers(model, input_shape).names
    keep = {n.rsplit(".", 1)[0] for n in (names[:1] + names[-1:])}
    return family.transform(model, s, keep)


__all__ = ["IFTS", "IFTFamily", "build_family", "build_ift_model"]
