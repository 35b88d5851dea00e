"""The official Sparse-IFT FLOP budget, beside ours (``sparse.flop_budget=official``).

Ours (flops.py): 2 FLOPs per multiply-accumulate of every Conv/Linear, nothing else; the CIFAR
ResNet-18 (100 classes) costs 1,110,937,600 forward FLOPs per image.

The official code's profiler (CerebrasResearch/Sparse-IFT, ``cbsparse``) counts adds +
multiplies + logical + other ops of the modules it sees:

* Conv: ``numel(W)·H·W`` multiplies and ``(numel(W) − 1)·H·W`` adds per image, numel of the
  whole kernel (so one add per output position less than 2 per MAC); Linear likewise with ``in − 1`` adds per output; a bias
  adds one per output element. Sparse layers scale both by their density.
* BatchNorm (counted as in training, even in eval): 2 reductions of ``C·(N·HW − 1)`` adds, a
  square, a subtraction, a division and the affine multiply-add per element, one square root per
  channel: ``7·numel − C``. LayerNorm the same with the whole sample as one group.
* Activations and pooling count only when they are modules; the official CIFAR ResNet-18 calls
  ReLU and average pooling as functions, so its budget has none, and neither has ours here.

That gives the official launcher's ``--flop_budget 1115226800`` for the CIFAR ResNet-18 exactly
(0.39% above ours). Because the BN part grows with width and does not shrink with density, the
official budget makes a Sparse Wide model slightly sparser at the same s.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch import nn

from .tables import LayerTable, meta_forward, trace_layers

BUDGETS = ("ours", "official")
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)


@dataclasses.dataclass(frozen=True)
class OfficialCount:
    """Official forward FLOPs per image: a layer table whose Conv/Linear FLOPs follow the
    official rule (density-scaled like ours) plus the ops density does not touch."""

    table: LayerTable
    fixed: int  # norms and bias adds

    def dense(self) -> int:
        return self.table.dense_fwd() + self.fixed


def _norm_flops(module: nn.Module, x: torch.Tensor) -> int:
    """Per image: BatchNorm reduces per channel (C groups), LayerNorm, as the official profiler
    counts it, over the whole sample (1 group, whatever its normalized_shape)."""
    n = x.numel() // x.shape[0]
    if isinstance(module, nn.LayerNorm):
        groups, affine = 1, module.elementwise_affine
    else:
        groups, affine = x.shape[1], module.affine
    # 2 reductions of (n/groups - 1) adds per group, subtract, [bias add]; square, divide,
    # [scale]; one square root per group
    extra = 2 * n if affine else 0
    return 2 * (n - groups) + n + 2 * n + extra + groups


def _fixed_ops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Norm and bias FLOPs per image from one meta-device forward."""
    total = 0
    handles = []

    def norm_hook(mod: nn.Module, inp, _out) -> None:
        nonlocal total
        total += _norm_flops(mod, inp[0])

    def bias_hook(mod: nn.Module, _inp, out) -> None:
        nonlocal total
        if getattr(mod, "bias", None) is not None:
            total += out.numel() // out.shape[0]

    for module in model.modules():
        if isinstance(module, NORMS):
            handles.append(module.register_forward_hook(norm_hook))
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            handles.append(module.register_forward_hook(bias_hook))
    meta_forward(model, input_shape, handles)
    return total


def official_count(model: nn.Module, input_shape: Sequence[int],
                   table: LayerTable | None = None) -> OfficialCount:
    """The official profiler's forward FLOPs per image of ``model`` (see the module docstring)."""
    table = table or trace_layers(model, input_shape)
    layers = []
    for layer in table:
        # ours: 2·fan_in per output element. Official adds: (numel(W) - 1) per output *position*
        # for a conv (numel of the whole kernel: one add less per position, not per channel),
        # (in - 1) per output feature for a linear layer.
        outputs = layer.fwd_flops // (2 * math.prod(layer.shape[1:]))
        less = outputs // layer.shape[0] if len(layer.shape) > 2 else outputs  # conv: per position
        layers.append(dataclasses.replace(layer, fwd_flops=layer.fwd_flops - less))
    return OfficialCount(dataclasses.replace(table, layers=tuple(layers)),
                         _fixed_ops(model, input_shape))


@dataclasses.dataclass(frozen=True)
class Budget:
    """What the Iso-FLOP search matches under ``sparse.flop_budget``: the trained model's
    per-layer table and fixed ops, against the dense baseline's total."""

    name: str
    table: LayerTable
    fixed: int
    target: int


def official_budget(baseline: nn.Module, model: nn.Module, input_shape: Sequence[int],
                    table: LayerTable) -> Budget:
    """The official budget of ``baseline`` and the official count of the transformed ``model``."""
    base = official_count(baseline, input_shape)
    mine = official_count(model, input_shape, table)
    return Budget("official", mine.table, mine.fixed, base.dense())
