"""Transposable N:M masks (Hubara et al. 2021): exact min-cost flow and greedy-plus-repair.

The weight, viewed as a matrix ``[out, in*kh*kw]``, is cut into M x M tiles over (rows, cols)
(not runs of M*M consecutive elements as in the reference code, which only makes the pattern
transposable block-locally; docs/methods.md, "nm"). In a full tile every row and every column keeps
exactly N weights, so the mask serves W and W^T alike.

Ragged edges (rows or columns not a multiple of M): the remainder tile of r x c real entries
(r, c <= M) is solved as a padded M x M tile whose padding can never be chosen; it keeps
``floor(N*r*c/M)`` weights with at most N in every real row and column. When only the columns
are ragged (r = M), each of the c real columns keeps exactly N and the rows share N*c (<= N
each); symmetrically for ragged rows; only the corner tile (both ragged) rounds down. The layer
density is therefore N/M up to that floor, and summary.json reports the measured nnz.

Both solvers work on all tiles of a layer at once (batched tensor ops, CPU or GPU):

* ``exact``: successive shortest augmenting paths on the flow network source -> row (cap N) ->
  col (cap 1 per edge, cost -|w|) -> sink (cap N). Starting from the empty flow the residual
  graph has no negative cycle, so each augmentation along a Bellman-Ford shortest path keeps the
  flow min-cost for its value: after F augmentations the mask has maximal kept magnitude among
  all masks of F weights meeting the caps (the LP is totally unimodular, so the LP optimum is
  this integral solution; tests check it against scipy's ``linprog``).
* ``greedy``: visit entries by decreasing |w| and keep one whenever its row and column still
  have room (no early ``break``: the reference greedy stops at the first blocked candidate and
  under-fills; docs/methods.md); then *repair*: while a tile is short, flip a shortest
  (fewest-edges) alternating path from a row with room to a column with room. Such a path exists
  whenever the flow is below its maximum, so the result always has exact counts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SOLVERS = ("exact", "greedy")
CHUNK = 8192


@dataclass
class Tiles:
    """A layer cut into M x M tiles, with per-tile capacities and the number of weights kept."""

    score: Tensor     # [T, M, M] float64, |w| (0 in padding)
    allowed: Tensor   # [T, M, M] bool, False in padding
    row_cap: Tensor   # [T, M] long: N for real rows, 0 for padding rows
    col_cap: Tensor   # [T, M] long
    target: Tensor    # [T] long: floor(N * r * c / M)
    rows: int
    cols: int

    def slice(self, a: int, b: int) -> "Tiles":
        return Tiles(self.score[a:b], self.allowed[a:b], self.row_cap[a:b], self.col_cap[a:b],
                     self.target[a:b], self.rows, self.cols)


def tile_counts(rows: int, cols: int, n: int, m: int) -> int:
    """Total weights kept in a ``rows x cols`` matrix (exact count, ragged tiles included)."""
    full_r, rem_r = divmod(rows, m)
    full_c, rem_c = divmod(cols, m)
    total = 0
    for r, nr in ((m, full_r), (rem_r, 1 if rem_r else 0)):
        for c, nc in ((m, full_c), (rem_c, 1 if rem_c else 0)):
            total += nr * nc * (n * r * c // m)
    return total


def make_tiles(matrix: Tensor, n: int, m: int) -> Tiles:
    """Pad ``matrix`` [R, C] to multiples of M and cut it into [T, M, M] tiles (row-major)."""
    rows, cols = matrix.shape
    tr, tc = -(-rows // m), -(-cols // m)
    score = matrix.new_zeros((tr * m, tc * m), dtype=torch.float64)
    score[:rows, :cols] = matrix.abs().double()
    real = torch.zeros_like(score, dtype=torch.bool)
    real[:rows, :cols] = True

    def cut(x: Tensor) -> Tensor:
        return x.view(tr, m, tc, m).permute(0, 2, 1, 3).reshape(tr * tc, m, m)

    allowed = cut(real)
    row_real = allowed.any(dim=2)
    col_real = allowed.any(dim=1)
    r = row_real.sum(1)
    c = col_real.sum(1)
    return Tiles(cut(score).contiguous(), allowed.contiguous(), row_real.long() * n,
                 col_real.long() * n, (n * r * c) // m, rows, cols)


def untile(x: Tensor, tiles: Tiles, m: int) -> Tensor:
    """Inverse of :func:`make_tiles` for a [T, M, M] tensor; returns the [R, C] matrix."""
    tr, tc = -(-tiles.rows // m), -(-tiles.cols // m)
    full = x.view(tr, tc, m, m).permute(0, 2, 1, 3).reshape(tr * m, tc * m)
    return full[: tiles.rows, : tiles.cols]


def _augment(x: Tensor, tiles: Tiles, active: Tensor, weighted: bool) -> None:
    """Flip one shortest augmenting path (source -> row -> col -> ... -> sink) in each active tile.

    Costs: ``weighted`` -> -|w| on unused edges and +|w| on used ones (min-cost flow); else 1
    per edge (fewest edges, used by the repair, whose starting flow need not be min-cost).
    """
    T, m, _ = x.shape
    inf = float("inf")
    every = bool(active.all())
    idx = torch.arange(T, device=x.device) if every else active.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    xa = x if every else x[idx]
    allowed = tiles.allowed if every else tiles.allowed[idx]
    score = tiles.score if every else tiles.score[idx]
    if not weighted:
        score = torch.ones_like(score)
    row_room = xa.sum(2) < (tiles.row_cap if every else tiles.row_cap[idx])
    col_room = xa.sum(1) < (tiles.col_cap if every else tiles.col_cap[idx])
    # Edge costs, laid out so both relaxations reduce over the last (contiguous) dimension.
    fwd_t = torch.where((allowed & ~xa).transpose(1, 2), (-score if weighted else score).transpose(1, 2),
                        inf).contiguous()                                 # [t, col j, row i]
    bwd = torch.where(xa, score, inf)                                     # [t, row i, col j]
    dr = torch.where(row_room, 0.0, inf).to(score.dtype)
    pr = torch.full_like(dr, -1, dtype=torch.long)          # predecessor col of a row (-1: source)
    dc = torch.full_like(dr, inf)
    pc = torch.full_like(pr, -1)                             # predecessor row of a col
    # Improvements below ``tol`` are rounding noise (tied weights): ignoring them keeps the
    # predecessor graph a tree, so the path trace below always ends at the source.
    tol = 1e-9 * score.amax(dim=(1, 2)).clamp_min(1e-30).unsqueeze(1)
    for _ in range(2 * m + 1):
        best, arg = (dr.unsqueeze(1) + fwd_t).min(dim=2)
        upd_c = best < dc - tol
        dc = torch.where(upd_c, best, dc)
        pc = torch.where(upd_c, arg, pc)
        best, arg = (dc.unsqueeze(1) + bwd).min(dim=2)
        upd_r = best < dr - tol
        dr = torch.where(upd_r, best, dr)
        pr = torch.where(upd_r, arg, pr)
        if not (bool(upd_c.any()) or bool(upd_r.any())):
            break
    end = torch.where(col_room, dc, inf)
    dist, j = end.min(dim=1)
    live = torch.isfinite(dist)
    rows = torch.arange(idx.numel(), device=x.device)
    for _ in range(m + 1):
        if not bool(live.any()):
            break
        i = pc[rows, j]
        xa[rows[live], i[live], j[live]] = True
        prev = pr[rows, i]
        live = live & (prev >= 0)
        xa[rows[live], i[live], prev[live]] = False
        j = torch.where(live, prev, j)
    if bool(live.any()):
        raise RuntimeError("N:M solver: augmenting path did not end at the source")
    if not every:
        x[idx] = xa


def _fill(x: Tensor, tiles: Tiles, weighted: bool) -> None:
    """Augment until every tile holds its target count (at most M*N rounds)."""
    for _ in range(int(tiles.target.max().item()) + 1 if tiles.target.numel() else 0):
        active = x.sum((1, 2)) < tiles.target
        if not bool(active.any()):
            return
        _augment(x, tiles, active, weighted)
    if bool((x.sum((1, 2)) < tiles.target).any()):
        raise RuntimeError("N:M solver could not reach the target count (infeasible tile)")


def solve_exact(tiles: Tiles) -> Tensor:
    """Maximum-magnitude mask per tile with exact counts (successive shortest paths)."""
    x = torch.zeros_like(tiles.allowed)
    _fill(x, tiles, weighted=True)
    return x


def solve_greedy(tiles: Tiles) -> Tensor:
    """Greedy by decreasing |w| without early stop, then shortest-path repair to exact counts."""
    T, m, _ = tiles.allowed.shape
    x = torch.zeros_like(tiles.allowed)
    if T == 0:
        return x
    flat = tiles.score.masked_fill(~tiles.allowed, -1.0).view(T, m * m)
    order = flat.argsort(dim=1, descending=True, stable=True)
    # Step-major, flat-indexed copies: each of the M*M sequential steps reads contiguous rows.
    base = torch.arange(T, device=x.device) * m
    ok_pos = tiles.allowed.view(T, m * m).gather(1, order).t().contiguous()
    rows = (order // m).t().contiguous() + base
    cols = (order % m).t().contiguous() + base
    room_r = tiles.row_cap.flatten().clone()     # remaining room per row / column / tile
    room_c = tiles.col_cap.flatten().clone()
    room = tiles.target.clone()
    take = torch.empty_like(ok_pos)
    for k in range(m * m):
        i, j = rows[k], cols[k]
        ok = ok_pos[k] & (room_r[i] > 0) & (room_c[j] > 0) & (room > 0)
        take[k] = ok
        okl = ok.long()
        room_r[i] -= okl
        room_c[j] -= okl
        room -= okl
    x.view(T, m * m).scatter_(1, order, take.t())
    _fill(x, tiles, weighted=False)
    return x


def transposable_mask(weight: Tensor, n: int, m: int, solver: str = "exact") -> Tensor:
    """Bool mask of ``weight``'s shape: transposable N:M over M x M tiles of [out, in*kh*kw]."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown N:M solver {solver!r}; valid: {', '.join(SOLVERS)}")
    matrix = weight.detach().reshape(weight.shape[0], -1)
    tiles = make_tiles(matrix, n, m)
    solve = solve_exact if solver == "exact" else solve_greedy
    # Tiles are independent; blocks of CHUNK keep the working set in cache on CPUs.
    x = torch.cat([solve(tiles.slice(a, a + CHUNK)) for a in range(0, tiles.score.shape[0], CHUNK)]
                  or [torch.zeros_like(tiles.allowed)])
    return untile(x, tiles, m).reshape(weight.shape).contiguous()


