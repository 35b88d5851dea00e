"""``model=torchvision model.arch=<name>``: torchvision's classification models.

Built with the dataset's class count; for inputs other than 3 channels the first conv is
rebuilt with that many inputs (same kernel, stride and padding). No weights are downloaded:
``model.weights=<file>`` loads a state dict from disk. The width knob (Sparse Wide) exists for
the basic-block ResNets (resnet18/34): they are built by :mod:`.resnet`, whose layout and
parameter names are torchvision's, at the widened width.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import UserError
from .base import no_width_knob, takes
from .resnet import DEPTHS, ResNet


def resolve_arch(arch: Any) -> str:
    from torchvision import models

    names = models.list_models(module=models)
    if isinstance(arch, str) and arch in names:
        return arch
    close = difflib.get_close_matches(str(arch), names, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; valid: {', '.join(names[:8])}, ..."
    raise UserError(f"torchvision has no classification model {arch!r}{hint}")


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise UserError("the torchvision model has no Conv2d to take the input channels")


def set_in_channels(model: nn.Module, in_channels: int) -> None:
    name, conv = first_conv(model)
    if conv.in_channels == in_channels:
        return
    model.set_submodule(name, nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,
                                        conv.stride, conv.padding, conv.dilation, conv.groups,
                                        conv.bias is not None, device=conv.weight.device))


def load_weights(model: nn.Module, weights: Any) -> None:
    path = Path(str(weights))
    if not path.is_file():
        raise UserError(f"model.weights={path} does not exist; pass a saved state_dict file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise UserError(f"model.weights={path} does not fit the model (unexpected keys such as "
                        f"{unexpected[0]!r})")


@takes("image")
def build_torchvision(*, in_channels: int, num_classes: int, image_size: int,
                      width_mult: float = 1.0, arch: Any = None, weights: Any = None,
                      kwargs: Mapping[str, Any] | None = None, **_: Any) -> nn.Module:
    """torchvision's ``arch`` for the dataset's classes and channels."""
    from torchvision import models

    name = resolve_arch(arch)
    if float(width_mult) != 1.0:
        if name not in DEPTHS:
            no_width_knob(f"torchvision {name}", width_mult)
        width = int(64 * width_mult)
        return ResNet(DEPTHS[name], num_classes, in_channels, width, "imagenet", False)
    try:
        model = models.get_model(name, weights=None, num_classes=num_classes, **dict(kwargs or {}))
    except (TypeError, ValueError) as exc:
        raise UserError(f"torchvision could not build {name}: {' '.join(str(exc).split())}") from None
    set_in_channels(model, in_channels)
    if weights:
        load_weights(model, weights)
    return model
