"""Sparse Iso-FLOP Transformations (Sparse-IFT): one module per family, selected by ``ift=<name>``.

``none`` (the model as built), ``wide`` (wide.py), ``parallel`` (parallel.py), ``factorized``
(factorized.py) and ``doped`` (doped.py); layer selection and module surgery shared in _swap.py.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..utils.errors import UserError
from ..flops.tables import trace_layers
from . import doped, factorized, parallel, wide  # noqa: F401  (register the families)
from ._swap import IFTModule
from .base import IFTS, IFTFamily


def build_family(cfg: Mapping[str, Any]) -> IFTFamily:
    cls = IFTS.get(str(cfg["name"]))
    return cls({k: v for k, v in dict(cfg).items() if k != "name"})


def build_ift_model(cfg: Mapping[str, Any], s: float, build: Callable[[float], nn.Module],
                    input_shape: Sequence[int], input_dtype: torch.dtype = torch.float32
                    ) -> nn.Module:
    """Build the base model through ``build(width_mult)`` and apply the IFT family for s.

    The stem and head (first and last Conv/Linear executed) stay untransformed; a model may
    narrow that with a ``dense_layers`` attribute (GPT: ``("head",)``, its first Linear is an
    attention projection, not a stem)."""
    family = build_family(cfg)
    if family.requires_sparsity and s <= 0:
        raise UserError(f"ift={family.name} needs a sparsity s > 0 (it is parameterised by s); "
                        "set e.g. s=0.5, or use ift=none for the dense model")
    model = family.build(build, s, input_shape)
    names = trace_layers(model, input_shape, dtype=input_dtype).names
    kept = getattr(model, "dense_layers", ("stem", "head"))
    keep = {n.rsplit(".", 1)[0] for n in (names[:1] * ("stem" in kept) + names[-1:] * ("head" in kept))}
    return family.transform(model, s, keep)


def describe_ift(cfg: Mapping[str, Any], s: float, model: nn.Module) -> dict[str, Any]:
    """What the IFT did, for summary.json: family facts plus each replaced layer's rank/branches."""
    info = build_family(cfg).describe(s)
    layers = {name: m.describe() for name, m in model.named_modules() if isinstance(m, IFTModule)}
    return {**info, "layers": layers} if layers else info


__all__ = ["IFTS", "IFTFamily", "build_family", "build_ift_model", "describe_ift"]
