"""``model=torchvision model.arch=<name>``: torchvision's classification models.

Built with the dataset's class count; for inputs other than 3 channels the first conv is
rebuilt with that many inputs (same kernel, stride and padding). No weights are downloaded:
``model.weights=<file>`` loads a state dict from disk, and ``model.pretrained=true`` loads
torchvision's default checkpoint when torch hub's cache already holds it (else one line).
The width knob (Sparse Wide) exists for every torchvision ResNet (resnet18/34/50/101/152,
wide_resnet50_2/101_2, resnext50_32x4d, resnext101_32x8d/64x4d): they are built by
:mod:`.resnet`, whose layout and parameter names are torchvision's, at the widened width.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..utils.errors import UserError
from .base import no_width_knob, takes
from .resnet import BOTTLENECKS, DEPTHS, torchvision_resnet


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


def cached_checkpoint(name: str) -> Path | None:
    """torchvision's default checkpoint for ``name`` if torch hub already holds it (no download):
    ``$TORCH_HOME/hub/checkpoints/<file of the weights URL>``, where torchvision saves it."""
    from torchvision import models

    try:
        url = models.get_model_weights(name).DEFAULT.url
    except (ValueError, KeyError, AttributeError):
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return path if path.is_file() else None


def checkpoint(name: str, pretrained: bool, weights: Any) -> Path | None:
    """The state dict file to load: ``model.weights``, else the cache for pretrained=true."""
    if weights:
        path = Path(str(weights))
        if not path.is_file():
            raise UserError(f"model.weights={path} does not exist; pass a saved state_dict file")
        return path
    if not pretrained:
        return None
    path = cached_checkpoint(name)
    if path is None:
        raise UserError(f"model.pretrained=true but no weights for {name} are on disk (no "
                        f"download is attempted); put torchvision's checkpoint in "
                        f"{Path(torch.hub.get_dir()) / 'checkpoints'} or pass "
                        "model.weights=<state_dict file>")
    return path


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a state dict as timm does for a new dataset: the first conv adapted to the input
    channels (timm's ``adapt_input_conv``), a classifier of another class count left freshly
    initialised; any other mismatch is a one-line error."""
    from timm.models import adapt_input_conv

    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    conv = first_conv(model)[0] + ".weight"
    if conv in state and state[conv].shape[1] != own[conv].shape[1]:
        state[conv] = adapt_input_conv(own[conv].shape[1], state[conv])
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    for key in [k for k in state if k in own and state[k].shape != own[k].shape]:
        if key.rsplit(".", 1)[0] not in head:
            raise UserError(f"model.weights={path} does not fit the model ({key} has shape "
                            f"{tuple(state[key].shape)}, the model {tuple(own[key].shape)})")
        del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k.rsplit(".", 1)[0] not in head]:
        what = f"unexpected key {unexpected[0]!r}" if unexpected else f"missing key {missing[0]!r}"
        raise UserError(f"model.weights={path} does not fit the model ({what})")


def _get_model(name: str, options: dict[str, Any], image_size: int | None) -> nn.Module:
    """``models.get_model``, at the data's ``image_size`` for the models built for one size
    (the vision transformers take ``image_size``; the others reject the keyword)."""
    from torchvision import models

    if image_size is not None and "image_size" not in options:
        try:
            return models.get_model(name, weights=None, image_size=image_size, **options)
        except TypeError:
            pass
    return models.get_model(name, weights=None, **options)


@takes("image")
def build_torchvision(*, in_channels: int, num_classes: int, image_size: int,
                      width_mult: float = 1.0, arch: Any = None, pretrained: bool = False,
                      weights: Any = None, kwargs: Mapping[str, Any] | None = None,
                      **_: Any) -> nn.Module:
    """torchvision's ``arch`` for the dataset's classes and channels."""
    from torchvision import models

    name = resolve_arch(arch)
    if float(width_mult) != 1.0:
        if pretrained or weights:
            raise UserError("ift=wide builds a wider model from scratch; pretrained weights do "
                            "not fit it: set model.pretrained=false and model.weights=null")
        if name not in DEPTHS and name not in BOTTLENECKS:
            no_width_knob(f"torchvision {name}", width_mult)
        return torchvision_resnet(name, num_classes, in_channels, int(64 * width_mult))
    options = {"num_classes": num_classes, **dict(kwargs or {})}
    try:
        model = _get_model(name, options, image_size if not (pretrained or weights) else None)
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(f"torchvision could not build {name} for {image_size}x{image_size} "
                        f"inputs: {' '.join(str(exc).split())}") from None
    set_in_channels(model, in_channels)
    path = checkpoint(name, bool(pretrained), weights)
    if path is not None:
        load_weights(model, path)
    return model
