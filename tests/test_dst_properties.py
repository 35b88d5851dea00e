"""Property tests over random layer shapes, sparsities and update sequences (SET/RigL/SRigL).

After init and after every optimizer step: exact nnz per layer (SET/RigL), pruned weights and
all their optimizer state exactly zero, no NaN; SRigL: one fan-in across the active rows of a
layer, ablated rows all zero, the last layer never ablated, never above the layer's budget.
"""
from __future__ import annotations

import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparse_helpers import make, optimizer_state, step
from sparse_runner.utils.errors import UserError
from sparse_runner.sparsity.fanin import row_counts

shape_st = st.one_of(
    st.tuples(st.integers(2, 16), st.integers(2, 24)),
    st.tuples(st.integers(2, 10), st.integers(1, 6), st.sampled_from([1, 3]), st.sampled_from([1, 3])),
)

common = dict(
    shapes=st.lists(shape_st, min_size=1, max_size=3),
    s=st.floats(0.3, 0.95),
    optimizer=st.sampled_from(["sgd", "adamw"]),
    delta_t=st.integers(1, 3),
    skip=st.booleans(),
    dist=st.sampled_from(["uniform", "erk"]),
    seed=st.integers(0, 10**6),
)
STEPS = 7


def _build(method, shapes, s, optimizer, delta_t, skip, dist, seed, **extra):
    try:
        return make(method, shapes, s, total_steps=STEPS + 1, distribution=dist, seed=seed,
                    optimizer=optimizer, delta_t=delta_t, t_end=1.0, skip_optimizer_step_on_update=skip,
                    **extra)
    except UserError:
        assume(False)  # SRigL: a layer too small for a nonzero constant fan-in at this s


def _zeros_hold(model, m, opt):
    for p, mask in zip(m.masks.params, m.masks.masks):
        assert mask.dtype == torch.bool and mask.shape == p.shape
        assert p.isfinite().all()
        assert not p[~mask].any()
        for t in optimizer_state(opt, p):
            assert t.isfinite().all() and not t[~mask].any()


def _check_event(e, m, i):
    assert (e is not None) == m.schedule.is_update(i)
    if e is not None:
        assert all(math.isfinite(v) for v in e.values())
        assert 0.0 <= e["itop"] <= 1.0 and e["changed"] >= 0


@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(["set", "rigl"]), accum=st.integers(1, 3), **common)
def test_set_rigl_invariants(method, shapes, s, optimizer, delta_t, skip, dist, seed, accum):
    model, m, opt = _build(method, shapes, s, optimizer, delta_t, skip, dist, seed,
                           grad_accumulation_n=min(accum, delta_t))
    nnz = m.masks.nnz()
    total = sum(math.prod(sh) for sh in shapes)
    assert sum(nnz) == total - math.floor(s * total)
    _zeros_hold(model, m, opt)
    for i in range(STEPS):
        e = step(model, m, opt, i, micro=1 + i % 2)
        _check_event(e, m, i)
        assert m.masks.nnz() == nnz
        _zeros_hold(model, m, opt)


@settings(max_examples=30, deadline=None)
@given(gamma=st.sampled_from([0.3, 0.9, 4.0, 1e6]), ablation=st.booleans(), **common)
def test_srigl_invariants(shapes, s, optimizer, delta_t, skip, dist, seed, gamma, ablation):
    model, m, opt = _build("srigl", shapes, s, optimizer, delta_t, skip, dist, seed,
                           gamma_sal=gamma, ablation=ablation)
    budgets = list(m._budget)
    for i in range(-1, STEPS):
        if i >= 0:
            _check_event(step(model, m, opt, i), m, i)
        _zeros_hold(model, m, opt)
        for j, mask in enumerate(m.masks.masks):
            counts = row_counts(mask)
            live = counts[counts > 0]
            assert live.numel() > 0 and bool((live == live[0]).all())   # constant fan-in
            assert int(live[0]) <= math.prod(mask.shape[1:])
            assert int(counts.sum()) <= budgets[j]
            p = m.masks.params[j]
            assert not p[counts == 0].any()                              # ablated rows are zero
            if j == len(shapes) - 1 or not ablation:
                assert bool((counts > 0).all())                           # never ablated
