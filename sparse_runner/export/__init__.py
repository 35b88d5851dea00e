"""Export a trained sparse model: tensor formats (formats.py), inference modules that replace
masked Linear layers (modules.py) and the ``sparse-run-report export`` command (report.py)."""
from __future__ import annotations

from .formats import from_condensed, from_csr, index_dtype, to_condensed, to_csr
from .modules import CSRLinear, export_condensed, export_csr

__all__ = ["CSRLinear", "export_condensed", "export_csr", "from_condensed", "from_csr",
           "index_dtype", "to_condensed", "to_csr"]
