"""Width knobs (Sparse Wide) for timm families: MobileNetV2, ByobNet (MobileViT, BotNet).

* MobileNetV2: timm's own ``channel_multiplier`` scaled by k_sw (channels rounded to 8).
* ByobNet models (``mobilevit_*``, ``botnet*``, ...): the model config's ``width_factor``
  scaled by k_sw, and MobileViT's ``transformer_dim`` with it; head counts stay, so each
  head gets wider (the paper's rule for attention, as for GPT).
* Depthwise convs (appendix A.1.1): widening makes a depthwise conv's inputs k_sw x wider; the
  paper's rule wants its outputs 1/(1-s) x the dense count, so when the builder passes a
  :class:`~sparse_runner.ift.wide.Width` the conv gets a channel multiplier
  ``round(out_wanted / in)`` (1 at s=0.5, 2 at s=0.75) and its norm and the next pointwise
  conv follow (:func:`widen_depthwise`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import torch
from torch import nn

from ..utils.errors import UserError

# name -> (channel multiplier, depth multiplier, fix_stem_head) of timm's MobileNetV2 variants
MOBILENETV2 = {"mobilenetv2_035": (0.35, 1.0, False), "mobilenetv2_050": (0.5, 1.0, False),
               "mobilenetv2_075": (0.75, 1.0, False), "mobilenetv2_100": (1.0, 1.0, False),
               "mobilenetv2_140": (1.4, 1.0, False), "mobilenetv2_110d": (1.1, 1.2, True),
               "mobilenetv2_120d": (1.2, 1.4, True)}


def _mobilenetv2(name: str, width: float, common: Mapping[str, Any]) -> nn.Module:
    from timm.models.efficientnet import _gen_mobilenet_v2

    mult, depth, fix = MOBILENETV2[name]
    return _gen_mobilenet_v2(name, mult * float(width), depth, fix_stem_head=fix, **common)


def byob_cfg(name: str) -> Any:
    """The ByoModelCfg timm builds ``name`` from (``botnet50ts_256`` -> ``botnet50ts``)."""
    from timm.models import byoanet, byobnet, mobilevit

    for key in (name, re.sub(r"_\d+$", "", name)):
        for module in (mobilevit, byoanet, byobnet):
            if key in module.model_cfgs:
                return module.model_cfgs[key]
    return None


def _byobnet(name: str, width: float, common: Mapping[str, Any]) -> nn.Module | None:
    from timm.layers import make_divisible
    from timm.models.byobnet import ByobNet

    cfg = byob_cfg(name)
    if cfg is None:
        return None

    def scale(block: Any) -> Any:
        if isinstance(block, tuple):  # a stage given as a tuple of block configs
            return tuple(scale(b) for b in block)
        kw = dict(block.block_kwargs or {})
        if "transformer_dim" in kw:
            kw["transformer_dim"] = make_divisible(kw["transformer_dim"] * float(width))
        return dataclasses.replace(block, block_kwargs=kw)

    cfg = dataclasses.replace(cfg, blocks=scale(cfg.blocks), width_factor=cfg.width_factor * float(width))
    return ByobNet(cfg, **common)


def build_wide(name: str, width: float, common: Mapping[str, Any]) -> nn.Module | None:
    """The widened timm model, or None when the family has no width knob here."""
    import timm

    if name in MOBILENETV2:
        model = _mobilenetv2(name, width, common)
    elif name.startswith(("mobilevit_", "botnet")):
        model = _byobnet(name, width, common)
    else:
        return None
    rule = getattr(width, "depthwise_channels", None)
    if rule is not None and model is not None:
        with torch.device("meta"):
            dense = timm.create_model(name, **common)
        widen_depthwise(model, dense, rule)
    return model


# (block class name, depthwise conv, its norm, the modules between, the next conv)
DW_RULES = (("InvertedResidual", "conv_dw", "bn2", ("aa", "se"), "conv_pwl"),
            ("DepthwiseSeparableConv", "conv_dw", "bn1", ("aa", "se"), "conv_pw"),
            ("BottleneckBlock", "conv2_kxk.conv", "conv2_kxk.bn", ("conv2b_kxk", "attn"),
             "conv3_1x1.conv"))


def widen_depthwise(model: nn.Module, dense: nn.Module, rule: Any) -> None:
    """Give each depthwise conv the paper's output count ``rule(dense_out, in)``."""
    dense_mods = dict(dense.named_modules())
    for name, block in list(model.named_modules()):
        for cls, dw, norm, between, nxt in DW_RULES:
            if type(block).__name__ != cls:
                continue
            conv = block.get_submodule(dw)
            if not (isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels > 1):
                continue
            want = rule(dense_mods[f"{name}.{dw}"].out_channels, conv.in_channels)
            if want == conv.out_channels:
                continue
            for attr in between:
                if not isinstance(getattr(block, attr, None), (nn.Identity, type(None))):
                    raise UserError(f"ift=wide: depthwise conv {name}.{dw} is followed by "
                                    f"{attr}, which the paper's depthwise rule cannot resize; "
                                    "set ift.depthwise=uniform")
            block.set_submodule(dw, _conv_like(conv, conv.in_channels, want))
            _resize_norm(block.get_submodule(norm), want)
            block.set_submodule(nxt, _conv_like(block.get_submodule(nxt), want, None))


def _conv_like(conv: nn.Conv2d, c_in: int, c_out: int | None) -> nn.Conv2d:
    """``conv`` with new channel counts (depthwise groups kept = inputs), fresh weights."""
    groups = c_in if conv.groups > 1 else 1
    new = nn.Conv2d(c_in, c_out or conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, groups, conv.bias is not None, device=conv.weight.device)
    if new.weight.device.type != "meta":
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if new.bias is not None:
            nn.init.zeros_(new.bias)
    return new


def _resize_norm(norm: nn.Module, features: int) -> None:
    """Resize a BatchNorm(-Act) in place to ``features`` (weight 1, bias 0, fresh stats)."""
    if not isinstance(norm, nn.modules.batchnorm._NormBase):
        raise UserError(f"ift=wide: cannot resize {type(norm).__name__} after a depthwise conv; "
                        "set ift.depthwise=uniform")
    dev = norm.weight.device
    norm.num_features = features
    norm.weight = nn.Parameter(torch.ones(features, device=dev))
    norm.bias = nn.Parameter(torch.zeros(features, device=dev))
    norm.running_mean = torch.zeros(features, device=dev)
    norm.running_var = torch.ones(features, device=dev)
