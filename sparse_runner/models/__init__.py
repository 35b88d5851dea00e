"""Model registry, one small module per family. ``build_model(cfg, ...)`` is the one entry point.

``model.name`` picks the family: ``resnet18`` / ``resnet34`` (:mod:`.resnet`), ``timm``
(:mod:`.timm_zoo`, widened by :mod:`.timm_wide`), ``torchvision`` (:mod:`.torchvision_zoo`),
``custom`` (:mod:`.custom`), ``gpt`` (:mod:`.gpt`), ``hf`` (:mod:`.hf`, any transformers
causal LM), ``mlp`` (:mod:`.mlp`) and ``cnn1d`` (:mod:`.cnn1d`). The presets (``model=mobilenetv2``,
``mobilevit_s``, ``botnet50``, ``gpt3_small``) are configs of these families.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from ..utils.errors import UserError
from ..utils.registry import Registry
from .base import Factory, count_params, takes
from .cnn1d import build_cnn1d
from .custom import build_custom
from .gpt import build_gpt
from .hf import build_hf
from .mlp import build_mlp
from .resnet import DEPTHS, ResNet
from .timm_zoo import build_timm
from .torchvision_zoo import build_torchvision

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

CIFAR_STEM_MAX_SIZE = 64  # inputs up to 64x64 get the CIFAR stem (3x3, stride 1, no max-pool)


def _resnet(depth_name: str) -> Factory:
    @takes("image")
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
MODELS.register("timm")(build_timm)
MODELS.register("torchvision")(build_torchvision)
MODELS.register("custom")(build_custom)
MODELS.register("gpt")(build_gpt)
MODELS.register("hf")(build_hf)
MODELS.register("mlp")(build_mlp)
MODELS.register("cnn1d")(build_cnn1d)


def model_inputs(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The input kinds ("image", "text") the configured model takes."""
    return tuple(getattr(MODELS.get(str(cfg["name"])), "inputs", ("image",)))


FIXES = {"image": ("an image dataset (digits, cifar10, cifar100, imagenet, synthetic)",
                   "model=resnet18"),
         "text": ("a text dataset (dataset=shakespeare or dataset=text dataset.path=<file>)",
                  "model=gpt"),
         "signal": ("a 1-D signal dataset (dataset=mnist1d)", "model=cnn1d or model=mlp")}


def check_inputs(cfg: Mapping[str, Any], kind: str, dataset: str) -> None:
    """An image model on a text dataset (or the reverse): one line naming the fix."""
    kinds = model_inputs(cfg)
    if kind in kinds:
        return
    fix = " or ".join(FIXES[k][0] for k in kinds)
    raise UserError(f"model={cfg['name']} takes {' or '.join(kinds)} input but dataset={dataset} "
                    f"gives {kind}; use {fix}, or a model for {kind} (e.g. {FIXES[kind][1]})")


def build_model(cfg: Mapping[str, Any], *, in_channels: int, num_classes: int, image_size: int,
                width_mult: float = 1.0, kind: str = "image", seq_len: int = 0,
                dataset: str = "the dataset") -> nn.Module:
    """Build the model named by ``cfg['name']`` for the dataset's input (channels, classes and
    size for images; vocabulary and window ``seq_len`` for text)."""
    check_inputs(cfg, kind, dataset)
    options = {k: v for k, v in dict(cfg).items() if k != "name"}
    factory = MODELS.get(str(cfg["name"]))
    return factory(in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                   width_mult=width_mult, seq_len=seq_len, **options)


__all__ = ["MODELS", "build_model", "check_inputs", "count_params", "model_inputs"]
