"""Ramanujan metrics: against a dense float64 SVD of the definitions, and on graphs whose
spectrum is known in closed form (complete bipartite, circulant / Paley bipartite expanders)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_runner.sparsity import spectral


def oracle_gaps(m: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """delta_r and lambda straight from the definitions with numpy's dense SVD."""
    keep_r = m.any(axis=1)
    keep_c = m.any(axis=0)
    m, w = m[keep_r][:, keep_c], w[keep_r][:, keep_c]
    if m.size == 0:
        return math.nan, math.nan
    nnz = m.sum()
    rows, cols = m.shape
    sv_m = np.linalg.svd(m.astype(float), compute_uv=False)
    sv_w = np.linalg.svd(np.abs(w * m), compute_uv=False)
    s2 = lambda sv: sv[1] if sv.size > 1 else 0.0  # noqa: E731
    bound = math.sqrt(max(nnz / rows - 1, 0)) + math.sqrt(max(nnz / cols - 1, 0))
    return bound - s2(sv_m), sv_w[0] - s2(sv_w)


def oracle(w: np.ndarray, m: np.ndarray) -> dict[str, float]:
    m = m.reshape(m.shape[0], -1) != 0
    w = w.reshape(w.shape[0], -1)
    delta_r, lam = oracle_gaps(m, w)
    m2, w2 = m[m.any(axis=1)][:, m.any(axis=0)], w[m.any(axis=1)][:, m.any(axis=0)]
    deg = m2.sum(axis=0)
    sub = [oracle_gaps(m2[:, deg == d], w2[:, deg == d])
           for d in sorted(set(deg.tolist())) if d > 0 and (deg == d).sum() >= 3]
    return {"delta_r": delta_r, "lambda": lam,
            "delta_r_imdb": np.mean([g[0] for g in sub]) if sub else math.nan,
            "lambda_imsg": np.mean([g[1] for g in sub]) if sub else math.nan}


def assert_close(got: dict, want: dict, tol: float = 1e-8) -> None:
    for k in spectral.METRICS:
        if math.isnan(want[k]):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(want[k], rel=tol, abs=tol), k


def random_layer(shape, density, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    m = (torch.rand(shape, generator=g) < density).to(torch.float64)
    return w, m


@pytest.mark.parametrize("shape,density", [((16, 8, 3, 3), 0.1), ((40, 30), 0.3),
                                           ((7, 500), 0.05), ((50, 400), 0.1),
                                           ((600, 450), 0.02)])
def test_matches_dense_svd_oracle(shape, density):
    # (600, 450) takes the Lanczos path, the others the Gram path
    w, m = random_layer(shape, density, seed=sum(shape))
    assert_close(spectral.layer_metrics(w, m), oracle(w.numpy(), m.numpy()), tol=1e-6)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 12), density=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**16))
def test_property_matches_oracle(rows, cols, density, seed):
    w, m = random_layer((rows, cols), density, seed)
    assert_close(spectral.layer_metrics(w, m), oracle(w.numpy(), m.numpy()))


def test_lanczos_path_agrees_with_gram_path(monkeypatch):
    w, m = random_layer((700, 900), 0.01, seed=3)
    lanczos = spectral.layer_metrics(w, m)
    monkeypatch.setattr(spectral, "GRAM_LIMIT", 10**9)
    assert_close(lanczos, spectral.layer_metrics(w, m), tol=1e-8)


@pytest.mark.parametrize("rows,cols", [(6, 9), (50, 400), (500, 700)])
def test_complete_bipartite(rows, cols):
    # K_{m,n}: sigma_1 = sqrt(mn), sigma_2 = 0; all n columns have degree m
    got = spectral.layer_metrics(torch.full((rows, cols), -2.0))
    bound = math.sqrt(cols - 1) + math.sqrt(rows - 1)
    # sigma_2 = 0 comes out as ~1e-8 * sigma_1 on the Gram / Lanczos paths (square roots)
    assert got["delta_r"] == pytest.approx(bound, rel=1e-6)
    assert got["lambda"] == pytest.approx(2.0 * math.sqrt(rows * cols), rel=1e-6)  # |W| = 2
    assert got["delta_r_imdb"] == pytest.approx(bound, rel=1e-6)
    assert got["lambda_imsg"] == pytest.approx(got["lambda"])


