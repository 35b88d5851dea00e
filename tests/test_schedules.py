"""The pure schedule functions, checked against closed forms computed independently."""
from __future__ import annotations

import math

import pytest

from sparse_runner.sparsity.schedules import (Schedule, cosine_decay, cubic_ramp, gradual_schedule,
                                              ramp_progress)


def test_cosine_decay_endpoints_and_midpoint():
    assert cosine_decay(0.3, 0, 100) == pytest.approx(0.3)
    assert cosine_decay(0.3, 50, 100) == pytest.approx(0.15)
    assert cosine_decay(0.3, 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_decay(0.5, 100, 100, floor=0.005) == pytest.approx(0.005)
    # RigL's formula written out: alpha/2 (1 + cos(pi t / T_end))
    for t in range(0, 101, 7):
        assert cosine_decay(0.3, t, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi * t / 100)))


def test_cubic_ramp_is_zhu_gupta():
    assert cubic_ramp(0.5, 0.9, 0.0) == pytest.approx(0.5)
    assert cubic_ramp(0.5, 0.9, 1.0) == pytest.approx(0.9)
    # s_t = s_f + (s_i - s_f)(1 - p)^3 at p = 1/2: 0.9 - 0.4/8
    assert cubic_ramp(0.5, 0.9, 0.5) == pytest.approx(0.85)
    values = [cubic_ramp(0.0, 0.9, p / 20) for p in range(21)]
    assert all(a <= b for a, b in zip(values, values[1:]))          # monotone
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(a >= b - 1e-12 for a, b in zip(steps, steps[1:]))    # prunes fastest early


def test_ramp_progress_clips():
    assert ramp_progress(0, 10) == 0 and ramp_progress(5, 10) == 0.5
    assert ramp_progress(30, 10) == 1.0 and ramp_progress(3, 0) == 1.0


def test_dst_schedule_updates_and_gradient_steps():
    sch = Schedule(delta_t=4, t_end=15, alpha=0.3, anneal="cosine", accumulate=2)
    assert [s for s in range(20) if sch.is_update(s)] == [3, 7, 11]      # t = 4, 8, 12 < 15
    assert [s for s in range(20) if sch.needs_grad(s)] == [2, 3, 6, 7, 10, 11]
    assert sch.n_updates() == 3
    assert sch.drop_fraction(3) == pytest.approx(0.15 * (1 + math.cos(math.pi * 4 / 15)))
    const = Schedule(4, 15, 0.2, "constant", 1)
    assert const.drop_fraction(7) == 0.2


def test_gradual_schedule_window_and_rate():
    sch = gradual_schedule(delta_t=10, total=200, prune_start=0.1, prune_end=0.5, alpha=0.5,
                           rate_min=0.005, accumulate=1)
    assert (sch.u0, sch.uf) == (2, 10)            # updates after steps 20 .. 100
    assert sch.progress(9) is None                # update 1 is before the window
    assert sch.progress(19) == 0.0 and sch.progress(99) == 1.0
    assert sch.progress(59) == pytest.approx(0.5)
    assert sch.drop_fraction(-1) == pytest.approx(0.5, rel=1e-3)
    assert sch.drop_fraction(199) == pytest.approx(0.005)
    # the window never reaches past the run's last update
    short = gradual_schedule(10, 35, 0.0, 1.0, 0.5, 0.0, 1)
    assert short.uf == 3
