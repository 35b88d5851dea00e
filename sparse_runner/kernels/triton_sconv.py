"""Triton kernels of the direct sparse convolutions: the GPU path of ``sparse_run::sconv_*``.

Same conventions as triton_cfi.py (interpreter without a GPU, ``CHECK`` address mode, fp32
accumulation for fp32/bf16/fp16 and fp64 for fp64, one 1-D grid decoded with gpu_grid's tile
helpers). The weight is ELL: ``values``/``index`` [O, K], ``index = c*kh*kw + i*kw + j``,
-1 for a padded slot; no im2col matrix is formed. "Positions" are the (sample, row, column)
triples of a batch flattened, so small late-stage maps (4x4) still fill a tile.

* ``_fwd_kernel``: a program owns (output positions x output channels); per step it takes
  ``Blocks.k`` entries of each of its channels, decodes (c, i, j) and gathers
  x[n, c, ho*sh - ph + i, wo*sw - pw + j] (masked at the zero padding).
* ``_dx_kernel``: scatter-free. Rows are (input channel, stride phase) pairs: an input pixel
  (h, w) of phase (h mod sh, w mod sw) only receives taps with (h + ph - i) divisible by sh,
  so the transposed index (:func:`transpose_index`, PyTorch sort, no host sync) lists per
  (channel, phase) only the (o, tap) entries that can reach it. A program owns (positions of
  the phase grid x rows) and gathers dy[n, o, (h + ph - i)/sh, (w + pw - j)/sw]; every input
  pixel is written exactly once, no atomics.
* ``_dw_kernel``: per entry, sum over positions of dy[n, o, ho, wo] * x[n, c, tap-shifted];
  positions split over programs into fp32 partial sums (as triton_cfi's sddmm), added after.

16-byte loads (``VEC`` > 1) along the output positions where a run of VEC positions is VEC
aligned, consecutive elements: dy in dW (:func:`position_vec`), and x / dy of 1x1 unpadded
stride-1 convolutions in the forward / dx (:func:`pointwise_vec`). Tap-shifted gathers start
at column j - padding, not VEC-aligned: 4-byte loads (docs/gpu-path.md, "16-byte loads").
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import triton_cfi as tk
from .gpu_grid import Blocks, cdiv, sddmm_split, spmm_grid

triton, tl = tk.triton, tk.tl
INTERPRETED = tk.INTERPRETED
# One entry per step and 8 warps: [32 channels, 1, 32 positions] tiles, 4 elements a thread.
# ptxas -v on sm_90 (fp32): forward 70 registers, dx 116, dW 105, no spills; 2 entries a
# step with 4 warps needed 248 / 255 + spills (every thread repeats the per-entry decode
# of the entries it covers, as the positions run across the warp for coalesced gathers).
DEFAULT_BLOCKS = Blocks(rows=32, batch=32, k=1, entries=64)
NUM_WARPS = 8

ERRORS = {11: "sconv read x out of bounds", 12: "sconv wrote out of bounds",
          13: "sconv read dy out of bounds", 14: "sconv read an index entry out of bounds"}


@triton.jit
def _decode_pos(q, hw, w):
    """Flat position q -> (sample, row, column) of an [n, h, w] grid with hw = h * w."""
    n = q // hw
    rem = (q - n * hw).to(tl.int32)
    r = rem // w
    return n, r, rem - r * w


@triton.jit
def _decode_tap(col, taps, kw):
    """Column c*kh*kw + i*kw + j -> (c, i, j), int32 (indices are int32)."""
    col = col.to(tl.int32)
    c = col // taps
    t = col - c * taps
    i = t // kw
    return c, i, t - i * kw


@triton.jit
def _row_range(ptr, r, r_ok, nnz):
    """(first entry, entry count) of CSC rows r, clamped to [0, nnz] (a malformed ptr
    cannot make a program read outside the entries)."""
    beg = tl.load(ptr + r, mask=r_ok, other=0).to(tl.int64)
    end = tl.load(ptr + r + 1, mask=r_ok, other=0).to(tl.int64)
    beg = tl.minimum(tl.maximum(beg, 0), nnz)
    return beg, tl.minimum(tl.maximum(end, beg), nnz) - beg


@triton.jit
def _fwd_kernel(err, idx, vals, x, out, n_out, kk, C, H, W, Ho, Wo, n_pos,
                kw, taps, sh, sw, ph, pw, sxn, sxc, sxh, sxw, son, soc, soh, sow,
                x_numel, out_numel, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_K: tl.constexpr, ACC: tl.constexpr, CHECK: tl.constexpr,
                VEC: tl.constexpr = 1):
    pid = tl.program_id(0).to(tl.int64)
    if VEC > 1:  # 1x1, stride 1, unpadded, x in aligned runs (pointwise_vec): divided by VEC
        n_pos, sxc = n_pos * VEC, sxc * VEC
    n_rt = tl.cdiv(n_out, BLOCK_R)
    r = (pid % n_rt) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    q = (pid // n_rt) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    r_ok = r < n_out
    q_ok = q < n_pos
    n, ho, wo = _decode_pos(q, Ho * Wo, Wo)
    h0 = ho * sh - ph
    w0 = wo * sw - pw
    base = n * sxn + (h0 * sxh + w0 * sxw).to(tl.int64)
    if VEC > 1:  # true where pointwise_vec allows VEC (hints inline: a jit callee drops them)
        base = tl.max_contiguous(tl.multiple_of(base, [VEC]), [VEC])
    base = base[None, None, :]
    h0 = h0[None, None, :]
    w0 = w0[None, None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_P], dtype=ACC)
    for t0 in range(0, kk, BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K).to(tl.int64)
        e = r[:, None] * kk + t[None, :]                             # [R, K] ELL slots
        live = r_ok[:, None] & (t[None, :] < kk)
        col = tl.load(idx + e, mask=live, other=-1)
        live = live & (col >= 0) & (col < C * taps)                 # padded slots skipped
        c, i, j = _decode_tap(tl.where(live, col, 0), taps, kw)
        v = tl.load(vals + e, mask=live, other=0.0).to(ACC)
        if VEC > 1:  # the one tap (0, 0) of a 1x1 unpadded kernel: always inside x
            tap = (c.to(tl.int64) * sxc)[:, :, None]
            m = live[:, :, None] & q_ok[None, None, :]
        else:
            tap = (c.to(tl.int64) * sxc + (i * sxh + j * sxw).to(tl.int64))[:, :, None]
            hi = h0 + i[:, :, None]                                  # [R, K, P]: positions
            wi = w0 + j[:, :, None]                                  # last (coalesced)
            m = (live[:, :, None] & q_ok[None, None, :] & (hi >= 0) & (hi < H)
                 & (wi >= 0) & (wi < W))
        off = base + tap
        if CHECK:
            tk._flag(err, m & ((off < 0) | (off >= x_numel)), 11)
            m = m & (off >= 0) & (off < x_numel)
        xg = tl.load(x + off, mask=m, other=0.0).to(ACC)
        acc += tl.sum(xg * v[:, :, None], axis=1)
    o = r[:, None] * soc + (n * son + (ho * soh + wo * sow).to(tl.int64))[None, :]
    m2 = r_ok[:, None] & q_ok[None, :]
    if CHECK:
        tk._flag(err, m2 & ((o < 0) | (o >= out_numel)), 12)
        m2 = m2 & (o >= 0) & (o < out_numel)
    tl.store(out + o, acc.to(out.dtype.element_ty), mask=m2)


@triton.jit
def _dx_kernel(err, ptr, cols, pos, vals, dy, dx, n_rows, n_out, nnz, C, H, W, Ho, Wo,
               Hq, Wq, n_pos, kw, taps, sh, sw, ph, pw, sgn, sgc, sgh, sgw,
               sxn, sxc, sxh, sxw, dy_numel, dx_numel, BLOCK_R: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
               CHECK: tl.constexpr, VEC: tl.constexpr = 1):
    pid = tl.program_id(0).to(tl.int64)
    if VEC > 1:  # 1x1, stride 1, unpadded, dy in aligned runs (pointwise_vec): divided by VEC
        n_pos, sgc = n_pos * VEC, sgc * VEC
    n_rt = tl.cdiv(n_rows, BLOCK_R)
    r = (pid % n_rt) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)   # (channel, phase)
    q = (pid // n_rt) * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)  # phase-grid positions
    r_ok = r < n_rows
    c, ph_id = r // (sh * sw), (r % (sh * sw)).to(tl.int32)   # r >= 0: % is exact
    a, b = ph_id // sw, ph_id % sw
    n, hq, wq = _decode_pos(q, Hq * Wq, Wq)
    q_ok = (q < n_pos)[None, None, :]
    beg, length = _row_range(ptr, r, r_ok, nnz)
    base = n * sgn + (hq * sgh + wq * sgw).to(tl.int64)
    if VEC > 1:  # true where pointwise_vec allows VEC (hints inline: a jit callee drops them)
        base = tl.max_contiguous(tl.multiple_of(base, [VEC]), [VEC])
    base = base[None, None, :]
    hq3, wq3 = hq[None, None, :], wq[None, None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_P], dtype=ACC)
    for t0 in range(0, tl.max(length, axis=0), BLOCK_K):
        t = t0 + tl.arange(0, BLOCK_K).to(tl.int64)
        p = beg[:, None] + t[None, :]                                # [R, K]
        live = t[None, :] < length[:, None]
        if CHECK:
            tk._flag(err, live & ((p < 0) | (p >= nnz)), 14)
            live = live & (p >= 0) & (p < nnz)
        code = tl.load(cols + p, mask=live, other=-1)               # o * taps + tap
        live = live & (code >= 0) & (code < n_out * taps)
        vp = tl.load(pos + p, mask=live, other=0).to(tl.int64)
        live = live & (vp >= 0) & (vp < nnz)
        v = tl.load(vals + vp, mask=live, other=0.0).to(ACC)
        o, i, j = _decode_tap(tl.where(live, code, 0), taps, kw)
        if VEC > 1:  # 1x1 unpadded, stride 1: dy at the pixel itself, always inside dy
            m = q_ok & live[:, :, None]
            off = base + (o.to(tl.int64) * sgc)[:, :, None]
        else:  # ho = (h + ph - i) / sh = hq + (a + ph - i) / sh, exact (the phase fits)
            dh = (a[:, None] + ph - i) // sh                         # [R, K]
            dw = (b[:, None] + pw - j) // sw
            ho = hq3 + dh[:, :, None]                                # [R, K, P]
            wo = wq3 + dw[:, :, None]
            m = (q_ok & live[:, :, None] & (ho >= 0) & (ho < Ho) & (wo >= 0)
                 & (wo < Wo))  # pixels past H or W read valid dy and are not stored
            off = base + (o.to(tl.int64) * sgc + (dh * sgh + dw * sgw).to(tl.int64))[:, :, None]
        if CHECK:
            tk._flag(err, m & ((off < 0) | (off >= dy_numel)), 13)
            m = m & (off >= 0) & (off < dy_numel)
        g = tl.load(dy + off, mask=m, other=0.0).to(ACC)
        acc += tl.sum(g * v[:, :, None], axis=1)
    h = a[:, None] + sh * hq[None, :]                                # [R, P] input pixels
    w = b[:, None] + sw * wq[None, :]
    ok = r_ok[:, None] & (q < n_pos)[None, :] & (h < H) & (w < W)
    o2 = (c * sxc)[:, None] + (n * sxn)[None, :] + (h * sxh + w * sxw).to(tl.int64)
    if CHECK:
        tk._flag(err, ok & ((o2 < 0) | (o2 >= dx_numel)), 12)
        ok = ok & (o2 >= 0) & (o2 < dx_numel)
    tl.store(dx + o2, acc.to(dx.dtype.element_ty), mask=ok)


@triton.jit
def _dw_kernel(err, idx, dy, x, part, nnz, kk, C, H, W, Ho, Wo, n_pos, chunk,
               kw, taps, sh, sw, ph, pw, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
               dy_numel, x_numel, BLOCK_E: tl.constexpr, BLOCK_P: tl.constexpr,
               ACC: tl.constexpr, CHECK: tl.constexpr, VEC: tl.constexpr = 1):
    pid = tl.program_id(0).to(tl.int64)
    if VEC > 1:  # dy in aligned runs (position_vec): these come divided by VEC
        n_pos, chunk, sgc = n_pos * VEC, chunk * VEC, sgc * VEC
    n_et = tl.cdiv(nnz, BLOCK_E)
    split = pid // n_et
    e = (pid % n_et) * BLOCK_E + tl.arange(0, BLOCK_E).to(tl.int64)
    e_ok = e < nnz
    o = e // kk
    col = tl.load(idx + e, mask=e_ok, other=-1)
    live = e_ok & (col >= 0) & (col < C * taps)
    c, i, j = _decode_tap(tl.where(live, col, 0), taps, kw)
    q_lo = split * chunk
    q_hi = tl.minimum(q_lo + chunk, n_pos)
    acc = tl.zeros([BLOCK_E], dtype=ACC)
    for q0 in range(q_lo, q_hi, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P).to(tl.int64)
        n, ho, wo = _decode_pos(q, Ho * Wo, Wo)
        hi = i[:, None] + (ho * sh - ph)[None, :]                    # [E, P]: positions last
        wi = j[:, None] + (wo * sw - pw)[None, :]
        m = (live[:, None] & (q < q_hi)[None, :] & (hi >= 0) & (hi < H) & (wi >= 0)
             & (wi < W))
        pd = n * sgn + (ho * sgh + wo * sgw).to(tl.int64)
        md = m
        if VEC > 1:  # true where position_vec allows VEC: see there (hints inline: a jit
            pd = tl.max_contiguous(tl.multiple_of(pd, [VEC]), [VEC])  # callee drops them)
            md = live[:, None] & (q < q_hi)[None, :]  # dy is read where the position is:
        od = (o * sgc)[:, None] + pd[None, :]  # a mask constant along each run (x's is not)
        ox = (c.to(tl.int64) * sxc)[:, None] + (n * sxn)[None, :] + (
            hi * sxh + wi * sxw).to(tl.int64)
        if CHECK:
            tk._flag(err, md & ((od < 0) | (od >= dy_numel)), 13)
            tk._flag(err, m & ((ox < 0) | (ox >= x_numel)), 11)
            md = md & (od >= 0) & (od < dy_numel)
            m = m & (ox >= 0) & (ox < x_numel)
        d = tl.load(dy + od, mask=md, other=0.0).to(ACC)
        xv = tl.load(x + ox, mask=m, other=0.0).to(ACC)
        acc += tl.sum(d * xv, axis=1)
    tl.store(part + split * nnz + e, acc, mask=e_ok)


# ------------------------------------------------------------------ launchers
Geom = Sequence[int]


def _geom(kernel: Geom, stride: Geom, padding: Geom) -> dict[str, int]:
    return {"kw": int(kernel[1]), "taps": int(kernel[0]) * int(kernel[1]),
            "sh": int(stride[0]), "sw": int(stride[1]), "ph": int(padding[0]),
            "pw": int(padding[1])}


def _check_mode(check: bool | None) -> bool:
    return INTERPRETED if check is None else check


def out_size(h: int, w: int, kernel: Geom, stride: Geom, padding: Geom) -> tuple[int, int]:
    """Output rows and columns of the convolution."""
    return ((h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)


def forward(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor, kernel: Geom,
            stride: Geom, padding: Geom, blocks: Blocks = DEFAULT_BLOCKS,
            check: bool | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = conv2d(x, W) for the ELL weight; ``out`` (any strides) may be given."""
    nb, C, H, W = x.shape
    n_out, kk = index.shape
    Ho, Wo = out_size(H, W, kernel, stride, padding)
    if out is None:
        out = x.new_empty(nb, n_out, Ho, Wo)
    n_pos = nb * Ho * Wo
    if n_pos == 0 or n_out == 0:
        return out
    check = _check_mode(check)
    err = tk._error_flag(x.device, check)
    idx, vals = index.contiguous(), values.contiguous()
    vec = pointwise_vec(x, kernel, stride, padding, blocks.batch)
    tk._launch(_fwd_kernel)[spmm_grid(n_out, n_pos, blocks)](
        err if check else idx, idx, vals, x, out, n_out, kk, C, H, W, Ho, Wo, n_pos // vec,
        **_geom(kernel, stride, padding), sxn=x.stride(0), sxc=x.stride(1) // vec,
        sxh=x.stride(2),
        sxw=x.stride(3), son=out.stride(0), soc=out.stride(1), soh=out.stride(2),
        sow=out.stride(3), x_numel=tk._extent(x), out_numel=tk._extent(out),
        BLOCK_R=blocks.rows, BLOCK_P=blocks.batch, BLOCK_K=blocks.k, ACC=tk._acc(x.dtype),
        CHECK=check, VEC=vec, num_warps=NUM_WARPS)
    tk._raise_if_flagged(err, ERRORS)
    return out


