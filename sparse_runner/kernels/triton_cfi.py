"""Triton kernels of the constant fan-in products: the GPU path of ``sparse_run::cfi_*``.

Written once in Triton, they are JIT-compiled for whatever GPU runs them (no nvcc, no C++ ABI
tie to one torch build) and, on a machine without a GPU, run by Triton's interpreter
(``TRITON_INTERPRET=1``, set here when no CUDA device is visible) so the test suite executes
this exact code on the CPU. The interpreter does not check bounds: ``CHECK=True`` (tests)
checks every address against its buffer's size, sets an error code that the launcher
turns into an IndexError, and skips the access (the interpreter would touch host memory).
It is on by default under the interpreter, off on a GPU (it costs a sync per call). (tl.device_assert would need Triton's debug mode, which the
interpreter never enables).

* ``spmm``: out[b, r] = sum over entries p of row r of val(p) * src[b, col(p)] (+ bias[r]).
  Rows are the condensed weight (entries [r*k, r*k+k)) for the forward, or its CSC transpose
  (entries [ptr[r], ptr[r+1]), value vals[pos[p]]) for the gradient to the input. A program
  owns a (rows x batch) tile and consumes each row's (column, value) pairs ``Blocks.k`` at a
  time as contiguous vector loads; the gathered dense values are batch-contiguous (coalesced)
  when the launcher passes the transposed copy.
* ``sddmm``: dv[o, j] = sum_b dy[b, o] * x[b, idx[o, j]] with the batch split across programs
  into float32 (float64 for float64) partial sums, added up afterwards.
Accumulation is float32 for float32/bfloat16/float16 and float64 for float64.
Both kernels take 16-byte loads along the batch (``VEC``, :func:`batch_vec`) where every
batch-ordered operand is batch-contiguous and the batch is a multiple of 16 bytes; else the
strided path (docs/gpu-path.md, "16-byte loads").
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # no GPU: run the kernels in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from .gpu_grid import Blocks, spmm_grid, sddmm_split, use_transposed  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEFAULT_BLOCKS = Blocks()


_ERRORS = {1: "spmm read src out of bounds", 2: "spmm wrote out out of bounds",
           3: "sddmm read dy out of bounds", 4: "sddmm read x out of bounds",
           5: "spmm read an index entry out of bounds"}


@triton.jit
def _flag(err, bad, code: tl.constexpr):
    """err[0] = max(err[0], code) where any ``bad`` (a check-mode address outside a buffer)."""
    tl.atomic_max(err + tl.zeros(bad.shape, tl.int32), tl.full(bad.shape, code, tl.int32),
                  mask=bad)


@triton.jit
def _spmm_kernel(err, ptr, cols, pos, vals, src, bias, out, n_rows, n_src, nb, k, nnz,
                 s_sb, s_sc, s_ob, s_or, src_numel, out_numel,
                 HAS_PTR: tl.constexpr, HAS_POS: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                 ACC: tl.constexpr, CHECK: tl.constexpr, VEC: tl.constexpr = 1):
    pid = tl.program_id(0).to(tl.int64)
    if VEC > 1:  # batch-contiguous src: nb and s_sc come divided by VEC (batch_vec)
        nb = nb * VEC
        s_sc = s_sc * VEC
    n_rt = tl.cdiv(n_rows, BLOCK_R)
    r = (pid % n_rt) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    b = (pid // n_rt) * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)
    r_ok = r < n_rows
    b_ok = b < nb
    if HAS_PTR:  # CSC rows, clamped so a malformed transpose cannot read outside
        beg = tl.load(ptr + r, mask=r_ok, other=0).to(tl.int64)
        end = tl.load(ptr + r + 1, mask=r_ok, other=0).to(tl.int64)
        beg = tl.minimum(tl.maximum(beg, 0), nnz)
        end = tl.minimum(tl.maximum(end, beg), nnz)
    else:
        beg = r * k
        end = tl.where(r_ok, beg + k, beg)
    length = end - beg
    acc = tl.zeros([BLOCK_B, BLOCK_R], dtype=ACC)
    for t0 in range(0, tl.max(length, axis=0), BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K).to(tl.int64)
        p = beg[:, None] + t[None, :]                               # [R, K] entry positions
        live = t[None, :] < length[:, None]
        if CHECK:
            _flag(err, live & ((p < 0) | (p >= nnz)), 5)
            live = live & (p >= 0) & (p < nnz)
        c = tl.load(cols + p, mask=live, other=-1).to(tl.int64)
        live = live & (c >= 0) & (c < n_src)                        # bad indices are skipped
        if HAS_POS:
            q = tl.load(pos + p, mask=live, other=0).to(tl.int64)
            live = live & (q >= 0) & (q < nnz)
        else:
            q = p
        v = tl.load(vals + q, mask=live, other=0.0).to(ACC)
        if VEC > 1:  # unit batch stride as a literal: runs of VEC along b, VEC-aligned
            off = b[:, None, None] + c[None, :, :] * s_sc
        else:
            off = b[:, None, None] * s_sb + c[None, :, :] * s_sc    # [B, R, K] gather
        m3 = b_ok[:, None, None] & live[None, :, :]
        if CHECK:
            _flag(err, m3 & ((off < 0) | (off >= src_numel)), 1)
            m3 = m3 & (off >= 0) & (off < src_numel)  # flagged, then not performed
        xg = tl.load(src + off, mask=m3, other=0.0).to(ACC)
        acc += tl.sum(xg * v[None, :, :], axis=2)
    if HAS_BIAS:
        acc += tl.load(bias + r, mask=r_ok, other=0.0).to(ACC)[None, :]
    o = b[:, None] * s_ob + r[None, :] * s_or
    m2 = b_ok[:, None] & r_ok[None, :]
    if CHECK:
        _flag(err, m2 & ((o < 0) | (o >= out_numel)), 2)
        m2 = m2 & (o >= 0) & (o < out_numel)
    tl.store(out + o, acc.to(out.dtype.element_ty), mask=m2)


@triton.jit
def _sddmm_kernel(err, idx, dy, x, part, nnz, k, n_src, nb, chunk, s_db, s_do, s_xb, s_xc,
                  dy_numel, x_numel, BLOCK_E: tl.constexpr, BLOCK_B: tl.constexpr,
                  ACC: tl.constexpr, CHECK: tl.constexpr, VEC: tl.constexpr = 1):
    pid = tl.program_id(0).to(tl.int64)
    if VEC > 1:  # batch-contiguous dy and x: nb, chunk, s_do, s_xc come divided by VEC
        nb = nb * VEC
        chunk = chunk * VEC
        s_do = s_do * VEC
        s_xc = s_xc * VEC
    n_et = tl.cdiv(nnz, BLOCK_E)
    split = pid // n_et
    e = (pid % n_et) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    e_ok = e < nnz
    o = e // k
    c = tl.load(idx + e, mask=e_ok, other=-1).to(tl.int64)
    ok = e_ok & (c >= 0) & (c < n_src)
    b_lo = split * chunk
    b_hi = tl.minimum(b_lo + chunk, nb)
    acc = tl.zeros([BLOCK_E], dtype=ACC)
    for b0 in range(b_lo, b_hi, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B).to(tl.int64)
        m = (b < b_hi)[:, None] & ok[None, :]
        if VEC > 1:  # unit batch strides as literals: runs of VEC along b, VEC-aligned
            od = b[:, None] + o[None, :] * s_do
            ox = b[:, None] + c[None, :] * s_xc
        else:
            od = b[:, None] * s_db + o[None, :] * s_do
            ox = b[:, None] * s_xb + c[None, :] * s_xc
        if CHECK:
            _flag(err, m & ((od < 0) | (od >= dy_numel)), 3)
            _flag(err, m & ((ox < 0) | (ox >= x_numel)), 4)
            m = m & (od >= 0) & (od < dy_numel) & (ox >= 0) & (ox < x_numel)
        d = tl.load(dy + od, mask=m, other=0.0).to(ACC)
        xv = tl.load(x + ox, mask=m, other=0.0).to(ACC)
        acc += tl.sum(d * xv, axis=0)
    tl.store(part + split * nnz + e, acc, mask=e_ok)


def _launch(kernel):
    """The kernel, wrapped so torch.library.triton_op (and torch.compile) can trace it."""
    return torch.library.wrap_triton(kernel)


def _error_flag(device: torch.device, check: bool) -> torch.Tensor:
    return torch.zeros(1 if check else 0, dtype=torch.int32, device=device)


def _raise_if_flagged(err: torch.Tensor, errors: dict[int, str] | None = None) -> None:
    """Check mode only (reads the flag: a device sync); ``errors`` names the codes."""
    if err.numel() and int(err[0]):
        raise IndexError(f"sparse_run triton kernel: {(errors or _ERRORS)[int(err[0])]}")


def _acc(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _extent(t: torch.Tensor) -> int:
    """Elements addressable from ``t``'s data pointer through its strides (its own extent)."""
    return 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0


