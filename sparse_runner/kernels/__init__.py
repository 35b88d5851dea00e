"""Constant fan-in sparse linear layers backed by compiled CPU (C++) and GPU (Triton) kernels.

``SparseLinear`` (also ``sparse_runner.SparseLinear``) is the layer; ``cfi_linear`` the
functional form (inference export of trained models: :mod:`sparse_runner.export`). The kernels are the ``torch.ops.sparse_run.cfi_*``
operators (ops.py), built on first use (build.py: ``SPARSE_RUN_NO_EXT``, AOT build command)
with a pure-PyTorch fallback (reference.py). Direct sparse convolutions (ELL weights, any
mask) are the ``torch.ops.sparse_run.sconv_*`` operators (sconv_ops.py, ``sconv2d``).
"""
from __future__ import annotations

from .build import ensure as load
from .build import status
from .ops import cfi_linear
from .sconv_ops import ell_from_mask, sconv2d
from .sparse_linear import SparseLinear, condense_mask

__all__ = ["SparseLinear", "cfi_linear", "condense_mask", "ell_from_mask", "load", "sconv2d",
           "status"]
