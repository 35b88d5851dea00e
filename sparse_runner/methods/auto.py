"""``method=auto`` (the default): dense when s == 0 and ift=none, otherwise RigL.

The Sparse-IFT paper trains every IFT member with RigL, so that is the default sparse method.
``auto`` is resolved before anything is built (:func:`resolve_auto`); it never trains itself.
"""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from ..sparsity.method import METHODS, store_schema
from ..sparsity.options import MethodOptions

AUTO_SPARSE_METHOD = "rigl"


store_schema("auto", MethodOptions)   # composes as method=auto; never built


def resolve_auto(cfg: DictConfig, s: float) -> DictConfig:
    """The config with ``method=auto`` replaced by the chosen method and its default options."""
    if cfg.method.name != "auto":
        return cfg
    name = "dense" if s == 0 and cfg.ift.name == "none" else AUTO_SPARSE_METHOD
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.method = OmegaConf.structured(METHODS.get(name).Options(name=name))
    return cfg
