"""``model=custom model.target=<dotted path> model.kwargs={...}``: the user's own nn.Module.

The target is a class or a factory function (``my_pkg.nets.Net`` or ``my_pkg.nets:make``).
The dataset's facts are passed when the signature takes them: ``num_classes`` (or
``vocab_size`` for text), ``in_chans`` / ``in_channels``, ``image_size`` / ``img_size``,
``block_size``; ``model.kwargs`` come on top. A target that does not import, or that does not
return an ``nn.Module``, is a one-line error. The width knob is ``model.width_arg``: the name
of a keyword the target scales its channels with (Sparse Wide passes k_sw times the value in
``model.kwargs``).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable, Mapping

from torch import nn

from ..utils.errors import UserError
from .base import no_width_knob, takes


def import_target(target: Any) -> Callable[..., Any]:
    if not isinstance(target, str) or not target.strip():
        raise UserError("model=custom needs model.target=<dotted path to a class or function>, "
                        "e.g. model.target=my_pkg.nets.Net")
    module_name, _, attr = target.replace(":", ".").rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's to fix
        raise UserError(f"model.target={target}: cannot import {module_name!r} "
                        f"({type(exc).__name__}: {' '.join(str(exc).split())}); check the path "
                        "and that its folder is on PYTHONPATH") from None
    if module is None or not hasattr(module, attr):
        raise UserError(f"model.target={target}: {module_name or '<none>'!r} has no attribute "
                        f"{attr!r}; give module.Class or module.function")
    return getattr(module, attr)


def data_kwargs(fn: Callable[..., Any], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset facts whose names ``fn`` accepts; a ``**kwargs`` factory gets timm's
    convention (``num_classes``, ``in_chans``; text: ``vocab_size``, ``block_size``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return {k: v for k, v in facts.items() if k in VAR_KW_FACTS}
    return {k: v for k, v in facts.items() if k in params}


VAR_KW_FACTS = ("num_classes", "in_chans", "vocab_size", "block_size")


@takes("image", "text")
def build_custom(*, in_channels: int, num_classes: int, image_size: int, seq_len: int = 0,
                 width_mult: float = 1.0, target: Any = None,
                 kwargs: Mapping[str, Any] | None = None, width_arg: Any = None,
                 **_: Any) -> nn.Module:
    fn = import_target(target)
    kw = dict(kwargs or {})
    if float(width_mult) != 1.0:
        if not width_arg or width_arg not in kw:
            no_width_knob(f"model.target={target} (set model.width_arg=<keyword> and give its "
                          "dense value in model.kwargs)", width_mult)
        kw[width_arg] = max(1, int(kw[width_arg] * float(width_mult)))
    facts = ({"vocab_size": num_classes, "num_classes": num_classes, "block_size": seq_len}
             if seq_len else
             {"num_classes": num_classes, "in_chans": in_channels, "in_channels": in_channels,
              "image_size": image_size, "img_size": image_size})
    try:
        model = fn(**{**data_kwargs(fn, facts), **kw})
    except TypeError as exc:
        raise UserError(f"model.target={target} rejected its arguments: "
                        f"{' '.join(str(exc).split())}; fix model.kwargs") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.target={target} returned a {type(model).__name__}, not a "
                        "torch.nn.Module; point it at an nn.Module class or a factory returning one")
    return model
