"""Per-layer FLOPs from one shape trace, and the dense / sparse / training totals built on them.

Convention (docs/architecture.md, "FLOPs"): 2 FLOPs per multiply-accumulate, exactly what
``torch.utils.flop_counter.FlopCounterMode`` counts for the whole model: conv and linear
(the *weight ops*, one :class:`Layer` each) and every other op it knows (bmm/matmul of
attention, scaled-dot-product attention, einsum, ...), kept as :class:`Op` rows of the table.
Sparsity scales only the weight ops (each by its density, nonzero / all weights); the other
ops cost the same at any sparsity, so Iso-FLOP matching and the training-FLOP log include them.
A training step costs forward + backward = 3x the forward, plus whatever the method adds.

FLOPs are per *unit*: per sample for images, per token for language models (``unit='token'``:
the per-sequence counts divided by the sequence length), so ``train_flops += 3 * fwd * n``
holds with n = samples or tokens of the batch.

The trace runs the model once on the ``meta`` device (``torch.func.functional_call`` with meta
copies of the parameters), so tracing a 10x-widened model costs no memory and no compute.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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
class Op:
    """FLOPs per unit of ops without a weight to sparsify (attention matmuls, SDPA, einsum)."""

    name: str  # the aten op, e.g. "aten.bmm"
    fwd_flops: int


@dataclass(frozen=True)
class LayerTable:
    """All Conv/Linear layers of a model in execution order (first = stem, last = head), plus
    the FLOPs of the other ops (``ops``), per ``unit`` ("sample" or "token")."""

    layers: tuple[Layer, ...]
    ops: tuple[Op, ...] = ()
    unit: str = "sample"

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

    def other_fwd(self) -> int:
        """Forward FLOPs per unit of the ops sparsity cannot reduce."""
        return sum(op.fwd_flops for op in self.ops)

    def dense_fwd(self) -> int:
        """Forward FLOPs per unit with every weight dense (weight ops + other ops)."""
        return sum(layer.fwd_flops for layer in self.layers) + self.other_fwd()

    def sparse_fwd(self, density: Mapping[str, float]) -> float:
        """Forward FLOPs per unit counting only nonzero weights (missing layers are dense)."""
        weights = sum(layer.fwd_flops * density.get(layer.name, 1.0) for layer in self.layers)
        return float(weights + self.other_fwd())

    def params(self) -> int:
        """Weights of all Conv/Linear layers."""
        return sum(layer.numel for layer in self.layers)


def _flops_per_sample(module: nn.Module, out: torch.Tensor) -> int:
    """FLOPs of one call in a batch-1 trace (all outputs: a model may fold patches or heads
    into the first dimension, as MobileViT does)."""
    per_sample_out = out.numel()
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


def _meta_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: torch.empty_like(v, device="meta")
            for k, v in [*model.named_parameters(), *model.named_buffers()]}


def meta_forward(model: nn.Module, input_shape: Sequence[int], handles: Sequence[Any] = (),
                 dtype: torch.dtype = torch.float32, mode: Any = None) -> None:
    """One eval-mode forward of a single sample on the meta device (no memory, no compute: the
    hooks in ``handles`` observe it and are removed afterwards; the model is left as it was)."""
    x = torch.empty((1, *input_shape), device="meta", dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), (mode if mode is not None else contextlib.nullcontext()):
            torch.func.functional_call(model, _meta_state(model), (x,))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def trace_layers(model: nn.Module, input_shape: Sequence[int], *,
                 dtype: torch.dtype = torch.float32, unit: str = "sample") -> LayerTable:
    """One meta-device forward of a single sample: each Conv/Linear's FLOPs from hooks, every
    other op FlopCounterMode counts as :class:`Op` rows. ``dtype=torch.long`` feeds token ids;
    ``unit='token'`` divides by the sequence length (the last input dimension)."""
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
    counter = FlopCounterMode(display=False)
    meta_forward(model, input_shape, handles, dtype, counter)
    per = int(input_shape[-1]) if unit == "token" else 1
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    weights = sum(flops.values())
    if counter.get_total_flops() < weights:
        raise TypeError("FlopCounterMode counted fewer FLOPs than the Conv/Linear hooks; a "
                        "layer's forward does not run its own weight op")
    layers = tuple(Layer(n, shapes[n], _per_unit(flops[n], per)) for n in order)
    return LayerTable(layers, _other_ops(by_op, weights, per), unit)


WEIGHT_OPS = ("aten.convolution", "aten.addmm", "aten.mm")


def _other_ops(by_op: Mapping[str, int], weights: int, per: int) -> tuple[Op, ...]:
    """FlopCounterMode's per-op counts less the weight ops' share, as per-unit Op rows.

    Linear on a 3-d input runs as bmm/mm, so the weight share is taken first from the weight
    op names, then from the rest in name order; what remains is the ops' own FLOPs."""
    rest = weights
    out: dict[str, int] = {}
    for name in [*[n for n in WEIGHT_OPS if n in by_op], *sorted(set(by_op) - set(WEIGHT_OPS))]:
        take = min(rest, by_op[name])
        rest -= take
        if by_op[name] - take:
            out[name] = by_op[name] - take
    return tuple(Op(n, _per_unit(v, per)) for n, v in out.items())


def _per_unit(flops: int, per: int) -> int:
    if flops % per:
        raise ValueError(f"{flops} FLOPs per sequence do not divide by its {per} tokens")
    return flops // per


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