def batch_vec(t: torch.Tensor, block_b: int, *operands: torch.Tensor) -> int:
    """Elements per 16-byte load along the batch when every operand is batch-contiguous
    (stride 1 along dim 0) with its column stride, the batch and the batch tile all multiples
    of it; else 1 (the strided path). Then each run of ``VEC`` batch entries a thread reads
    is contiguous and starts at a multiple of ``VEC`` elements from the data pointer (whose
    own 16-byte alignment Triton's JIT checks and specialises on), so 128-bit loads are
    exact, not a hint: the kernels get nb, the column strides and the batch chunk divided by
    ``VEC`` and multiply them back, which lets Triton's axis analysis see the divisibility."""
    vec = 16 // t.element_size()
    nb = t.shape[0]
    ok = all(o.stride(0) == 1 and o.stride(1) % vec == 0 for o in (t, *operands))
    return vec if ok and vec > 1 and nb % vec == 0 and block_b % vec == 0 else 1


def spmm(rows: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, torch.Tensor],
         k: int, src: torch.Tensor, n_rows: int, out: torch.Tensor,
         bias: torch.Tensor | None = None, blocks: Blocks = DEFAULT_BLOCKS,
         check: bool | None = None, num_warps: int = 4) -> torch.Tensor:
    """Launch ``_spmm_kernel`` into ``out`` [nb, n_rows] (any strides) from ``src`` [nb, n_src]
    (any strides: pass ``x.t().contiguous().t()`` for the coalesced batch-contiguous layout).
    ``rows = (ptr | None, cols, pos | None, vals)``."""
    ptr, cols, pos, vals = rows
    nb, n_src = src.shape
    check = INTERPRETED if check is None else check
    if n_rows == 0 or nb == 0:
        return out
    nnz = vals.numel()
    err = _error_flag(src.device, check)
    vec = batch_vec(src, blocks.batch)
    _launch(_spmm_kernel)[spmm_grid(n_rows, nb, blocks)](
        err if check else cols, ptr if ptr is not None else cols, cols,
        pos if pos is not None else cols, vals, src, bias if bias is not None else vals, out,
        n_rows, n_src, nb // vec, k, nnz, src.stride(0), src.stride(1) // vec, out.stride(0),
        out.stride(1), _extent(src), _extent(out),
        HAS_PTR=ptr is not None, HAS_POS=pos is not None, HAS_BIAS=bias is not None,
        BLOCK_R=blocks.rows, BLOCK_B=blocks.batch, BLOCK_K=blocks.k, ACC=_acc(src.dtype),
        CHECK=check, VEC=vec, num_warps=num_warps)
    _raise_if_flagged(err)
    return out


