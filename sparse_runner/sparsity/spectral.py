"""Ramanujan-graph metrics of sparse layers (Sparse-IFT section 3.1 and appendix B).

A sparse layer is a bipartite graph: its 0/1 mask viewed as a matrix ``M`` of shape
out x (in·kh·kw) (rows = output neurons, columns = inputs times kernel positions), with the
all-zero rows and columns removed. The graph's adjacency [[0, M], [Mᵀ, 0]] has eigenvalues
±σᵢ(M), so every quantity below is a top singular value of a (sub-)matrix:

* ``delta_r``  = √max(d_out−1, 0) + √max(d_in−1, 0) − σ₂(M), with d_out = nnz/rows and
  d_in = nnz/cols: the gap to the irregular bipartite Ramanujan bound (positive: the layer's
  graph is at least as well connected as a Ramanujan graph of its mean degrees);
* ``lambda``   = σ₁(|W|) − σ₂(|W|) on the same rows and columns of the masked weights: the
  weighted spectral gap;
* ``delta_r_imdb`` / ``lambda_imsg``: the same two on each column sub-matrix whose columns share
  one degree d (every d held by at least 3 columns; zero rows dropped again), averaged over those
  d; NaN if there is none.

Weights that are exactly zero under the mask (L0's gated-off units, a layer whose weights
decayed to zero) count for the mask's graph but not for |W|: an all-zero |W| has λ = 0.

Top singular values of big matrices come from ARPACK's Lanczos (``scipy.sparse.linalg.svds``
with a fixed start vector, so results are reproducible); thin ones (the per-degree sub-matrices
mostly) from the exact eigenvalues of their small Gram matrix. No dense SVD of a layer is ever
taken. Everything runs on the CPU in float64 on the nonzeros only.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import scipy.linalg
import scipy.sparse as sps
import torch
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, svds

from .condensed_params import dense_weights

METRICS = ("delta_r", "delta_r_imdb", "lambda", "lambda_imsg")
MIN_COLUMNS_PER_DEGREE = 3  # a degree class needs this many columns to count (imdb / imsg)
DENSE_LIMIT = 4096  # rows*cols up to which a (tiny) dense SVD is taken
# σ₂ of a random sparse layer sits at the edge of the bulk of the spectrum, where Lanczos
# converges slowly; a relative tolerance of 1e-6 on σ² (ARPACK's) and a 40-vector Krylov basis
# take the Sparse Wide s=0.9 ResNet-18's biggest layer from 3.3 s to 1.0 s (same digits shown).
LANCZOS_TOL = 1e-6
LANCZOS_NCV = 40
GRAM_LIMIT = 384  # short side up to which the small Gram matrix is diagonalised exactly


def _as_2d(t: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A weight or mask as the out x (in·kh·kw) matrix the metrics are defined on."""
    t = torch.as_tensor(t).detach()
    return t.reshape(t.shape[0], -1) if t.ndim != 2 else t


def top2(a: sps.spmatrix | np.ndarray) -> tuple[float, float]:
    """σ₁ ≥ σ₂ of ``a`` (0 for singular values that do not exist: an all-zero matrix, a single
    nonzero row or column; NaN for an empty shape).

    Zero entries, rows and columns are dropped first (they change no nonzero singular value,
    and ARPACK stops on an operator that maps its start vector to zero, e.g. a mask whose
    weights are all exactly zero). A tiny matrix then goes through a dense SVD; a thin one
    (short side <= GRAM_LIMIT) through the eigenvalues of its small Gram matrix, exact and
    cheap; anything bigger through Lanczos (ARPACK ``svds``), falling back to the two top
    eigenvalues of the Gram matrix of the short side if ARPACK gives up."""
    if a.shape[0] == 0 or a.shape[1] == 0:
        return math.nan, math.nan
    a = _support(sps.csr_matrix(a, dtype=np.float64))
    rows, cols = a.shape
    if a.nnz == 0:
        return 0.0, 0.0
    if min(rows, cols) == 1:
        return float(np.linalg.norm(a.data)), 0.0
    if rows * cols <= DENSE_LIMIT:
        sv = np.linalg.svd(a.toarray(), compute_uv=False)
        return float(sv[0]), float(sv[1])
    if min(rows, cols) <= GRAM_LIMIT:  # σ₂ to ~1e-8·σ₁ absolute (square root of eigenvalues)
        return _gram_top2(a)
    v0 = np.random.default_rng(0).random(min(rows, cols)) + 0.5
    try:
        sv = svds(a, k=2, return_singular_vectors=False, v0=v0, solver="arpack",
                  tol=LANCZOS_TOL, ncv=min(LANCZOS_NCV, min(rows, cols) - 1))
    except (ArpackError, ArpackNoConvergence):
        return _gram_top2(a, top_only=True)
    sv = np.sort(np.abs(sv))[::-1]
    return float(sv[0]), float(sv[1])


def _support(a: sps.csr_matrix) -> sps.csr_matrix:
    """``a`` without explicit zeros and without all-zero rows and columns."""
    a = a.copy()
    a.eliminate_zeros()
    a = a[np.flatnonzero(a.getnnz(axis=1))]
    return a[:, np.flatnonzero(a.getnnz(axis=0))].tocsr()


