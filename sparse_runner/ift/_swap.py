"""Shared machinery of the members that replace layers (Sparse Parallel, Factorized, Doped).

Which layers are transformed: every plain ``nn.Conv2d`` and ``nn.Linear`` except

* the stem and the head (``keep``: the first and last layers executed stay dense, as in the
  paper),
* layers matched by ``ift.exclude`` (glob patterns on module or weight names; the official
  code leaves ResNet's 1x1 shortcut convs untransformed: ``ift.exclude=['*downsample*']``),
* depthwise convs (``groups == in_channels``): left unchanged and *dense*, which keeps their
  FLOPs equal to the baseline's (appendix A.1.1: "we opt not to sparsify them").

By default the 1x1 shortcut convs are transformed too: the rule is one line for any model
built from Conv2d/Linear layers, and the Iso-FLOP search makes either choice Iso-FLOP.
Conv1d layers (the 1-D CNNs) are handled like Conv2d with a height-1 kernel. Anything the rule
cannot handle (Conv3d, a Conv/Linear subclass with its own forward,
a grouped conv for a member that needs a full matrix) is a one-line error naming the layer:
a layer is never silently skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Sequence

import math

import torch
from torch import nn

from ..utils.errors import UserError
from ..flops.tables import flop_modules
from ..sparsity.filter import mark_dense
from .base import IFTFamily

Layer = nn.Conv1d | nn.Conv2d | nn.Linear
SUPPORTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


def is_depthwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels)


def io(layer: Layer) -> tuple[int, int]:
    """(input, output) features of a Linear or channels of a conv."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels


def fan(layer: Layer) -> tuple[int, int]:
    """(D_in, D_out) of the layer as a matrix: a k x k conv is (c_in * k * k) x c_out, a
    width-k Conv1d (c_in * k) x c_out."""
    d_in, d_out = io(layer)
    if isinstance(layer, nn.modules.conv._ConvNd):
        d_in = d_in // layer.groups * math.prod(layer.kernel_size)
    return d_in, d_out


@dataclass
class Plan:
    transform: list[tuple[str, Layer]] = field(default_factory=list)
    depthwise: list[tuple[str, nn.Conv1d | nn.Conv2d]] = field(default_factory=list)


def plain_forward(module: nn.Module) -> bool:
    """A Conv2d/Linear (or a subclass) whose forward is the plain op on its own weight: the
    base classes' forward, or timm's ``Linear`` (F.linear on its weight, a TorchScript cast)."""
    forward = type(module).forward
    if forward in (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward):
        return True
    return type(module).__module__.startswith("timm.layers.linear") and isinstance(module, nn.Linear)


def refuse_unswappable(model: nn.Module, name: str, module: nn.Module, family: str) -> None:
    """One line for a layer a member cannot replace: a subclass with its own forward (it may
    transform its weight, e.g. weight standardisation), or one whose parent reads ``.weight``
    directly instead of calling it (``nn.MultiheadAttention``'s ``out_proj``)."""
    parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    fix = f"leave it out with ift.exclude=['{name}'] or use ift=none"
    if not isinstance(module, SUPPORTED) or not plain_forward(module):
        raise UserError(f"ift={family} cannot transform layer {name!r} of type "
                        f"{type(module).__name__} (only Conv1d, Conv2d and Linear whose forward is the "
                        f"plain op); {fix}")
    if isinstance(parent, nn.MultiheadAttention):
        raise UserError(f"ift={family} cannot transform {name!r}: nn.MultiheadAttention reads its "
                        f"weight directly instead of calling the layer; {fix}")


def plan_layers(model: nn.Module, keep: set[str], exclude: Sequence[str], family: str, *,
                grouped_ok: bool) -> Plan:
    """Sort the model's Conv/Linear layers into transformed / depthwise; reject the rest."""
    if isinstance(exclude, str) or not all(isinstance(p, str) for p in exclude):
        raise UserError(f"ift.exclude={exclude!r} must be a list of glob patterns, "
                        "e.g. ift.exclude=['*downsample*']")
    exclude = list(exclude)
    plan, used = Plan(), set()
    for name, module in list(flop_modules(model)):
        if name in keep:
            continue
        hits = {p for p in exclude if fnmatchcase(name, p) or fnmatchcase(f"{name}.weight", p)}
        if hits:
            used |= hits
            continue
        refuse_unswappable(model, name, module, family)
        if is_depthwise(module):
            plan.depthwise.append((name, module))
        elif isinstance(module, SUPPORTED[:2]) and module.groups > 1 and not grouped_ok:
            raise UserError(f"ift={family} cannot transform grouped conv {name!r} (groups="
                            f"{module.groups}); leave it out with ift.exclude=['{name}']")
        else:
            plan.transform.append((name, module))
    unused = [p for p in exclude if p not in used]
    if unused:
        raise UserError(f"ift.exclude pattern {unused[0]!r} matches no Conv/Linear layer; "
                        "patterns match module names such as 'layer1.0.conv1'")
    if not plan.transform:
        raise UserError(f"ift={family} found no Conv/Linear layer to transform besides the "
                        "stem, head, depthwise and excluded layers; use ift=none")
    return plan