def sddmm(idx: torch.Tensor, dy: torch.Tensor, x: torch.Tensor,
          blocks: Blocks = DEFAULT_BLOCKS, target_programs: int | None = None,
          check: bool | None = None, num_warps: int = 4) -> torch.Tensor:
    """dv [n_out, k] (dtype of x) from dy [nb, n_out] and x [nb, n_in], any strides."""
    n_out, k = idx.shape
    nb, n_src = x.shape
    check = INTERPRETED if check is None else check
    nnz = n_out * k
    split = sddmm_split(nnz, nb, blocks, target_programs or _target_programs(x.device))
    if split.splits == 0:
        return x.new_zeros(n_out, k)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty(split.splits, nnz, dtype=acc, device=x.device)
    err = _error_flag(x.device, check)
    vec = batch_vec(x, blocks.batch, dy)  # (the chunk is a multiple of the batch tile)
    _launch(_sddmm_kernel)[split.grid](
        err if check else idx, idx, dy, x, part, nnz, k, n_src, nb // vec, split.chunk // vec,
        dy.stride(0), dy.stride(1) // vec, x.stride(0), x.stride(1) // vec, _extent(dy),
        _extent(x), BLOCK_E=blocks.entries, BLOCK_B=blocks.batch, ACC=_acc(x.dtype),
        CHECK=check, VEC=vec, num_warps=num_warps)
    _raise_if_flagged(err)
    return part.sum(0).view(n_out, k).to(x.dtype)


def _target_programs(device: torch.device) -> int:
    """About four programs per SM keep every SM busy while one waits on memory."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4 * 132  # an H100's SM count: the interpreter takes the GPU's grid


def batch_major(t: torch.Tensor) -> torch.Tensor:
    """Same values, batch-contiguous storage (a coalesced gather) for large batches."""
    return t.t().contiguous().t() if use_transposed(t.shape[0]) else t.contiguous()


def forward(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            bias: torch.Tensor | None, blocks: Blocks = DEFAULT_BLOCKS,
            check: bool | None = None) -> torch.Tensor:
    """Y = X W^T + bias through the condensed weight."""
    out = x.new_empty(x.shape[0], values.shape[0])
    rows = (None, indices.contiguous(), None, values.contiguous())
    b = None if bias is None else bias.contiguous()
    return spmm(rows, values.shape[1], batch_major(x), values.shape[0], out, b, blocks, check)


def backward_input(grad: torch.Tensor, values: torch.Tensor, t_index: torch.Tensor,
                   n_in: int, blocks: Blocks = DEFAULT_BLOCKS, check: bool | None = None
                   ) -> torch.Tensor:
    """dX = dY W through the CSC transpose ``t_index`` (cfi_transpose_index) of the index."""
    nnz = values.numel()
    t = t_index.contiguous()
    rows = (t[: n_in + 1], t[n_in + 1: n_in + 1 + nnz], t[n_in + 1 + nnz:],
            values.contiguous().view(-1))
    out = grad.new_empty(grad.shape[0], n_in)
    return spmm(rows, 0, batch_major(grad), n_in, out, None, blocks, check)


def backward_weight(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor,
                    blocks: Blocks = DEFAULT_BLOCKS, check: bool | None = None) -> torch.Tensor:
    """dV = (dY^T X) sampled at the nonzeros."""
    return sddmm(indices.contiguous(), batch_major(grad), batch_major(x), blocks, check=check)
