"""sparse-run: an experiment runner for sparse neural-network training.

Public API for people who use the pieces in their own code. Heavy submodules load lazily so
the CLI starts fast.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SparseLinear": ("sparse_runner.kernels", "SparseLinear"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sparse_runner' has no attribute {name!r}")


__all__ = ["SparseLinear", "__version__"]