def row_nm_mask(weight: Tensor, n: int, m: int) -> Tensor:
    """Plain (non-transposable) N:M: top-N |w| in every run of M consecutive inputs of a row.

    A ragged last group of c < M inputs keeps ``floor(N*c/M)`` (same rule as ragged tiles)."""
    matrix = weight.detach().reshape(weight.shape[0], -1).abs()
    rows, cols = matrix.shape
    full = cols // m * m
    keep = torch.zeros_like(matrix, dtype=torch.bool)
    if full:
        groups = matrix[:, :full].reshape(rows, -1, m)
        top = groups.topk(n, dim=2).indices
        chosen = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True)
        keep[:, :full] = chosen.reshape(rows, full)
    rest, k = cols - full, n * (cols - full) // m
    if rest and k:
        top = matrix[:, full:].topk(k, dim=1).indices
        keep[:, full:] = torch.zeros_like(matrix[:, full:], dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(weight.shape)


def row_counts(rows: int, cols: int, n: int, m: int) -> int:
    """Total weights kept by :func:`row_nm_mask` in a ``rows x cols`` matrix."""
    return rows * (cols // m * n + n * (cols % m) // m)


def nm_nnz(shape: tuple[int, ...], n: int, m: int, transposable: bool) -> int:
    """Exact nonzeros of an N:M mask on a weight of ``shape`` (viewed as [out, rest])."""
    rows, cols = shape[0], math.prod(shape[1:])
    return tile_counts(rows, cols, n, m) if transposable else row_counts(rows, cols, n, m)