def _gram_top2(a: sps.csr_matrix, top_only: bool = False) -> tuple[float, float]:
    """σ₁, σ₂ from the two largest eigenvalues of the Gram matrix of the short side (exact)."""
    gram = ((a @ a.T) if a.shape[0] <= a.shape[1] else (a.T @ a)).toarray()
    n = gram.shape[0]
    if top_only:  # a big Gram matrix: only its top two eigenvalues (LAPACK syevr)
        ev = scipy.linalg.eigh(gram, eigvals_only=True, subset_by_index=[n - 2, n - 1])[::-1]
    else:
        ev = np.linalg.eigvalsh(gram)[::-1]
    sv = np.sqrt(np.clip(ev[:2], 0.0, None))
    return float(sv[0]), float(sv[1])


def _bound(nnz: int, rows: int, cols: int) -> float:
    return math.sqrt(max(nnz / rows - 1, 0.0)) + math.sqrt(max(nnz / cols - 1, 0.0))


def _gaps(mask: sps.csr_matrix, weight: sps.csr_matrix) -> tuple[float, float]:
    """(delta_r, lambda) of one bipartite (sub-)graph without zero rows or columns."""
    rows, cols = mask.shape
    if mask.nnz == 0:
        return math.nan, math.nan
    delta_r = _bound(mask.nnz, rows, cols) - top2(mask)[1]
    s1, s2 = top2(weight)
    return delta_r, s1 - s2


def _drop_empty(mask: sps.csr_matrix, weight: sps.csr_matrix,
                rows: bool = True, cols: bool = True) -> tuple[sps.csr_matrix, sps.csr_matrix]:
    if rows:
        keep = np.flatnonzero(mask.getnnz(axis=1))
        mask, weight = mask[keep], weight[keep]
    if cols:
        keep = np.flatnonzero(mask.getnnz(axis=0))
        mask, weight = mask[:, keep], weight[:, keep]
    return mask.tocsr(), weight.tocsr()


def bipartite(weight: torch.Tensor | np.ndarray,
              mask: torch.Tensor | np.ndarray | None = None) -> tuple[sps.csr_matrix, sps.csr_matrix]:
    """(M, |W ⊙ M|) as sparse float64 matrices with the all-zero rows and columns of M removed.

    Without ``mask`` the support of ``weight`` is the mask. Only the nonzeros are copied, so a
    10x-widened layer never becomes a dense float64 array."""
    w = _as_2d(weight)
    m = (w != 0) if mask is None else (_as_2d(mask).reshape(w.shape) != 0)
    m = m.cpu()
    idx = m.nonzero().numpy()
    vals = w.cpu()[m].abs().to(torch.float64).numpy()
    r, c = idx[:, 0], idx[:, 1]
    shape = tuple(w.shape)
    mask_csr = sps.csr_matrix((np.ones(r.size), (r, c)), shape=shape)
    weight_csr = sps.csr_matrix((vals, (r, c)), shape=shape)
    return _drop_empty(mask_csr, weight_csr)


def degree_classes(mask: sps.csr_matrix) -> dict[int, np.ndarray]:
    """Column degree -> the columns holding it, for each degree held by >= 3 columns."""
    degree = mask.getnnz(axis=0)
    out = {}
    for d in np.unique(degree):
        cols = np.flatnonzero(degree == d)
        if d > 0 and cols.size >= MIN_COLUMNS_PER_DEGREE:
            out[int(d)] = cols
    return out


def layer_metrics(weight: torch.Tensor | np.ndarray,
                  mask: torch.Tensor | np.ndarray | None = None) -> dict[str, float]:
    """The four metrics of one layer (NaN where a metric is undefined: an empty mask, or no
    column degree held by at least 3 columns for the imdb / imsg averages)."""
    m, w = bipartite(weight, mask)
    delta_r, lam = _gaps(m, w)
    sub = []
    mc, wc = m.tocsc(), w.tocsc()
    for cols in degree_classes(m).values():
        sm, sw = _drop_empty(mc[:, cols].tocsr(), wc[:, cols].tocsr(), cols=False)
        sub.append(_gaps(sm, sw))
    imdb = float(np.mean([g[0] for g in sub])) if sub else math.nan
    imsg = float(np.mean([g[1] for g in sub])) if sub else math.nan
    return {"delta_r": delta_r, "delta_r_imdb": imdb, "lambda": lam, "lambda_imsg": imsg}


def nan_mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def model_metrics(weights: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor]) -> dict[str, object]:
    """``{layers: [{name, delta_r, delta_r_imdb, lambda, lambda_imsg}], mean: {...}}`` over the
    masked layers (``masks`` keys are weight parameter names; the mean skips NaN entries)."""
    layers = [{"name": name, **layer_metrics(weights[name], mask)} for name, mask in masks.items()]
    return {"layers": layers, "mean": {k: nan_mean(row[k] for row in layers) for k in METRICS}}


def section(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, object] | None:
    """The JSON-safe metrics of a model's masked layers (None when nothing is masked). Masks
    whose weight is not a parameter of ``model`` under that name are left out."""
    weights = dense_weights(model)
    masks = {n: m for n, m in masks.items() if n in weights}
    if not masks:
        return None
    return json_safe(model_metrics(weights, masks))


def json_safe(section: Mapping[str, object]) -> dict[str, object]:
    """The same section with NaN as None (JSON has no NaN)."""
    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return clean(section)  # type: ignore[return-value]
