"""``model=timm model.arch=<any timm name>``: the timm zoo with the dataset's classes/channels.

Nothing here touches the network: ``model.pretrained=true`` loads a checkpoint that is already
on disk (``model.weights=<file>``, or timm's own cache: the Hugging Face hub cache or the torch
hub ``checkpoints`` folder), otherwise it is a one-line error. Unknown names get the closest
timm names as a suggestion. Models whose pretrained config fixes the input size (ViT, BotNet)
get ``img_size`` = the dataset's image size; ``model.input_size`` pins it, and a dataset of
another size is then a one-line error (BotNet's relative position tables are built for one
size). Sparse Wide widens the families in :mod:`.timm_wide`.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..utils.errors import UserError
from . import timm_wide
from .base import no_width_knob, takes


def resolve_arch(arch: Any) -> str:
    """The timm name (a ``.tag`` suffix allowed) or a one-line error with close names."""
    import timm

    if not isinstance(arch, str) or not arch:
        raise UserError("model=timm needs model.arch=<timm name>, e.g. model.arch=mobilenetv2_100")
    if timm.is_model(arch.split(".")[0]):
        return arch
    close = difflib.get_close_matches(arch.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; list them with timm.list_models()"
    raise UserError(f"timm has no model {arch!r}{hint}")


def fixed_size(arch: str) -> int | None:
    """The input size a model is built for when its config says the size is fixed, else None."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch.split(".")[0], allow_unregistered=True)
    if cfg is None or not getattr(cfg, "fixed_input_size", False):
        return None
    return int(cfg.input_size[-1])


def size_kwargs(arch: str, image_size: int, pinned: int | None) -> dict[str, int]:
    """``img_size`` for fixed-size models; a pinned size that the data does not match fails."""
    if pinned is not None and int(pinned) != image_size:
        raise UserError(f"model {arch} takes {pinned}x{pinned} inputs but the dataset gives "
                        f"{image_size}x{image_size}; use data of that size (e.g. dataset=synthetic "
                        f"dataset.shape=[3,{pinned},{pinned}] or dataset=imagenet "
                        f"dataset.image_size={pinned}) or set model.input_size=null")
    return {"img_size": image_size} if fixed_size(arch) is not None else {}


def cached_weights(arch: str) -> str | None:
    """A checkpoint for ``arch`` already in timm's caches (no download), or None."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(cfg.hf_hub_id, fname)
            if isinstance(hit, str):
                return hit
    if cfg.url:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if path.is_file():
            return str(path)
    return None


def pretrained_kwargs(arch: str, pretrained: bool, weights: Any) -> dict[str, Any]:
    if not pretrained:
        if weights:
            raise UserError("model.weights is set but model.pretrained=false; set "
                            "model.pretrained=true to load it")
        return {}
    path = str(weights) if weights else cached_weights(arch)
    if path is None:
        raise UserError(f"model.pretrained=true but no weights for {arch} are on disk (no "
                        "download is attempted); pass model.weights=<checkpoint file>")
    if not Path(path).is_file():
        raise UserError(f"model.weights={path} does not exist; pass an existing checkpoint file")
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": path}}


@takes("image")
def build_timm(*, in_channels: int, num_classes: int, image_size: int, width_mult: float = 1.0,
               arch: Any = None, pretrained: bool = False, weights: Any = None,
               input_size: Any = None, kwargs: Mapping[str, Any] | None = None,
               **_: Any) -> nn.Module:
    """The timm model ``arch`` for the dataset (classes, channels, size), widened if asked."""
    import timm

    name = resolve_arch(arch)
    extra = {**size_kwargs(name, image_size, input_size), **dict(kwargs or {})}
    common = {"num_classes": num_classes, "in_chans": in_channels, **extra}
    if float(width_mult) != 1.0:
        if pretrained:
            raise UserError("ift=wide builds a wider model from scratch; pretrained weights do "
                            "not fit it: set model.pretrained=false")
        wide = timm_wide.build_wide(name.split(".")[0], width_mult, common)
        if wide is None:
            no_width_knob(f"timm model {name}", width_mult)
        return wide
    try:
        return timm.create_model(name, **pretrained_kwargs(name, pretrained, weights), **common)
    except (TypeError, RuntimeError) as exc:
        raise UserError(f"timm could not build {name} with {common}: {' '.join(str(exc).split())}"
                        ) from None
