"""Transposable N:M: exact row/column counts in every tile (ragged edges included), the exact
solver's optimality (against scipy's LP), greedy+repair feasibility, and the method's STE."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from zoo_helpers import Driver, context, tiny_mlp

from sparse_runner.utils.errors import UserError
from sparse_runner.methods import build_method
from sparse_runner.sparsity.nm_solver import (make_tiles, nm_nnz, row_nm_mask, solve_exact,
                                              solve_greedy, transposable_mask)

SHAPES = [((16, 72), 4, 8), ((10, 13), 4, 8), ((24, 8, 3, 3), 2, 8), ((33, 47), 1, 8),
          ((7, 5), 2, 4), ((9, 17), 6, 8), ((3, 2), 4, 8)]


def check_tiles(mask: torch.Tensor, n: int, m: int) -> None:
    """Every full tile: rows and cols exactly N. Ragged tiles: <= N per line, exactly N along a
    full dimension, floor(N*r*c/M) in total. Nothing is kept in the padding."""
    matrix = mask.reshape(mask.shape[0], -1).double()
    tiles = make_tiles(matrix, n, m)
    x = tiles.score > 0
    assert not (x & ~tiles.allowed).any()
    rows, cols = x.sum(2), x.sum(1)
    assert (rows <= tiles.row_cap).all() and (cols <= tiles.col_cap).all()
    assert torch.equal(x.sum((1, 2)), tiles.target)
    real_r, real_c = tiles.row_cap > 0, tiles.col_cap > 0
    full_r = real_r.sum(1) == m                      # tile has all M rows -> each column has N
    full_c = real_c.sum(1) == m
    assert ((cols == n) | ~real_c)[full_r].all()
    assert ((rows == n) | ~real_r)[full_c].all()
    assert int(mask.sum()) == nm_nnz(tuple(mask.shape), n, m, True)


@pytest.mark.parametrize("solver", ["exact", "greedy"])
@pytest.mark.parametrize("shape,n,m", SHAPES)
def test_every_tile_has_exact_row_and_column_counts(shape, n, m, solver):
    gen = torch.Generator().manual_seed(hash((shape, n, m)) % 2**31)
    for _ in range(3):
        w = torch.randn(shape, generator=gen)
        check_tiles(transposable_mask(w, n, m, solver), n, m)


def test_full_layers_have_density_exactly_n_over_m():
    w = torch.randn(64, 32, 3, 3)
    for n in (1, 2, 4):
        mask = transposable_mask(w, n, 8, "greedy")
        assert int(mask.sum()) == w.numel() * n // 8
        rows = mask.reshape(64, -1)
        assert (rows.sum(1) == rows.shape[1] * n // 8).all()      # N per tile, every row
        assert (rows.sum(0) == 64 * n // 8).all()


def lp_optimum(w: np.ndarray, n: int) -> float:
    m = w.shape[0]
    rows = np.kron(np.eye(m), np.ones(m))
    cols = np.kron(np.ones(m), np.eye(m))
    res = linprog(-w.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.full(2 * m, n), bounds=(0, 1))
    return -res.fun


@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_exact_solver_matches_the_lp_optimum_and_beats_greedy(n):
    gen = torch.Generator().manual_seed(n)
    w = torch.rand(40, 8, 8, dtype=torch.float64, generator=gen)
    tiles = make_tiles(w.reshape(-1, 8), n, 8)             # 40 stacked 8x8 tiles
    exact, greedy = solve_exact(tiles), solve_greedy(tiles)
    kept_e = (tiles.score * exact).sum((1, 2))
    kept_g = (tiles.score * greedy).sum((1, 2))
    assert (kept_e >= kept_g - 1e-9).all()
    assert (kept_e > kept_g + 1e-9).any()                   # greedy is not optimal
    for t in range(0, 40, 8):
        assert float(kept_e[t]) == pytest.approx(lp_optimum(tiles.score[t].numpy(), n), abs=1e-9)


def test_greedy_never_violates_the_constraint_even_with_ties():
    """Ties and zeros are where a greedy without repair gets stuck (a bug of the reference implementation)."""
    cases = [torch.ones(16, 16), torch.zeros(8, 24), torch.randint(0, 3, (24, 40)).float(),
             torch.eye(16).repeat(1, 2)]
    for w in cases:
        for n in (1, 3, 4, 7):
            check_tiles(transposable_mask(w, n, 8, "greedy"), n, 8)


def test_plain_nm_keeps_the_top_n_of_every_group():
    w = torch.randn(6, 20)
    mask = row_nm_mask(w, 2, 4)
    groups = mask.reshape(6, 5, 4)
    assert (groups.sum(2) == 2).all()
    top = w.abs().reshape(6, 5, 4).topk(2, dim=2).values.min(2).values
    assert (w.abs().reshape(6, 5, 4)[groups].reshape(6, 5, 2).min(2).values >= top).all()
    assert int(row_nm_mask(torch.randn(3, 10), 4, 8).sum()) == nm_nnz((3, 10), 4, 8, False) == 3 * 5


def test_n_comes_from_s_and_m():
    assert build_method({"name": "nm"}).n_for(0.5) == 4
    assert build_method({"name": "nm"}).n_for(0.875) == 1
    assert build_method({"name": "nm", "m": 4}).n_for(0.5) == 2
    assert build_method({"name": "nm", "preset": "2:8"}).n_for(0.75) == 2
    with pytest.raises(UserError, match="not an integer"):
        build_method({"name": "nm"}).n_for(0.9)
    with pytest.raises(UserError, match="preset 4:8 means s=0.5"):
        build_method({"name": "nm", "preset": "4:8"}).n_for(0.75)


def test_straight_through_updates_the_dense_weights():
    model = tiny_mlp(width=16)
    method = build_method({"name": "nm", "update_every": 3, "sr_ste_decay": 0.0})
    method.setup(model, context(model, 0.5, 10))
    drive = Driver(method, model)
    weight = method.masks.params[0]
    before = method.shadow.dense[0].clone()
    drive.run(2)
    mask = method.masks.masks[0]
    moved = method.shadow.dense[0] != before
    assert moved[~mask].any()                                   # pruned weights still learn
    assert torch.equal(weight.detach(), method.shadow.dense[0] * mask)
    assert method.density()[method.masks.names[0]] == 0.5
    events = drive.run(2)                                       # after step 3: new mask
    assert events[0] is not None and events[0]["n"] == 4
    check_tiles(method.masks.masks[1], 4, 8)
