"""Constant fan-in sparse linear layers backed by compiled CPU/CUDA kernels (see ops.py)."""
from __future__ import annotations

from .ops import cfi_linear

__all__ = ["cfi_linear"]
