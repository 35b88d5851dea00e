"""Reading dataset config keys, shared by the file-backed and synthetic loaders.

Config values arrive from YAML or the command line, so every check turns a bad value into a
one-line ``UserError`` that names the key (``dataset.<key>``) and what it accepts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..utils.errors import UserError
from .base import generator

_SUBSET_SEED = 0x5B5E7  # fixed: a subset must not change with the run seed (comparable runs)


def int_option(cfg: Mapping[str, Any], key: str, default: int | None, *, minimum: int = 1
               ) -> int | None:
    """``cfg[key]`` as an int >= ``minimum`` (None stays None); anything else is a UserError."""
    value = cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"dataset.{key}={value!r} is invalid; use an integer >= {minimum}")
    return value


def data_root(cfg: Mapping[str, Any], default: str) -> Path:
    """``dataset.root`` as an absolute path (relative to the working directory: Hydra does not
    chdir), so error messages say exactly where we looked."""
    root = cfg.get("root") or default
    return Path(os.path.abspath(os.path.expanduser(str(root))))


def subset_indices(size: int | None, total: int, key: str) -> torch.Tensor | None:
    """Indices of a fixed random subset of ``size`` items out of ``total`` (None: use all).

    ``size`` comes from ``int_option(cfg, key, None)``. Random rather than first-N so that
    class-sorted user sets stay balanced; seeded by a constant so every run of a sweep sees the
    same subset.
    """
    if size is None:
        return None
    if size > total:
        raise UserError(f"dataset.{key}={size} exceeds the {total} available images; "
                        f"use at most {total} or set dataset.{key}=null")
    order = torch.randperm(total, generator=generator(_SUBSET_SEED, total))
    return order[:size].sort().values