def circulant(n: int, shifts: list[int]) -> np.ndarray:
    m = np.zeros((n, n))
    for s in shifts:
        m[np.arange(n), (np.arange(n) + s) % n] = 1
    return m


def test_paley_bipartite_expander_is_ramanujan():
    # p = 3 mod 4, S = quadratic residues: circulant eigenvalues are (-1 ± i sqrt(p)) / 2,
    # so sigma_2 = sqrt((p+1)/4) exactly, d = (p-1)/2 regular on both sides
    p = 103
    residues = sorted({(x * x) % p for x in range(1, p)})
    d = len(residues)
    got = spectral.layer_metrics(torch.tensor(circulant(p, residues)))
    want = 2 * math.sqrt(d - 1) - math.sqrt((p + 1) / 4)
    assert got["delta_r"] == pytest.approx(want, rel=1e-9)
    assert got["delta_r"] > 0  # Ramanujan
    assert got["delta_r_imdb"] == pytest.approx(want, rel=1e-9)  # one degree class: the graph
    assert got["lambda"] == pytest.approx(d - math.sqrt((p + 1) / 4), rel=1e-9)


def test_circulant_spectrum_on_lanczos_path():
    n, shifts = 1000, [0, 1, 5, 17, 123]
    want_s2 = max(abs(sum(np.exp(2j * np.pi * k * s / n) for s in shifts)) for k in range(1, n))
    got = spectral.layer_metrics(torch.tensor(circulant(n, shifts)))
    d = len(shifts)
    assert got["delta_r"] == pytest.approx(2 * math.sqrt(d - 1) - want_s2, rel=1e-9)
    assert got["lambda"] == pytest.approx(d - want_s2, rel=1e-9)


def test_zero_rows_and_columns_are_removed():
    m = np.zeros((10, 12))
    m[2:5, 3:8] = 1  # K_{3,5} inside zeros
    got = spectral.layer_metrics(torch.tensor(m))
    assert got["delta_r"] == pytest.approx(math.sqrt(4) + math.sqrt(2))


def test_disjoint_union_second_singular_value():
    m = np.zeros((7, 7))
    m[:4, :4] = 1
    m[4:, 4:] = 1  # sigma = 4 (K_4,4) and 3 (K_3,3)
    got = spectral.layer_metrics(torch.tensor(m))
    nnz, n = 16 + 9, 7
    assert got["delta_r"] == pytest.approx(2 * math.sqrt(nnz / n - 1) - 3.0)
    # column degrees 4 (4 columns) and 3 (3 columns): each class is one complete block
    want = np.mean([2 * math.sqrt(3) - 0.0, 2 * math.sqrt(2) - 0.0])
    assert got["delta_r_imdb"] == pytest.approx(want)


def test_undefined_cases_are_nan():
    empty = spectral.layer_metrics(torch.zeros(5, 5))
    assert all(math.isnan(v) for v in empty.values())
    # every column has a different degree: no class of >= 3 columns
    m = torch.tensor([[1., 1., 1.], [0., 1., 1.], [0., 0., 1.]])
    got = spectral.layer_metrics(m)
    assert math.isfinite(got["delta_r"]) and math.isnan(got["delta_r_imdb"])


def test_mask_argument_and_conv_layout():
    w, m = random_layer((8, 4, 3, 3), 0.3, seed=1)
    a = spectral.layer_metrics(w, m)
    b = spectral.layer_metrics(w * m)  # support of the masked weight = the mask (a.s.)
    assert_close(a, b)


def test_model_metrics_mean_skips_nan_and_json_safe():
    w1, m1 = random_layer((20, 30), 0.2, seed=5)
    weights = {"a.weight": w1, "b.weight": torch.zeros(4, 4)}
    masks = {"a.weight": m1, "b.weight": torch.zeros(4, 4)}
    out = spectral.model_metrics(weights, masks)
    assert [r["name"] for r in out["layers"]] == ["a.weight", "b.weight"]
    assert out["mean"]["delta_r"] == pytest.approx(out["layers"][0]["delta_r"])
    safe = spectral.json_safe(out)
    assert safe["layers"][1]["delta_r"] is None


