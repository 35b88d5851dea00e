"""FLOP-aware rounding of nonzero counts (the last step of the Iso-FLOP search): it never
overshoots the FLOP gap, leaves less than the cheapest step, moves each layer by a few steps,
is deterministic, and the counts it plans are the ones setup builds (unstructured and constant
fan-in)."""
from __future__ import annotations

import pytest
from torch import nn
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_runner.ift.survey import Survey, search
from sparse_runner.methods import build_method
from sparse_runner.flops.tables import trace_layers
from sparse_runner.sparsity import SetupContext
from sparse_runner.sparsity.distributions import flop_rounding
from sparse_runner.sparsity.fanin import fanin_density, fanin_plan, rows_cols

costs = st.sampled_from([2.0, 8.0, 32.0, 128.0, 512.0])
layers = st.dictionaries(st.sampled_from("abcdefgh"), st.tuples(costs, st.integers(0, 50)),
                         min_size=1)


@settings(max_examples=200, deadline=None)
@given(layers, st.floats(0, 5000))
def test_never_overshoots_and_leaves_less_than_the_cheapest_step(steps, gap):
    trim = flop_rounding(steps, gap)
    added = sum(steps[n][0] * k for n, k in trim.items())
    assert added <= gap
    assert all(0 < k <= steps[n][1] for n, k in trim.items())
    room_left = [c for n, (c, r) in steps.items() if trim.get(n, 0) < r]
    if room_left:  # where capacity is left, what is missing is below the cheapest open step
        assert gap - added < min(room_left)
    assert flop_rounding(dict(reversed(list(steps.items()))), gap) == trim  # order-free


def test_a_cost_class_is_spread_over_its_layers():
    steps = {f"l{i}": (2.0, 100) for i in range(5)}
    assert flop_rounding(steps, 20.0) == {f"l{i}": 2 for i in range(5)}
    # expensive first: 512 + 2 x 128 + 2 = 770 of 771
    mixed = {"early": (512.0, 9), "mid": (128.0, 9), "late": (2.0, 9)}
    assert flop_rounding(mixed, 771.0) == {"early": 1, "mid": 2, "late": 1}


SURVEY = Survey.for_dataset("resnet18", "cifar10")


@pytest.mark.parametrize("method", ["srigl", "static_constant"])
def test_constant_fan_in_trims_whole_columns(method):
    """One step adds one incoming weight to every neuron of a layer: the search gets within the
    cheapest such column (n_out nonzeros), and the fan-in setup builds exactly that."""
    cfg = {"name": "srigl"} if method == "srigl" else {"name": "static", "fan_in": "constant"}
    meth = build_method(cfg)
    member = SURVEY.member("wide", 0.75)
    target = SURVEY.baseline.dense_fwd()
    iso = search(member, target, meth)
    column = min(member.table[n].fwd_flops * rows_cols(member.table[n].shape)[0]
                 / member.table[n].numel for n in member.sparse)
    assert iso.flops <= target and target - iso.flops < column
    k = fanin_plan(member.table, member.sparse, iso.sparsity, {"name": "uniform"}, trim=iso.trim)
    assert member.table.sparse_fwd(fanin_density(member.table, k)) == pytest.approx(iso.flops,
                                                                                    rel=1e-12)
    assert max(iso.trim.values(), default=0) <= 4


@pytest.mark.parametrize("cfg", [{"name": "static"}, {"name": "rigl"},
                                 {"name": "static", "fan_in": "constant"}, {"name": "srigl"}])
def test_setup_builds_the_trimmed_counts(cfg):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    table = trace_layers(model, (16,))
    sparse = ["0.weight", "2.weight"]
    ctx = SetupContext(table=table, sparse=sparse, s=0.5, total_steps=1000, seed=0)
    method = build_method(cfg)
    method.setup(model, ctx)
    before = [int(m.sum()) for m in method.masks.masks]
    trimmed = build_method(cfg)
    trimmed.setup(model, SetupContext(table=table, sparse=sparse, s=0.5, total_steps=1000, seed=0,
                                      trim={"2.weight": 3}))
    after = [int(m.sum()) for m in trimmed.masks.masks]
    step = 8 if cfg.get("fan_in") == "constant" or cfg["name"] == "srigl" else 1  # a column
    assert after == [before[0], before[1] + 3 * step]


def test_search_refines_from_below_a_step_function():
    """FLOPs in steps of 10 (one costly weight); a cheap layer (1 FLOP per weight) makes up the
    rest: the result is exact, under the target at every stage, and carries the trim."""
    from sparse_runner.flops.isoflop import isoflop_sparsity

    def flops(s: float) -> float:
        return 10.0 * (100 - int(100 * s)) + 5

    def refine(s: float, gap: float):
        trim = flop_rounding({"cheap": (1.0, 50)}, gap)
        return trim, sum(trim.values()) * 1.0

    plain = isoflop_sparsity(flops, 503.0)
    assert plain.rel_error > 1e-3 and plain.trim == {}
    iso = isoflop_sparsity(flops, 503.0, refine=refine)
    assert iso.flops == 503.0 and iso.trim == {"cheap": 8} and flops(iso.sparsity) == 495.0
