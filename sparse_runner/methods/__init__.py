"""The sparse-training methods: ``sparse_runner/methods/<name>.py`` is the algorithm of
``method=<name>``, with its options dataclass (the keys of ``method.*`` and their defaults).

Every module of this package is imported here, so a new method is one new file (see
docs/architecture.md, "Adding a method"); methods share machinery only through
:mod:`sparse_runner.sparsity`, never by importing each other.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

from ..sparsity.method import METHODS, SparsityMethod

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")


def build_method(cfg: Mapping[str, Any]) -> SparsityMethod:
    """Instantiate the method named by ``cfg['name']`` with the rest of ``cfg`` as options."""
    cls = METHODS.get(str(cfg["name"]))
    return cls({k: v for k, v in dict(cfg).items() if k != "name"})


__all__ = ["METHODS", "build_method"]