# ---- degenerate masks and weights: every path must agree with the dense float64 oracle ------
# (the Lanczos path needs both sides > GRAM_LIMIT = 384, hence the 4xx shapes)

def _l0_like(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mask whose gated-off units keep their mask entries but have all-zero weights
    (rows = output units, columns = input units), plus units that are fully masked off."""
    w, m = random_layer((rows, cols), 0.05, seed)
    w[::3] = 0.0          # gated-off output units: mask on, weight exactly zero
    w[:, ::4] = 0.0       # gated-off input units
    m[1::7] = 0.0         # units the mask removed entirely
    m[:, 2::9] = 0.0
    return w, m


@pytest.mark.parametrize("shape", [(420, 460), (30, 40), (3, 700)])
def test_all_zero_weights_under_a_mask(shape):
    # the ArpackError -9 "starting vector is zero" case: |W| = 0 on the whole support
    w, m = random_layer(shape, 0.05, seed=7)
    got = spectral.layer_metrics(torch.zeros(shape, dtype=torch.float64), m)
    want = oracle(np.zeros(shape), m.numpy())
    assert got["lambda"] == 0.0 and want["lambda"] == 0.0
    assert_close(got, want, tol=1e-6)


@pytest.mark.parametrize("shape", [(420, 460), (60, 500)])
def test_l0_gated_off_units(shape):
    w, m = _l0_like(*shape, seed=11)
    assert_close(spectral.layer_metrics(w, m), oracle(w.numpy(), m.numpy()), tol=1e-6)


def test_zero_sub_block_and_zero_rows_on_lanczos_path():
    w, m = random_layer((450, 500), 0.04, seed=5)
    w[:200, :250] = 0.0   # a block whose weights are all zero (its mask stays)
    m[300:, 300:] = 0.0   # a block the mask removed
    m[17] = 0.0           # an empty row and column
    m[:, 33] = 0.0
    assert_close(spectral.layer_metrics(w, m), oracle(w.numpy(), m.numpy()), tol=1e-6)


def test_rank_one_block_on_lanczos_path():
    # a dense block of equal weights inside zeros: sigma_2 = 0 for the mask and for |W|
    m = torch.zeros(450, 500, dtype=torch.float64)
    m[10:430, 20:480] = 1.0
    got = spectral.layer_metrics(3.0 * m)
    want = oracle(3.0 * m.numpy(), m.numpy())
    for k in spectral.METRICS:  # sigma_2 = 0 comes out to ~1e-8 * sigma_1
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-5 * 3.0 * math.sqrt(420 * 460)), k


@pytest.mark.parametrize("dense", [[[0.0]], [[2.0]], [[0.0, 3.0, 0.0, -4.0]], [[1.0], [0.0], [2.0]],
                                   [[0.0, 0.0], [0.0, 5.0]], [[1.0, 2.0], [3.0, 4.0]]])
def test_tiny_layers(dense):
    w = torch.tensor(dense, dtype=torch.float64)
    m = torch.ones_like(w)
    assert_close(spectral.layer_metrics(w, m), oracle(w.numpy(), m.numpy()))
    s1, s2 = spectral.top2(np.abs(w.numpy()))
    sv = np.linalg.svd(np.abs(w.numpy()), compute_uv=False)
    assert (s1, s2) == pytest.approx((sv[0], sv[1] if sv.size > 1 else 0.0), abs=1e-12)


def test_arpack_failure_falls_back_to_exact(monkeypatch):
    from scipy.sparse.linalg import ArpackNoConvergence

    def give_up(*args, **kwargs):
        raise ArpackNoConvergence("no convergence", np.zeros(0), np.zeros((0, 0)))

    monkeypatch.setattr(spectral, "svds", give_up)
    w, m = _l0_like(420, 460, seed=3)
    assert_close(spectral.layer_metrics(w, m), oracle(w.numpy(), m.numpy()), tol=1e-8)
