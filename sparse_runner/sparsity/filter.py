"""Which Conv/Linear weights are sparse. Everything else (norms, biases, embeddings) stays dense.

The default follows Sparse-IFT: the stem (first layer executed) and the classifier head (last
layer executed) stay dense. ``sparse.dense`` lists tokens: ``stem``, ``head`` or glob patterns
on parameter names (``'*downsample*'``). Weights an IFT creates as dense by construction (the
low-rank factors of Sparse Doped) are marked with :func:`mark_dense` and never sparsified.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

from torch import nn

from ..utils.errors import UserError
from ..flops.tables import LayerTable

KEEP_DENSE_ATTR = "_sparse_run_keep_dense"


def mark_dense(param: nn.Parameter) -> nn.Parameter:
    """Mark a weight as dense by construction (excluded from every sparsity budget)."""
    setattr(param, KEEP_DENSE_ATTR, True)
    return param


def is_marked_dense(param: nn.Parameter) -> bool:
    return bool(getattr(param, KEEP_DENSE_ATTR, False))


def dense_by_filter(table: LayerTable, patterns: Iterable[str]) -> set[str]:
    """Names of the layers the ``sparse.dense`` tokens keep dense."""
    names = table.names
    dense: set[str] = set()
    for token in patterns:
        token = str(token)
        if token == "stem":
            dense.update(names[:1])
        elif token == "head":
            dense.update(names[-1:])
        else:
            hits = {n for n in names if fnmatchcase(n, token)}
            if not hits:
                raise UserError(
                    f"sparse.dense pattern {token!r} matches no Conv/Linear weight; "
                    f"names look like {names[min(1, len(names) - 1)]!r}"
                )
            dense |= hits
    return dense


def select_sparse(model: nn.Module, table: LayerTable, patterns: Iterable[str]) -> list[str]:
    """Sparse weight names in execution order: the table minus filtered and marked-dense ones."""
    dense = dense_by_filter(table, patterns)
    params = dict(model.named_parameters())
    return [n for n in table.names if n not in dense and not is_marked_dense(params[n])]