def position_vec(t: torch.Tensor, block_p: int) -> int:
    """Elements per 16-byte load along the output positions of ``t`` [N, O, Ho, Wo], or 1.

    VEC > 1 where the column stride is 1 and Wo, the row, channel and sample strides and the
    position tile are multiples of VEC. Then every aligned group of VEC positions of a tile
    (tiles and the weight gradient's chunks start at multiples of the tile) lies in one row,
    at VEC consecutive columns from a multiple of VEC, VEC-aligned elements from the data
    pointer: the hints ``_dw_kernel`` gives Triton hold. (The tap-shifted x is not aligned.)
    """
    vec = 16 // t.element_size()
    ok = t.stride(3) == 1 and all(v % vec == 0 for v in (t.shape[3], *t.stride()[:3]))
    return vec if ok and block_p % vec == 0 else 1


def pointwise_vec(t: torch.Tensor, kernel: Geom, stride: Geom, padding: Geom,
                  block_p: int) -> int:
    """:func:`position_vec` of the operand the forward (x) or the input gradient (dy) gathers,
    for a 1x1, stride-1, unpadded convolution only (the input and output grids coincide).
    Any other geometry shifts the gather by the tap's column, j - padding, per entry, so a
    run of VEC outputs starts at an input column that is not a multiple of VEC: 1."""
    ones = tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
    return position_vec(t, block_p) if ones else 1