def init_weight(layer: Layer) -> Layer:
    """Fresh weights for a new layer: Kaiming-normal fan-out for convs (the ResNets' and the
    official code's choice), PyTorch's default for Linear."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    else:
        layer.reset_parameters()
    return layer


def conv_type(like: nn.Module) -> type[nn.Conv1d] | type[nn.Conv2d]:
    """The plain conv class of ``like`` (a subclass's constructor may take other arguments)."""
    return nn.Conv1d if isinstance(like, nn.Conv1d) else nn.Conv2d


def new_layer(like: Layer, *, in_f: int, out_f: int, bias: bool, pointwise: bool = False,
              groups: int = 1) -> Layer:
    """A freshly initialised Conv1d/Conv2d/Linear (``like``'s kind) on ``like``'s device and
    dtype. Convs keep ``like``'s
    kernel, stride, padding and dilation unless ``pointwise`` (1x1, stride 1). Built on the meta
    device first, so its weights are drawn once."""
    with torch.device("meta"):
        if isinstance(like, nn.Linear):
            layer: Layer = nn.Linear(in_f, out_f, bias=bias, dtype=like.weight.dtype)
        elif pointwise:
            layer = conv_type(like)(in_f, out_f, 1, bias=bias, dtype=like.weight.dtype)
        else:
            layer = conv_type(like)(in_f, out_f, like.kernel_size, like.stride, like.padding,
                              like.dilation, groups, bias, like.padding_mode, dtype=like.weight.dtype)
    return init_weight(layer.to_empty(device=like.weight.device))


def fresh_copy(layer: Layer) -> Layer:
    """A layer with the same configuration (shape, stride, groups, bias) and new weights."""
    d_in, d_out = io(layer)
    return new_layer(layer, in_f=d_in, out_f=d_out, bias=layer.bias is not None,
                     groups=getattr(layer, "groups", 1))


def factor(layer: Layer, rank: int, *, bias: bool) -> tuple[Layer, Layer]:
    """U (the layer's kernel, stride and padding; ``rank`` outputs, no bias) and V (1x1 conv or
    Linear from ``rank`` to the layer's outputs, with a bias if ``bias``)."""
    d_in, d_out = io(layer)
    u = new_layer(layer, in_f=d_in, out_f=rank, bias=False)
    return u, new_layer(layer, in_f=rank, out_f=d_out, bias=bias, pointwise=True)


class FeatureBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last dimension of any (..., features) input, for Linear layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def batch_norm(layer: Layer, features: int) -> nn.Module:
    kw = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Linear):
        return FeatureBatchNorm(features, **kw)
    return (nn.BatchNorm1d if isinstance(layer, nn.Conv1d) else nn.BatchNorm2d)(features, **kw)


NONLINEARITIES = ("bn_relu", "bn", "linear")


def between(layer: Layer, rank: int, kind: str) -> tuple[nn.Module, nn.Module]:
    """The (norm, activation) between U and V: BatchNorm + ReLU (``bn_relu``), BatchNorm
    (``bn``) or nothing (``linear``, a plain low-rank product)."""
    norm = nn.Identity() if kind == "linear" else batch_norm(layer, rank)
    return norm, nn.ReLU(inplace=True) if kind == "bn_relu" else nn.Identity()


class IFTModule(nn.Module):
    """Base of the modules a member puts in place of a layer; ``describe`` feeds summary.json."""

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


class LowRank(IFTModule):
    """A module holding a factor pair ``u`` (rank outputs) and ``v`` (Factorized, Doped)."""

    u: Layer

    def describe(self) -> dict[str, Any]:
        # from the module's sizes, not its weight: the condensed backend replaces the weight
        u = self.u
        return {"rank": io(u)[1]}


class LayerSwap(IFTFamily):
    """A member that replaces each planned layer by ``replace(layer, s)``; depthwise convs stay
    as they are and are marked dense so the mask engine never sparsifies them."""

    requires_sparsity = True
    grouped_ok: ClassVar[bool] = False
    options: ClassVar[dict[str, Any]] = {"exclude": []}

    def transform(self, model: nn.Module, s: float, keep: set[str]) -> nn.Module:
        plan = plan_layers(model, keep, self.cfg["exclude"], self.name, grouped_ok=self.grouped_ok)
        for _, conv in plan.depthwise:
            mark_dense(conv.weight)
        for name, layer in plan.transform:
            model.set_submodule(name, self.replace(layer, s))
        return model

    def replace(self, layer: Layer, s: float) -> nn.Module:
        raise NotImplementedError
