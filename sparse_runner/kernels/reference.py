"""Pure-PyTorch reference of the constant fan-in (condensed) sparse linear products.

It runs wherever the compiled kernels cannot (no compiler, no triton, ``SPARSE_RUN_NO_EXT``) and
is the oracle the kernels are tested against. It is written the other way round from the
kernels on purpose: it scatters the condensed weight into a dense matrix and uses dense
matmuls, so a shared indexing mistake cannot hide in both. Same argument checks and error
types as the C++ side: shapes -> ValueError, dtypes -> TypeError.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_FLOATS = (torch.float32, torch.bfloat16, torch.float64, torch.float16)  # fp16: GPU (Triton)


def _fail(op: str, msg: str) -> None:
    raise ValueError(f"sparse_run::{op}: {msg}")


def _floating(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in _FLOATS:
        raise TypeError(f"sparse_run::{op}: {name} must be float32, bfloat16, float64 or "
                        f"float16, got {t.dtype}")


def _same(op: str, a: torch.Tensor, b: torch.Tensor, na: str, nb: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"sparse_run::{op}: {na} ({a.dtype}) and {nb} ({b.dtype}) must have "
                        "the same dtype")
    if a.device != b.device:
        _fail(op, f"{na} is on {a.device} but {nb} is on {b.device}")


def _indices(op: str, indices: torch.Tensor) -> None:
    if indices.dtype != torch.int32:
        raise TypeError(f"sparse_run::{op}: indices must be int32, got {indices.dtype}")
    if indices.dim() != 2 or indices.shape[1] < 1:
        _fail(op, f"indices must be 2-D [out_features, k] with k >= 1 (k is the number of "
                  f"nonzeros per row), got {list(indices.shape)}")


def check_condensed(op: str, values: torch.Tensor, indices: torch.Tensor) -> None:
    """values [n_out, k] float, indices int32 of the same shape, k >= 1."""
    _indices(op, indices)
    if values.shape != indices.shape:
        _fail(op, f"indices {list(indices.shape)} and values {list(values.shape)} must have "
                  "the same shape")
    _floating(op, "values", values)
    if values.device != indices.device:
        _fail(op, f"values is on {values.device} but indices is on {indices.device}")


def _matrix(op: str, name: str, t: torch.Tensor, cols: int | None, what: str) -> None:
    if t.dim() != 2:
        _fail(op, f"{name} must be 2-D [batch, {what}], got {list(t.shape)}")
    if cols is not None and t.shape[1] != cols:
        _fail(op, f"{name} has {t.shape[1]} columns but {what} is {cols}")


def check_forward(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                  bias: torch.Tensor | None) -> None:
    op = "cfi_forward"
    check_condensed(op, values, indices)
    _matrix(op, "x", x, None, "in_features")
    _same(op, x, values, "x", "values")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != values.shape[0]:
            _fail(op, f"bias must have shape [{values.shape[0]}], got {list(bias.shape)}")
        _same(op, bias, values, "bias", "values")


def check_backward_input(grad: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                         n_in: int) -> None:
    op = "cfi_backward_input"
    check_condensed(op, values, indices)
    if n_in < 1:
        _fail(op, f"in_features must be positive, got {n_in}")
    _matrix(op, "grad_out", grad, values.shape[0], "out_features")
    _same(op, grad, values, "grad_out", "values")


def check_backward_weight(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> None:
    op = "cfi_backward_weight"
    _indices(op, indices)
    _floating(op, "x", x)
    _matrix(op, "x", x, None, "in_features")
    _matrix(op, "grad_out", grad, indices.shape[0], "out_features")
    if grad.shape[0] != x.shape[0]:
        _fail(op, f"grad_out has batch {grad.shape[0]} but x has batch {x.shape[0]}")
    _same(op, grad, x, "grad_out", "x")
    if indices.device != x.device:
        _fail(op, f"indices is on {indices.device} but x is on {x.device}")


def check_t_index(op: str, t_index: torch.Tensor | None, indices: torch.Tensor,
                  n_in: int) -> None:
    """Shape of a caller-supplied CSC transpose (the reference does not need its contents)."""
    want = n_in + 1 + 2 * indices.numel()
    if t_index is not None and (t_index.dtype != torch.int32 or t_index.dim() != 1
                                or t_index.numel() != want):
        _fail(op, f"t_index must be the int32 output of cfi_transpose_index for these indices "
                  f"({want} elements), got {t_index.dtype} {list(t_index.shape)}")


def check_index_range(op: str, indices: torch.Tensor, n_in: int) -> None:
    """Reads the data (a device sync on GPU): call once per mask, not per step."""
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n_in):
        _fail(op, f"indices must lie in [0, in_features) = [0, {n_in}); got an index out of "
                  "range")


def check_index_range_per_call(op: str, indices: torch.Tensor, n_in: int) -> None:
    """The per-call range check: free on the CPU, skipped elsewhere, where reading the data
    is a host sync (6 per layer per training step on a GPU); devices check once per mask
    (transpose_index, SparseLinear, the condensed backend's refresh)."""
    if indices.is_cpu:
        check_index_range(op, indices, n_in)


def dense_weight(values: torch.Tensor, indices: torch.Tensor, n_in: int) -> torch.Tensor:
    """The dense [n_out, n_in] matrix of a condensed weight (differentiable in values)."""
    w = values.new_zeros(values.shape[0], n_in)
    return w.scatter_add(1, indices.long(), values)


def check_packed(x: torch.Tensor, pvals: torch.Tensor, pidx: torch.Tensor, counts: torch.Tensor,
                 bias: torch.Tensor | None, n_out: int) -> None:
    op = "cfi_forward_packed"
    _matrix(op, "x", x, None, "in_features")
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"sparse_run::{op}: x must be float32 or bfloat16, got {x.dtype}")
    _same(op, x, pvals, "x", "pvals")
    if pidx.dtype != torch.uint8 or counts.dtype != torch.int32:
        raise TypeError(f"sparse_run::{op}: pidx must be uint8 and counts int32")
    want = [-(-n_out // 16), -(-x.shape[1] // 32)]
    if n_out < 1 or list(counts.shape) != want:
        _fail(op, f"counts must have shape [ceil(out_features / 16), ceil(in_features / 32)] "
                  f"= {want}, got {list(counts.shape)}")
    if pvals.dim() != 2 or pvals.shape[1] != 16 or pidx.shape != pvals.shape:
        _fail(op, f"pvals and pidx must both have shape [slots, 16], got {list(pvals.shape)} "
                  f"and {list(pidx.shape)}")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != n_out:
            _fail(op, f"bias must have shape [{n_out}], got {list(bias.shape)}")
        _same(op, bias, x, "bias", "x")


def check_transpose_index(indices: torch.Tensor, n_in: int) -> None:
    _indices("cfi_transpose_index", indices)
    if n_in < 1:
        _fail("cfi_transpose_index", f"in_features must be positive, got {n_in}")


def transpose_index(indices: torch.Tensor, n_in: int) -> torch.Tensor:
    """CSC transpose of the index, int32 [ptr (n_in + 1) | row (nnz) | pos (nnz)]."""
    check_transpose_index(indices, n_in)
    check_index_range("cfi_transpose_index", indices, n_in)
    flat = indices.reshape(-1).long()
    pos = torch.argsort(flat, stable=True)
    ptr = torch.cat([flat.new_zeros(1), torch.bincount(flat, minlength=n_in).cumsum(0)])
    return torch.cat([ptr, pos // indices.shape[1], pos]).int()


def forward(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            bias: torch.Tensor | None, t_index: torch.Tensor | None = None) -> torch.Tensor:
    """Y = X W^T + bias."""
    check_forward(x, values, indices, bias)
    check_index_range_per_call("cfi_forward", indices, x.shape[1])
    return F.linear(x, dense_weight(values, indices, x.shape[1]), bias)


def forward_packed(x: torch.Tensor, pvals: torch.Tensor, pidx: torch.Tensor,
                   counts: torch.Tensor, bias: torch.Tensor | None, n_out: int) -> torch.Tensor:
    """Y = X W^T + bias with W given in the packed small-batch layout (packed.py)."""
    from .packed import Packed, unpack

    check_packed(x, pvals, pidx, counts, bias, n_out)
    if int(counts.clamp(min=0).sum()) != pvals.shape[0]:
        _fail("cfi_forward_packed", f"counts add up to {int(counts.clamp(min=0).sum())} "
                                    f"slots but pvals has {pvals.shape[0]}")
    return F.linear(x, unpack(Packed(pvals, pidx, counts), n_out, x.shape[1]), bias)


def backward_input(grad: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
                   n_in: int, t_index: torch.Tensor | None = None) -> torch.Tensor:
    """dX = dY W."""
    check_backward_input(grad, values, indices, n_in)
    check_t_index("cfi_backward_input", t_index, indices, n_in)
    check_index_range_per_call("cfi_backward_input", indices, n_in)
    return grad @ dense_weight(values, indices, n_in)


def backward_weight(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """dV[o, j] = (dY^T X)[o, I[o, j]]: the dense weight gradient sampled at the nonzeros."""
    check_backward_weight(grad, x, indices)
    check_index_range_per_call("cfi_backward_weight", indices, x.shape[1])
    return (grad.t() @ x).gather(1, indices.long())
