"""Schedules as pure functions of the optimizer step (resume needs no schedule state).

Step convention (shared by every method): hooks receive ``step`` = optimizer steps completed
before the current one; schedules work on ``t = step + 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_decay(start: float, t: float, t_end: float, floor: float = 0.0) -> float:
    """``floor + (start - floor)/2 (1 + cos(pi t / t_end))``: RigL's drop fraction (floor 0)
    and GraNet's regeneration rate (floor ``prune_rate_min``)."""
    return floor + (start - floor) * 0.5 * (1.0 + math.cos(math.pi * t / t_end))


def cubic_ramp(start: float, end: float, progress: float) -> float:
    """Zhu & Gupta (2017): ``end + (start - end)(1 - progress)^3`` for progress in [0, 1]."""
    return end + (start - end) * (1.0 - progress) ** 3


def ramp_progress(t: int, t_end: int) -> float:
    """Fraction of a ramp that ends at step ``t_end`` done at step ``t`` (clipped to 1)."""
    return min(1.0, t / max(1, t_end))


@dataclass(frozen=True)
class Schedule:
    """DST: masks change after step t when ``t % delta_t == 0`` and ``t < t_end``."""

    delta_t: int
    t_end: int            # T_end in optimizer steps
    alpha: float
    anneal: str           # cosine | constant
    accumulate: int       # dense-gradient steps averaged before an update

    def is_update(self, step: int) -> bool:
        t = step + 1
        return t % self.delta_t == 0 and t < self.t_end

    def needs_grad(self, step: int) -> bool:
        """True on the last ``accumulate`` steps up to and including an update step."""
        t = step + 1
        upcoming = -(-t // self.delta_t) * self.delta_t
        return upcoming - t < self.accumulate and upcoming < self.t_end

    def drop_fraction(self, step: int) -> float:
        if self.anneal == "constant":
            return self.alpha
        return cosine_decay(self.alpha, step + 1, self.t_end)

    def n_updates(self) -> int:
        return max(0, (self.t_end - 1) // self.delta_t)


@dataclass(frozen=True)
class GradualSchedule(Schedule):
    """GraNet: updates every ΔT to the end of training; a pruning window in update indices
    [u0, uf]; the regeneration rate decays by cosine from ``alpha`` to ``rate_min``."""

    total: int = 1
    u0: int = 0
    uf: int = 1
    rate_min: float = 0.005

    def drop_fraction(self, step: int) -> float:
        return cosine_decay(self.alpha, min(step + 1, self.total), self.total, self.rate_min)

    def progress(self, step: int) -> float | None:
        """Pruning progress at the update after ``step`` (None before the window opens)."""
        u = (step + 1) // self.delta_t
        if u < self.u0:
            return None
        if self.uf <= self.u0:
            return 1.0
        return min(1.0, (u - self.u0) / (self.uf - self.u0))


def gradual_schedule(delta_t: int, total: int, prune_start: float, prune_end: float,
                     alpha: float, rate_min: float, accumulate: int) -> GradualSchedule:
    """The GraNet schedule of a ``total``-step run (window clipped to the run's last update)."""
    last = max(0, (total - 1) // delta_t)
    u0 = min(round(prune_start * total / delta_t), last)
    uf = min(max(round(prune_end * total / delta_t), u0), last)
    return GradualSchedule(delta_t, total, alpha, "cosine", accumulate, total=max(1, total),
                           u0=u0, uf=uf, rate_min=rate_min)
