"""What every model factory receives and the checks shared by the families.

A factory is ``f(*, in_channels, num_classes, image_size, seq_len, width_mult, **options)``:
``num_classes`` is the class count for images and the vocabulary size for text; ``seq_len``
is the longest sequence a text model must take (0 for images). Each factory declares the
input kind it takes (``inputs``) so an image model on a text dataset, and the reverse, is a
one-line error before anything is built.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..utils.errors import UserError

Factory = Callable[..., nn.Module]
WIDE_FAMILIES = ("resnet18", "resnet34", "torchvision resnet*/wide_resnet*/resnext*",
                 "timm mobilenetv2_*",
                 "timm mobilevit_*", "timm botnet*", "gpt",
                 "hf (gpt2, llama, mistral, qwen2, qwen3, gpt_neox)")


def takes(*kinds: str) -> Callable[[Factory], Factory]:
    """Declare the input kinds ("image", "text") a factory accepts."""
    def deco(factory: Factory) -> Factory:
        factory.inputs = kinds  # type: ignore[attr-defined]
        return factory
    return deco


def no_width_knob(what: str, width_mult: float) -> None:
    """ift=wide on a model without a width knob: one line naming the families that have one."""
    if float(width_mult) != 1.0:
        raise UserError(f"ift=wide needs a width knob and {what} has none; supported families: "
                        f"{', '.join(WIDE_FAMILIES)} (docs/models.md explains how to add one); "
                        "use ift=parallel, factorized or doped for this model")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def options_only(options: dict[str, Any], allowed: set[str], model: str) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"model={model} has no option {unknown[0]!r}; valid: "
                        f"{', '.join(sorted(allowed))}")
