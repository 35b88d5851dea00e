"""The shared DST schedule/updater: when updates happen, how much changes, what they cost."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from sparse_helpers import make, step
from sparse_runner.utils.errors import UserError
from sparse_runner.methods import build_method
from sparse_runner.sparsity.schedules import Schedule
from sparse_runner.sparsity.topk import topk_indices

SHAPES = [(8, 4, 3, 3), (12, 20), (6, 12)]


def test_schedule_steps_and_fractions():
    sch = Schedule(delta_t=4, t_end=15, alpha=0.3, anneal="cosine", accumulate=2)
    assert sch.t_end == 15 and sch.n_updates() == 3
    assert [i for i in range(20) if sch.is_update(i)] == [3, 7, 11]          # after t = 4, 8, 12
    assert [i for i in range(20) if sch.needs_grad(i)] == [2, 3, 6, 7, 10, 11]
    assert sch.drop_fraction(3) == pytest.approx(0.15 * (1 + math.cos(math.pi * 4 / 15)))
    const = Schedule(delta_t=4, t_end=15, alpha=0.2, anneal="constant", accumulate=1)
    assert const.drop_fraction(11) == 0.2


def test_events_and_exact_counts():
    model, m, opt = make("rigl", SHAPES, 0.8, total_steps=24, delta_t=3, t_end=1.0, anneal="constant")
    nnz = m.masks.nnz()
    events = [step(model, m, opt, i) for i in range(24)]
    got = [i for i, e in enumerate(events) if e is not None]
    assert got == [2, 5, 8, 11, 14, 17, 20]
    itop = [events[i]["itop"] for i in got]
    assert itop == sorted(itop) and itop[0] > 0.2 >= 1 - 0.8 - 1e-9
    for i in got:
        e = events[i]
        assert e["drop_fraction"] == 0.3
        assert 0 < e["changed"] <= sum(int(k * 0.3) for k in nnz)
        assert e["global_sparsity"] == pytest.approx(1 - sum(nnz) / sum(math.prod(s) for s in SHAPES))
    assert m.masks.nnz() == nnz


def test_rigl_grows_where_the_dense_gradient_is_largest():
    model, m, opt = make("rigl", [(10, 30)], 0.9, total_steps=10, delta_t=1, t_end=1.0,
                         anneal="constant", alpha=0.5)
    inactive = (~m.masks.masks[0]).nonzero()[:15]
    target = torch.zeros(10, 30)
    target[inactive[:, 0], inactive[:, 1]] = 100.0
    step(model, m, opt, 0, grad=lambda i, j, p: target)
    assert m.masks.masks[0][inactive[:, 0], inactive[:, 1]].all()
    assert int(m.masks.masks[0].sum()) == 30


def test_dense_gradient_is_the_mean_over_the_window():
    model, m, opt = make("rigl", [(6, 10)], 0.5, total_steps=40, delta_t=5, grad_accumulation_n=3)
    grads = {i: torch.full((6, 10), float(i + 1)) for i in range(5)}
    seen = []
    for i in range(4):
        step(model, m, opt, i, grad=lambda i, j, p: grads[i])
        seen.append(None if m._acc is None else m._acc[0].clone())
    assert seen[:2] == [None, None]
    assert torch.equal(seen[3], grads[2] / 3 + grads[3] / 3)  # steps 2, 3 of the window 2..4


def test_hot_path_is_one_foreach_op(monkeypatch):
    model, m, opt = make("rigl", SHAPES, 0.9, total_steps=100, delta_t=10)
    for p in model.ws:
        p.grad = torch.ones_like(p)
    calls = []
    for name in ("_foreach_mul_", "_foreach_div", "_foreach_add_"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n), _r(*a, **k))[1])
    assert m.before_optimizer_step(0) is True and calls == ["_foreach_mul_"]
    calls.clear()
    m.before_optimizer_step(9)  # the update step also reads the dense gradient
    assert calls == ["_foreach_div", "_foreach_mul_"]


@pytest.mark.parametrize("skip", [False, True])
def test_skip_optimizer_step_flag(skip):
    model, m, opt = make("rigl", SHAPES, 0.8, total_steps=20, delta_t=2,
                         skip_optimizer_step_on_update=skip)
    for p in model.ws:
        p.grad = torch.ones_like(p)
    assert m.before_optimizer_step(0) is True
    assert m.before_optimizer_step(1) is (not skip)


def test_extra_flops_of_the_dense_gradient():
    model, rigl, opt = make("rigl", SHAPES, 0.9, total_steps=40, delta_t=4, grad_accumulation_n=2)
    f_d = sum(2 * math.prod(s) for s in SHAPES)
    f_s = sum(2 * k for k in rigl.masks.nnz())
    extra = []
    for i in range(8):
        step(model, rigl, opt, i)
        extra.append(rigl.extra_flops(i, 32))
    assert extra == [0, 0, (f_d - f_s) * 32, (f_d - f_s) * 32, 0, 0, (f_d - f_s) * 32, (f_d - f_s) * 32]
    model, set_, opt = make("set", SHAPES, 0.9, total_steps=40, delta_t=4)
    assert all(set_.extra_flops(i, 32) == 0 for i in range(8))
    assert set_.state_dict().get("dense_grad") is None


def test_empty_layer_gives_no_nan():
    dist = {"name": "uniform", "overrides": {"ws.0": 0.0}}
    model, m, opt = make("rigl", SHAPES, 0.8, total_steps=20, delta_t=2, distribution=dist)
    assert m.masks.nnz()[0] == 0
    for i in range(6):
        e = step(model, m, opt, i)
        assert all(torch.isfinite(p).all() for p in model.ws)
        assert e is None or all(math.isfinite(v) for v in e.values())
    assert m.masks.nnz()[0] == 0


def test_no_update_warns():
    with pytest.warns(UserWarning, match="no mask update"):
        make("rigl", SHAPES, 0.8, total_steps=100, delta_t=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make("rigl", SHAPES, 0.8, total_steps=1, delta_t=100)  # dry runs plan with 1 step


@pytest.mark.parametrize("opts,match", [
    ({"t_end": 0}, "t_end=0"), ({"t_end": -0.5}, "t_end"), ({"t_end": 1.5}, "t_end"),
    ({"delta_t": 0}, "delta_t"), ({"alpha": 1.5}, "alpha"), ({"anneal": "linear"}, "anneal"),
    ({"grad_accumulation_n": 0}, "grad_accumulation_n"),
    ({"delta_t": 10, "grad_accumulation_n": 11}, "grad_accumulation_n"),
    ({"skip_optimizer_step_on_update": "yes"}, "skip_optimizer_step_on_update"),
])
@pytest.mark.parametrize("method", ["set", "rigl", "srigl"])
def test_bad_options(method, opts, match):
    with pytest.raises(UserError, match=match):
        build_method({"name": method, **opts})


@pytest.mark.parametrize("zeros", [0.0, 0.5, 0.97])
@pytest.mark.parametrize("k", [0, 1, 3000, 40000])
def test_topk_indices_is_an_exact_top_k(k, zeros):
    g = torch.Generator().manual_seed(k)
    score = torch.rand(200_000, generator=g)
    score[torch.rand(200_000, generator=g) < zeros] = 0.0   # many ties, as dense grads have
    score[:5000] = -math.inf                                 # lifted (kept) positions
    idx = topk_indices(score, k)
    assert idx.numel() == k and idx.unique().numel() == k
    if k:
        kth = score.topk(k).values[-1]
        assert bool((score[idx] >= kth).all())
        assert int((score > kth).sum()) <= k and bool((score[idx] > kth).sum() == (score > kth).sum())
