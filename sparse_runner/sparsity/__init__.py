"""Sparse training: masks, layer-wise distributions and one module per method.

``build_method(cfg.method)`` returns the :class:`SparsityMethod` registered under
``cfg.method.name``; importing this package registers every method module listed below.
"""
from __future__ import annotations

from typing import Any, Mapping

from . import rigl, srigl, static  # noqa: F401  (register method=rigl, srigl, static)
from . import set as _set  # noqa: F401  (registers method=set; aliased: keep the builtin set)
from . import force, granet, grasp, l0, nm, snip  # noqa: F401  (the PaI / GraNet / N:M / L0 zoo)
from .base import METHODS, SetupContext, SparsityMethod, planned_nnz, random_mask, register
from .distributions import layer_density, layer_nnz
from .filter import mark_dense, select_sparse
from .masks import MaskManager


def build_method(cfg: Mapping[str, Any]) -> SparsityMethod:
    """Instantiate the method named by ``cfg['name']`` with the rest of ``cfg`` as options."""
    cls = METHODS.get(str(cfg["name"]))
    return cls({k: v for k, v in dict(cfg).items() if k != "name"})


__all__ = ["METHODS", "MaskManager", "SetupContext", "SparsityMethod", "build_method",
           "layer_density", "layer_nnz", "mark_dense", "planned_nnz", "random_mask", "register",
           "select_sparse"]
