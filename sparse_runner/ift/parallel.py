"""Sparse Parallel (Sparse-IFT section 2.3): a layer becomes b = round(1/(1-s)) sparse copies,
each followed by its own norm, summed: sum_j norm_j(layer_j(x)).

This is the official code's structure (a conv + BN per branch, outputs summed; 2 / 4 / 10
branches at s = 0.5 / 0.75 / 0.9) made generic: :class:`ParallelBranches` replaces the layer
itself, so any model built from Conv2d/Linear layers takes it unchanged, and the norm that
followed the layer in the model (e.g. the block's BN, zero-initialised for the residual) still
follows the sum. Linear branches use a BatchNorm over the last dimension. With ``norm: none``
the branches are linear and the sum collapses to one dense layer (the paper's remark).
b is rounded like the official ``round()`` (ties to even); the Iso-FLOP search absorbs the
rounding.

``sum_norm: drop`` reproduces the official CIFAR forward ReLU(Σⱼ BNⱼ(convⱼ x)): the norm that
followed the layer (found by tracing which norm consumes the layer's output) becomes an
identity, so only plain blocks keep their zero-initialised residual BN.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..utils.errors import UserError
from ..flops.tables import meta_forward
from .base import IFTS, Builder, expansion
from ._swap import IFTModule, Layer, LayerSwap, batch_norm, fresh_copy, io


def branches(s: float) -> int:
    """Number of parallel branches k_sp = 1/(1-s), rounded (at least 1)."""
    return max(1, round(expansion(s)))


class ParallelBranches(IFTModule):
    """sum_j norms[j](branches[j](x)); branch 0 is the original layer (its weights kept)."""

    def __init__(self, layers: list[Layer], norms: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norms[0](self.branches[0](x))
        for layer, norm in zip(self.branches[1:], self.norms[1:]):
            out = out + norm(layer(x))
        return out

    def describe(self) -> dict[str, Any]:
        return {"branches": len(self.branches)}


@IFTS.register("parallel")
class Parallel(LayerSwap):
    name = "parallel"
    grouped_ok = True  # a branch is a copy of the layer, groups included
    options = {**LayerSwap.options, "norm": "batch", "sum_norm": "keep"}
    choices = {"norm": ("batch", "none"), "sum_norm": ("keep", "drop")}

    def build(self, build: Builder, s: float, input_shape: Sequence[int]) -> nn.Module:
        self._input_shape = tuple(input_shape)
        return super().build(build, s, input_shape)

    def transform(self, model: nn.Module, s: float, keep: set[str]) -> nn.Module:
        model = super().transform(model, s, keep)
        if self.cfg["sum_norm"] == "drop":
            for name in norms_after(model, self._input_shape):
                model.set_submodule(name, nn.Identity())
        return model

    def replace(self, layer: Layer, s: float) -> nn.Module:
        b = branches(s)
        layers = [layer] + [fresh_copy(layer) for _ in range(b - 1)]
        norms = [batch_norm(layer, io(layer)[1]) if self.cfg["norm"] == "batch" else nn.Identity()
                 for _ in range(b)]
        return ParallelBranches(layers, norms)

    def describe(self, s: float) -> dict[str, Any]:
        return {"branches": branches(s), "norm": self.cfg["norm"], "sum_norm": self.cfg["sum_norm"],
                "exclude": list(self.cfg["exclude"])}


def norms_after(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Names of the norm modules fed directly by a ParallelBranches output (one meta forward)."""
    outputs: list[torch.Tensor] = []  # held, so no other tensor can reuse their ids
    found: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, ParallelBranches):
            handles.append(module.register_forward_hook(
                lambda _m, _i, out: outputs.append(out)))
        elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            handles.append(module.register_forward_hook(
                lambda _m, inp, _o, name=name: found.append(name)
                if any(inp[0] is o for o in outputs) else None))
    meta_forward(model, input_shape, handles)
    found = list(dict.fromkeys(found))
    if not found:
        raise UserError("ift.sum_norm=drop found no norm right after a Sparse Parallel layer in "
                        "this model; use ift.sum_norm=keep")
    return found
