"""GraNet: density on the cubic schedule at every update, nnz never above the current target,
zero-initialised regrowth, the cosine regeneration rate and the averaged Iso-FLOP planning."""
from __future__ import annotations

import math

import pytest
from zoo_helpers import Driver, context, tiny_mlp

from sparse_runner.utils.errors import UserError
from sparse_runner.methods import build_method
from sparse_runner.sparsity import planned_nnz


def cubic(s_i: float, s_f: float, u: int, u0: int, uf: int) -> float:
    """Zhu & Gupta written out independently of the implementation."""
    p = min(1.0, max(0.0, (u - u0) / (uf - u0)))
    return s_f + (s_i - s_f) * (1 - p) ** 3


def test_density_follows_the_cubic_and_never_exceeds_the_target():
    model = tiny_mlp(width=32)
    steps, dt = 60, 4
    method = build_method({"name": "granet", "delta_t": dt, "prune_start": 0.2, "prune_end": 0.6})
    ctx = context(model, 0.9, steps)
    method.setup(model, ctx)
    total = sum(ctx.table[n].numel for n in ctx.sparse)
    init = planned_nnz(ctx.table, ctx.sparse, 0.5, {"name": "erk"})
    assert method.masks.nnz() == [init[n] for n in ctx.sparse]            # ERK at density 0.5
    u0, uf = round(0.2 * steps / dt), round(0.6 * steps / dt)              # 3, 9
    target = [total - int(0.5 * total)]
    seen = []

    def check(step: int, event) -> None:
        t = step + 1
        if t % dt == 0 and t < steps:          # no update after the last step
            u = t // dt
            assert event is not None
            if u >= u0:
                target.append(total - int(cubic(0.5, 0.9, u, u0, uf) * total))
                assert event["target_sparsity"] == pytest.approx(cubic(0.5, 0.9, u, u0, uf))
                seen.append(u)
            assert sum(method.masks.nnz()) == target[-1]                    # exactly on schedule
        else:
            assert event is None
        assert sum(method.masks.nnz()) <= target[-1]
        for p, m in zip(method.masks.params, method.masks.masks):
            assert not p.detach()[~m].any()

    Driver(method, model).run(steps, on_step=check)
    assert seen[0] == u0 and uf in seen
    assert sum(method.masks.nnz()) == total - int(0.9 * total)


def test_regeneration_keeps_counts_and_grows_zeros():
    model = tiny_mlp(width=32)
    method = build_method({"name": "granet", "delta_t": 5, "init_density": 0.3})
    ctx = context(model, 0.7, 40)                    # start at s=0.7: no pruning, only regrowth
    method.setup(model, ctx)
    drive = Driver(method, model)
    drive.run(4)
    before = [m.clone() for m in method.masks.masks]
    counts = method.masks.nnz()
    event = drive.run(1)[0]
    assert "target_sparsity" not in event or event["target_sparsity"] == pytest.approx(0.7)
    assert method.masks.nnz() == counts
    grown = [m & ~b for m, b in zip(method.masks.masks, before)]
    assert sum(int(g.sum()) for g in grown) == event["changed"] > 0
    for p, g in zip(method.masks.params, grown):
        assert not p.detach()[g].any()                # new connections start at zero
    dropped = [math.ceil(method.schedule.drop_fraction(4) * c) for c in counts]
    assert event["changed"] <= sum(dropped)


def test_regeneration_rate_is_cosine_from_half_to_the_floor():
    method = build_method({"name": "granet", "delta_t": 10})
    method.setup(tiny_mlp(), context(tiny_mlp(), 0.9, 1000))
    sched = method.schedule
    assert sched.drop_fraction(-1) == pytest.approx(0.5)
    assert sched.drop_fraction(499) == pytest.approx((0.5 + 0.005) / 2)
    assert sched.drop_fraction(999) == pytest.approx(0.005)


def test_mean_flops_average_the_schedule():
    model = tiny_mlp(width=32)
    method = build_method({"name": "granet", "delta_t": 10, "prune_end": 0.5,
                           "init_distribution": "uniform"})
    ctx = context(model, 0.9, 100)
    method.prepare(model, ctx)
    table = ctx.table
    dense = table.dense_fwd()

    def fwd(s: float) -> float:          # every layer sparse and uniform: FLOPs scale with counts
        nnz = planned_nnz(table, ctx.sparse, s, {"name": "uniform"})
        return sum(table[n].fwd_flops * nnz[n] / table[n].numel for n in ctx.sparse)

    levels = [0.5] * 10 + [cubic(0.5, 0.9, u, 0, 5) for u in range(1, 6) for _ in range(10)]
    levels += [0.9] * (100 - len(levels))
    expected = sum(fwd(s) for s in levels) / 100
    got = method.mean_fwd_flops(table, ctx.sparse, 0.9, ctx.distribution)
    assert got == pytest.approx(expected, rel=1e-12)
    assert dense > got > fwd(0.9)
    assert method.mean_fwd_flops(table, ctx.sparse, 0.95, ctx.distribution) < got


def test_a_schedule_that_cannot_prune_is_an_error():
    model = tiny_mlp()
    method = build_method({"name": "granet", "delta_t": 100})
    with pytest.raises(UserError, match="delta_t"):
        method.setup(model, context(model, 0.9, 50))


@pytest.mark.parametrize("s", [0.5, 0.75, 0.9])
def test_start_as_a_multiple_of_the_final_density(s):
    """init_density_ratio=r: the run starts at density min(1, r(1-s)) with the run's
    distribution, so a Sparse-IFT model's Iso-FLOP search stays feasible at every s."""
    model = tiny_mlp(width=32)
    method = build_method({"name": "granet", "delta_t": 4, "init_density_ratio": 2,
                           "init_distribution": None})
    ctx = context(model, s, 40)
    method.setup(model, ctx)
    start = max(0.0, 1 - 2 * (1 - s))
    want = planned_nnz(ctx.table, ctx.sparse, start, ctx.distribution)
    assert method.masks.nnz() == [want[n] for n in ctx.sparse]


def test_start_ratio_below_one_is_refused():
    with pytest.raises(UserError, match="init_density_ratio=0.5 must be >= 1"):
        build_method({"name": "granet", "init_density_ratio": 0.5}).check_options()