def transpose_index(index: torch.Tensor, in_channels: int, kernel: Geom, stride: Geom,
                    padding: Geom) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ptr [C*S + 1], code [nnz], pos [nnz]) int32, S = sh*sw stride phases.

    Entries of row (c, phase) are the valid slots whose tap (i, j) reaches input pixels of
    that phase: ((i - ph) mod sh, (j - pw) mod sw); code = o * kh*kw + i*kw + j, pos = the
    slot in ``values``. Padded (-1) or out-of-range slots sort past ptr[-1]. Sort and
    searchsorted only: no host read (no sync on a GPU).
    """
    g = _geom(kernel, stride, padding)
    taps, n_rows = g["taps"], in_channels * g["sh"] * g["sw"]
    flat = index.reshape(-1).long()
    valid = (flat >= 0) & (flat < in_channels * taps)
    col = torch.where(valid, flat, 0)
    c, t = col // taps, col % taps
    phase = ((t // g["kw"] - g["ph"]) % g["sh"]) * g["sw"] + (t % g["kw"] - g["pw"]) % g["sw"]
    key = torch.where(valid, c * (g["sh"] * g["sw"]) + phase, n_rows)
    order = torch.argsort(key, stable=True)
    ptr = torch.searchsorted(key[order], torch.arange(n_rows + 1, device=index.device))
    o = order // max(index.shape[1], 1)
    return ptr.int(), (o * taps + t[order]).int(), order.int()


def backward_input(grad: torch.Tensor, values: torch.Tensor,
                   t_index: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   in_size: Sequence[int], kernel: Geom, stride: Geom, padding: Geom,
                   blocks: Blocks = DEFAULT_BLOCKS, check: bool | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """dx [N, C, H, W] = conv_transpose(dy, W) through :func:`transpose_index`."""
    nb, n_out, Ho, Wo = grad.shape
    C, H, W = (int(s) for s in in_size)
    g = _geom(kernel, stride, padding)
    Hq, Wq = cdiv(H, g["sh"]), cdiv(W, g["sw"])
    if out is None:
        out = grad.new_empty(nb, C, H, W)
    n_rows, n_pos = C * g["sh"] * g["sw"], nb * Hq * Wq
    if n_rows == 0 or n_pos == 0:
        return out
    check = _check_mode(check)
    err = tk._error_flag(grad.device, check)
    ptr, code, pos = (t.contiguous() for t in t_index)
    vec = pointwise_vec(grad, kernel, stride, padding, blocks.batch)
    tk._launch(_dx_kernel)[spmm_grid(n_rows, n_pos, blocks)](
        err if check else ptr, ptr, code, pos, values.contiguous(), grad, out, n_rows, n_out,
        values.numel(), C, H, W, Ho, Wo, Hq, Wq, n_pos // vec, **g, sgn=grad.stride(0),
        sgc=grad.stride(1) // vec, sgh=grad.stride(2), sgw=grad.stride(3), sxn=out.stride(0),
        sxc=out.stride(1), sxh=out.stride(2), sxw=out.stride(3), dy_numel=tk._extent(grad),
        dx_numel=tk._extent(out), BLOCK_R=blocks.rows, BLOCK_P=blocks.batch,
        BLOCK_K=blocks.k, ACC=tk._acc(grad.dtype), CHECK=check, VEC=vec,
        num_warps=NUM_WARPS)
    tk._raise_if_flagged(err, ERRORS)
    return out


def backward_weight(grad: torch.Tensor, x: torch.Tensor, index: torch.Tensor, kernel: Geom,
                    stride: Geom, padding: Geom, blocks: Blocks = DEFAULT_BLOCKS,
                    target_programs: int | None = None, check: bool | None = None
                    ) -> torch.Tensor:
    """dvalues [O, K] (dtype of x): the weight gradient at the ELL slots, 0 at padded ones."""
    nb, C, H, W = x.shape
    _, _, Ho, Wo = grad.shape
    n_out, kk = index.shape
    nnz, n_pos = n_out * kk, nb * Ho * Wo
    split = sddmm_split(nnz, n_pos, blocks, target_programs or tk._target_programs(x.device))
    if split.splits == 0:
        return x.new_zeros(n_out, kk)
    check = _check_mode(check)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty(split.splits, nnz, dtype=acc, device=x.device)
    err = tk._error_flag(x.device, check)
    idx = index.contiguous()
    vec = position_vec(grad, blocks.batch)
    tk._launch(_dw_kernel)[split.grid](
        err if check else idx, idx, grad, x, part, nnz, kk, C, H, W, Ho, Wo, n_pos // vec,
        split.chunk // vec, **_geom(kernel, stride, padding), sgn=grad.stride(0),
        sgc=grad.stride(1) // vec, sgh=grad.stride(2), sgw=grad.stride(3), sxn=x.stride(0),
        sxc=x.stride(1), sxh=x.stride(2), sxw=x.stride(3), dy_numel=tk._extent(grad),
        x_numel=tk._extent(x), BLOCK_E=blocks.entries, BLOCK_P=blocks.batch,
        ACC=tk._acc(x.dtype), CHECK=check, VEC=vec,
        num_warps=NUM_WARPS)
    tk._raise_if_flagged(err, ERRORS)
    return part.sum(0).view(n_out, kk).to(x.dtype)
