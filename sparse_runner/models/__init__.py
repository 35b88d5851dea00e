"""Model registry. ``build_model(cfg, spec, width_mult)`` is the only entry point the runner uses."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from ..errors import UserError
from ..registry import Registry
from .resnet import DEPTHS, ResNet

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

CIFAR_STEM_MAX_SIZE = 64  # inputs up to 64x64 get the CIFAR stem (3x3, stride 1, no max-pool)


def _resnet(depth_name: str) -> Callable[..., nn.Module]:
    def build(
        *, in_channels: int, num_classes: int, image_size: int, width_mult: float = 1.0,
        stem: str = "auto", zero_init_residual: bool = True, base_width: int = 64, **_: Any,
    ) -> nn.Module:
        if stem == "auto":
            stem = "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
        width = int(base_width * width_mult)
        if width < 1:
            raise UserError(f"width multiplier {width_mult} gives zero channels; use a larger one")
        return ResNet(DEPTHS[depth_name], num_classes, in_channels, width, stem, zero_init_residual)

    return build


for _name in DEPTHS:
    MODELS.register(_name)(_resnet(_name))


def build_model(cfg: Mapping[str, Any], *, in_channels: int, num_classes: int, image_size: int,
                width_mult: float = 1.0) -> nn.Module:
    """Build the model named by ``cfg['name']`` for the dataset's channels, classes and size."""
    options = {k: v for k, v in dict(cfg).items() if k != "name"}
    factory = MODELS.get(str(cfg["name"]))
    return factory(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                   width_mult=width_mult, **options)
