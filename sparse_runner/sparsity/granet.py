"""GraNet (Liu et al. 2021): gradual magnitude pruning plus zero-cost neuroregeneration.

Reference: VITA-Group/GraNet ``sparselearning/core.py`` (algorithms.md §8). It reuses the
shared DST updater (:mod:`.dst`: dense-gradient accumulation on update steps, mask installation
that zeroes dropped weights and optimizer state, ``drop_and_grow``, ITOP) and changes three
things:

* **Start:** random exact-count masks at ``init_density`` with ``init_distribution`` (ERK, as
  the reference; ``null`` = the run's ``distribution``). If the requested s is below
  ``1 - init_density`` the run simply starts at s.
* **Gradual pruning:** updates happen after steps t = u·ΔT (u = 1, 2, ...). From update
  ``u0 = round(prune_start·T/ΔT)`` to ``uf = round(prune_end·T/ΔT)`` (clipped to the last update
  of the run) the global target sparsity follows Zhu & Gupta's cubic
  ``s_u = s_f + (s_i - s_f)(1 - (u - u0)/(uf - u0))³``, reaching s_f exactly at uf, and the
  sparse weights are pruned to that many nonzeros by global magnitude. Counts are exact
  (top-k, not the reference's ``|w| > threshold``), so nnz never exceeds the target.
* **Neuroregeneration**, right after every pruning step and at every later update until the
  end of training: per layer, drop ``ceil(r·nnz)`` weights by magnitude and regrow as many by
  |dense gradient| among the zeros (RigL's ``drop_and_grow``). As in the reference, weights
  removed by the magnitude pruning are zeroed before regrowth (they regrow at 0), while weights
  dropped and regrown by the same regeneration keep their value. The rate r follows the
  reference's cosine decay from ``prune_rate`` (0.5) to ``prune_rate_min`` (0.005) over the run.

Iso-FLOP: ``mean_fwd_flops`` averages the forward FLOPs over the training steps of this exact
schedule (dense-to-sparse: Sparse-IFT A.2). Where global pruning moves nonzeros between layers
cannot be known before training, so each scheduled density is priced with the initial
distribution at that global sparsity; the training FLOPs counted during the run use the real
masks after every update.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..flops import LayerTable
from .base import SetupContext, planned_nnz, register
from .dst import DynamicSparse, Schedule, drop_and_grow
from .pai import keep_budget


def cubic_ramp(start: float, end: float, progress: float) -> float:
    """Zhu & Gupta (2017): ``end + (start - end)(1 - progress)³`` for progress in [0, 1]."""
    return end + (start - end) * (1.0 - progress) ** 3


@dataclasses.dataclass(frozen=True)
class GraNetSchedule(Schedule):
    """Updates every ΔT until the end; pruning window in update indices; cosine rate to a floor."""

    total: int = 1
    u0: int = 0
    uf: int = 1
    rate_min: float = 0.005

    def drop_fraction(self, step: int) -> float:
        t = min(step + 1, self.total)
        cosine = 0.5 * (1 + math.cos(math.pi * t / self.total))
        return self.rate_min + (self.alpha - self.rate_min) * cosine

    def progress(self, step: int) -> float | None:
        """Pruning progress at the update after ``step`` (None before the window opens)."""
        u = (step + 1) // self.delta_t
        if u < self.u0:
            return None
        if self.uf <= self.u0:
            return 1.0
        return min(1.0, (u - self.u0) / (self.uf - self.u0))


@register("granet")
class GraNet(DynamicSparse):
    """Dense-to-sparse: ERK start, global cubic magnitude pruning, gradient regrowth."""

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        c = self.cfg
        self.init_density = float(c.get("init_density", 0.5))
        self.prune_start = float(c.get("prune_start", 0.0))
        self.prune_end = float(c.get("prune_end", 0.5))
        self.rate_min = float(c.get("prune_rate_min", 0.005))
        self.init_distribution = c.get("init_distribution", "erk")
        rate = float(c.get("prune_rate", 0.5))
        if not 0.0 < self.init_density <= 1.0:
            raise UserError(f"method=granet: init_density={self.init_density} must be in (0, 1]")
        if not 0.0 <= self.prune_start <= self.prune_end <= 1.0:
            raise UserError(f"method=granet: need 0 <= prune_start={self.prune_start} <= "
                            f"prune_end={self.prune_end} <= 1 (fractions of training)")
        if not 0.0 <= self.rate_min <= rate <= 1.0:
            raise UserError(f"method=granet: need 0 <= prune_rate_min={self.rate_min} <= "
                            f"prune_rate={rate} <= 1")
        self.opts = dataclasses.replace(self.opts, t_end=1.0, alpha=rate, anneal="cosine")
        self._target: float | None = None

    # ---- schedule ----------------------------------------------------------------------------
    def _schedule(self, total: int) -> GraNetSchedule:
        dt = self.opts.delta_t
        last = max(0, (total - 1) // dt)                   # index of the last update of the run
        u0 = min(round(self.prune_start * total / dt), last)
        uf = min(max(round(self.prune_end * total / dt), u0), last)
        return GraNetSchedule(dt, total, self.opts.alpha, "cosine", self.opts.grad_accumulation_n,
                              total=max(1, total), u0=u0, uf=uf, rate_min=self.rate_min)

    def _init_sparsity(self, s: float) -> float:
        return min(s, 1.0 - self.init_density)

    def _distribution(self, fallback: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"name": self.init_distribution} if self.init_distribution else fallback

    def target_sparsity(self, step: int, s_final: float) -> float | None:
        """Global target after the update following ``step`` (None: no pruning there)."""
        prog = self.schedule.progress(step)
        if prog is None:
            return None
        return cubic_ramp(self._init_sparsity(s_final), s_final, prog)

    # ---- planning ----------------------------------------------------------------------------
    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        nnz = planned_nnz(table, sparse, s, self._distribution(distribution), extra_dense)
        return {n: nnz[n] / table[n].numel for n in sparse}

    def mean_fwd_flops(self, table: LayerTable, sparse: list[str], s: float,
                       distribution: Mapping[str, Any], extra_dense: int = 0) -> float:
        total = self.ctx.total_steps if self.ctx is not None else 1
        sched = self._schedule(total)
        s_i = self._init_sparsity(s)
        level, since, acc = s_i, 0, 0.0
        price: dict[float, float] = {}

        def fwd(x: float) -> float:
            if x not in price:
                price[x] = table.sparse_fwd(self.planned_density(table, sparse, x, distribution,
                                                                 extra_dense))
            return price[x]

        for u in range(max(1, sched.u0), sched.uf + 1):
            t = u * sched.delta_t
            if t >= total:
                break
            prog = sched.progress(t - 1)
            new = cubic_ramp(s_i, s, prog) if prog is not None else level
            acc += (t - since) * fwd(level)
            level, since = new, t
        acc += (total - since) * fwd(level)
        return acc / total

    # ---- lifecycle ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: SetupContext) -> None:
        self.ctx = ctx

    def init_masks(self, model: nn.Module, ctx: SetupContext) -> None:
        """Random exact counts at the initial density with the initial distribution."""
        start = dataclasses.replace(ctx, s=self._init_sparsity(ctx.s),
                                    distribution=self._distribution(ctx.distribution))
        super().init_masks(model, start)
        self.ctx = ctx

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        schedule = self._schedule(ctx.total_steps)
        if self._init_sparsity(ctx.s) < ctx.s and schedule.uf < 1 and ctx.total_steps > 1:
            raise UserError(f"method=granet: delta_t={self.opts.delta_t} leaves no update in "
                            f"{ctx.total_steps} steps, so s={ctx.s} is never reached; lower "
                            "method.delta_t or train longer")
        super().setup(model, ctx)
        self.schedule = schedule

    def new_masks(self, step: int, fraction: float) -> dict[int, Tensor]:
        self._target = self.target_sparsity(step, self.ctx.s)
        if self._target is not None:
            k = keep_budget(self.ctx.table, self.ctx.sparse, self._target, self.ctx.extra_dense)
            if k < sum(self.masks.nnz()):
                self.masks.set_masks(self._magnitude_prune(k))
        out = {}
        for i, (p, m) in enumerate(zip(self.masks.params, self.masks.masks)):
            n = math.ceil(fraction * int(m.sum()))
            if n > 0:
                out[i] = drop_and_grow(m, p.detach().abs(), self.dense_grad(i).abs(), n)
        return out

    @torch.no_grad()
    def _magnitude_prune(self, keep: int) -> dict[int, Tensor]:
        """Global top-``keep`` |w| among the active weights (exact count)."""
        scores = [p.detach().abs().float().masked_fill(~m, -math.inf).flatten()
                  for p, m in zip(self.masks.params, self.masks.masks)]
        flat = torch.cat(scores)
        kept = torch.zeros_like(flat, dtype=torch.bool)
        kept[flat.topk(keep).indices] = True
        parts = kept.split([s.numel() for s in scores])
        return {i: part.view_as(m) for i, (part, m) in enumerate(zip(parts, self.masks.masks))}

    def event_extra(self) -> dict[str, Any]:
        return {"target_sparsity": self._target} if self._target is not None else {}
