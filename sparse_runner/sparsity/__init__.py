"""The sparsity engine: what every method shares, and nothing that makes one method itself.

``method.py`` (the hook interface and the registry), ``masks.py`` (exact-count masks kept at
zero), ``filter.py`` (which layers are sparse), ``distributions.py`` (layer budgets),
``fanin.py`` (constant fan-in), ``schedules.py`` and ``topk.py`` (pure maths), ``dst.py`` and
``pruning.py`` (the shared updaters of dynamic sparse training and pruning at init),
``gates.py``, ``shadow.py``, ``nm_solver.py`` (building blocks of L0 and N:M), ``backend.py``
(the condensed execution backend), ``options.py`` (typed method options). The methods
themselves live in :mod:`sparse_runner.methods`.
"""
from __future__ import annotations

from .distributions import layer_density, layer_nnz
from .filter import mark_dense, select_sparse
from .masks import MaskManager
from .method import (METHODS, SetupContext, SparsityMethod, planned_nnz, random_mask, register,
                     rounding_refine)

__all__ = ["METHODS", "MaskManager", "SetupContext", "SparsityMethod", "layer_density",
           "layer_nnz", "mark_dense", "planned_nnz", "random_mask", "register", "rounding_refine",
           "select_sparse"]
