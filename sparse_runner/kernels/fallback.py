"""The constant fan-in products in plain PyTorch without a dense weight: what the
``sparse_run::cfi_*`` operators run where no compiled kernel is loaded (no compiler, no
triton, ``SPARSE_RUN_NO_EXT``).

reference.py scatters the condensed weight into a dense [n_out, n_in] matrix per call: right
as an oracle, but a fallback that allocates the dense weight (and, for the weight gradient,
the dense dY^T X) on every call costs the memory the condensed layout exists to save. Here
every product gathers the inputs at the nonzeros, ``x[:, indices]`` ([batch, n_out, k]),
in batch chunks of at most :data:`CHUNK` elements: memory scales with the nonzeros, never
with n_out x n_in. Same checks and errors as reference.py.
"""
from __future__ import annotations

import torch

from . import reference

CHUNK = 1 << 22   # elements of one gathered [batch chunk, n_out, k] block (16 MiB in fp32)


def _blocks(batch: int, indices: torch.Tensor) -> list[slice]:
    """Batch slices whose gathered [rows, n_out, k] blocks hold at most CHUNK elements."""
    step = max(1, CHUNK // max(1, indices.numel()))
    return [slice(a, a + step) for a in range(0, batch, step)]


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Products and sums in float32 (float64 stays float64), as the kernels accumulate."""
    return t if t.dtype == torch.float64 else t.float()


def forward(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            bias: torch.Tensor | None, t_index: torch.Tensor | None = None) -> torch.Tensor:
    """Y[b, o] = sum_j values[o, j] * X[b, indices[o, j]] (+ bias)."""
    reference.check_forward(x, values, indices, bias)
    reference.check_index_range_per_call("cfi_forward", indices, x.shape[1])
    idx, v = indices.long(), _acc(values)
    out = x.new_empty(x.shape[0], values.shape[0])
    for b in _blocks(x.shape[0], indices):
        y = (_acc(x[b][:, idx]) * v).sum(-1)
        out[b] = y if bias is None else y + _acc(bias)
    return out


def backward_input(grad: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                   n_in: int, t_index: torch.Tensor | None = None) -> torch.Tensor:
    """dX[b, i] = sum over (o, j) with indices[o, j] = i of dY[b, o] * values[o, j]."""
    reference.check_backward_input(grad, values, indices, n_in)
    reference.check_t_index("cfi_backward_input", t_index, indices, n_in)
    reference.check_index_range_per_call("cfi_backward_input", indices, n_in)
    flat, v = indices.reshape(-1).long(), _acc(values)
    out = grad.new_empty(grad.shape[0], n_in)
    for b in _blocks(grad.shape[0], indices):
        g = _acc(grad[b])
        part = (g[:, :, None] * v).reshape(g.shape[0], -1)
        out[b] = g.new_zeros(g.shape[0], n_in).index_add_(1, flat, part)
    return out


def backward_weight(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """dV[o, j] = sum_b dY[b, o] * X[b, indices[o, j]]."""
    reference.check_backward_weight(grad, x, indices)
    reference.check_index_range_per_call("cfi_backward_weight", indices, x.shape[1])
    idx = indices.long()
    acc = _acc(x.new_zeros(indices.shape))
    for b in _blocks(x.shape[0], indices):
        acc += (_acc(grad[b])[:, :, None] * _acc(x[b][:, idx])).sum(0)
    return acc.to(x.dtype)
