"""Per-layer FLOPs from one shape trace, and the dense / sparse / training totals built on them.

Convention (docs/architecture.md, "FLOPs"): 2 FLOPs per multiply-accumulate of conv/linear (what
``torch.utils.flop_counter.FlopCounterMode`` counts); other ops are not counted. A training
step costs forward + backward = 3x the forward, plus whatever the sparsity method adds.
Sparse FLOPs scale each layer's dense FLOPs by its density (nonzero weights / all weights).

The trace runs the model once on the ``meta`` device (``torch.func.functional_call`` with meta
copies of the parameters), so tracing a 10x-widened model costs no memory and no compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

TRAIN_FLOPS_FACTOR = 3  # forward + backward (dX and dW, each as costly as the forward)


@dataclass(frozen=True)
class Layer:
    """One Conv/Linear weight: its parameter name, shape and dense forward FLOPs per sample."""

    name: str
    shape: tuple[int, ...]
    fwd_flops: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LayerTable:
    """All Conv/Linear layers of a model in execution order (first = stem, last = head)."""

    layers: tuple[Layer, ...]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def dense_fwd(self) -> int:
        """Forward FLOPs per sample with every weight dense."""
        return sum(layer.fwd_flops for layer in self.layers)

    def sparse_fwd(self, density: Mapping[str, float]) -> float:
        """Forward FLOPs per sample counting only nonzero weights (missing layers are dense)."""
        return float(sum(layer.fwd_flops * density.get(layer.name, 1.0) for layer in self.layers))

    def params(self) -> int:
        """Weights of all Conv/Linear layers."""
        return sum(layer.numel for layer in self.layers)


def _flops_per_sample(module: nn.Module, out: torch.Tensor) -> int:
    per_sample_out = out.numel() // out.shape[0]
    if isinstance(module, nn.Linear):
        return 2 * per_sample_out * module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        w = module.weight
        return 2 * per_sample_out * (w.shape[1] * math.prod(w.shape[2:]))
    raise TypeError(f"no FLOP rule for {type(module).__name__}")


def flop_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """The modules whose weights the FLOP convention counts: every Conv and Linear."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            yield name, module


def trace_layers(model: nn.Module, input_shape: Sequence[int]) -> LayerTable:
    """Run one meta-device forward of a single sample and record each Conv/Linear's FLOPs."""
    order: list[str] = []
    flops: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for mname, module in flop_modules(model):
        pname = f"{mname}.weight" if mname else "weight"

        def hook(mod: nn.Module, _inp, out, pname: str = pname) -> None:
            if pname not in flops:
                order.append(pname)
                flops[pname] = 0
            flops[pname] += _flops_per_sample(mod, out)
            shapes[pname] = tuple(mod.weight.shape)

        handles.append(module.register_forward_hook(hook))
    state = {k: torch.empty_like(v, device="meta")
             for k, v in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.empty((1, *input_shape), device="meta")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state, (x,))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return LayerTable(tuple(Layer(n, shapes[n], flops[n]) for n in order))


def origins(table: LayerTable, baseline: LayerTable) -> dict[str, str | None]:
    """The baseline weight each weight of a transformed model stands in for.

    A replaced layer's weights live under the replaced module's path
    (``layer1.0.conv1.branches.3.weight`` -> ``layer1.0.conv1.weight``); Sparse Wide keeps the
    names. Weights with no baseline counterpart map to None.
    """
    modules = {n.rsplit(".", 1)[0] if "." in n else "": n for n in baseline.names}
    out: dict[str, str | None] = {}
    for name in table.names:
        path = name.rsplit(".", 1)[0] if "." in name else ""
        while path not in modules and "." in path:
            path = path.rsplit(".", 1)[0]
        out[name] = modules.get(path, modules.get(""))
    return out


def train_flops_per_sample(fwd_flops: float) -> float:
    """Forward + backward FLOPs of one training sample for a given forward cost."""
    return TRAIN_FLOPS_FACTOR * fwd_flops


def dense_grad_extra(table: LayerTable, density: Mapping[str, float]) -> float:
    """Per-sample FLOPs a step costs beyond ``3 f_S`` when the sparse layers' weight gradient is
    computed densely (RigL's update steps, straight-through N:M, Bernoulli-STE gates): the weight
    gradient costs ``f_D`` instead of ``f_S`` per layer, so ``sum (f_D - f_S)`` extra
    (Evci et al. 2020)."""
    return float(sum(table[n].fwd_flops * (1.0 - d) for n, d in density.items()))


def human(n: float) -> str:
    """1234567 -> '1.23M' for tables."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"
