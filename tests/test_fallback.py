"""The cfi operators' fallback (no compiled kernel): float64-exact against the dense oracle,
and no dense [n_out, n_in] weight (nor dense dY^T X) is ever allocated."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sparse_runner.kernels import fallback, reference

SHAPES = [(0, 20, 7, 3), (1, 37, 19, 5), (17, 30, 70, 9), (33, 50, 37, 50), (5, 8, 4, 1)]


def _problem(shape, dtype, seed=0):
    nb, n_in, n_out, k = shape
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n_out, n_in, generator=g).argsort(1)[:, :k].sort(1).values.int()
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return idx, r(n_out, k), r(nb, n_in), r(nb, n_out), r(n_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fallback_matches_the_dense_oracle(shape, dtype, monkeypatch):
    monkeypatch.setattr(fallback, "CHUNK", 64)   # several batch blocks on every shape
    idx, v, x, g, b = _problem(shape, dtype)
    n_in = shape[1]
    d = lambda t: t.double()  # noqa: E731
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    pairs = [(fallback.forward(x, v, idx, b), reference.forward(d(x), d(v), idx, d(b))),
             (fallback.backward_input(g, v, idx, n_in), reference.backward_input(d(g), d(v), idx, n_in)),
             (fallback.backward_weight(g, x, idx), reference.backward_weight(d(g), d(x), idx))]
    for got, want in pairs:
        assert got.dtype == dtype and got.shape == want.shape
        scale = max(float(want.abs().max()) if want.numel() else 0.0, 1.0)
        assert (got.double() - want).abs().max() <= tol * scale if want.numel() else True


class Sizes(TorchDispatchMode):
    """The largest tensor any op produced."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_dense_weight_per_call():
    """A wide sparse layer (n_in 8192, k 8): the dense weight would be 262,144 elements; the
    fallback's largest tensor is the activations' [16, 8192]."""
    idx, v, x, g, b = _problem((16, 8192, 32, 8), torch.float32)
    for op in (lambda: fallback.forward(x, v, idx, b),
               lambda: fallback.backward_input(g, v, idx, 8192),
               lambda: fallback.backward_weight(g, x, idx)):
        with Sizes() as mode:
            op()
        assert mode.largest <= x.numel() < 32 * 8192
    with Sizes() as mode:   # what reference.py (the oracle) allocates
        reference.forward(x, v, idx, b)
    assert mode.largest >= 32 * 8192
