"""``method=granet`` (Liu et al. 2021): gradual magnitude pruning plus zero-cost neuroregeneration.

Start sparse at ``init_density`` (ERK by default); at updates inside the pruning window
[prune_start, prune_end] prune the sparse weights by global magnitude to the cubic (Zhu & Gupta)
target sparsity, exact counts; at every update drop ``ceil(r * nnz)`` weights per layer by
magnitude and regrow as many by |dense gradient|, with r decaying by cosine from
``prune_rate`` to ``prune_rate_min``. Iso-FLOP matches the FLOPs averaged over this schedule.
Details and the reference's differences: docs/methods.md.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from ..utils.errors import UserError
from ..flops.tables import LayerTable
from ..sparsity.distributions import keep_budget
from ..sparsity.dst import DynamicSparse, UpdaterOptions, check_updater
from ..sparsity.method import SetupContext, planned_nnz, register
from ..sparsity.options import check
from ..sparsity.schedules import GradualSchedule, cubic_ramp, gradual_schedule
from ..sparsity.topk import drop_and_grow, global_topk


@dataclasses.dataclass
class GraNetOptions(UpdaterOptions):
    init_density: float = 0.5          # density at initialisation (reference --init-density 0.5)
    # if set: start at min(1, ratio x the final density) instead (scales with s, so the Iso-FLOP
    # search of a Sparse-IFT model always has a solution; the Table 2 preset uses 2)
    init_density_ratio: Optional[float] = None
    init_distribution: Optional[str] = "erk"   # layer distribution of the initial mask; null = `distribution`
    prune_start: float = 0.0           # pruning starts at this fraction of training
    prune_end: float = 0.5             # ... and reaches s here (reference CIFAR: epoch 80 of 160)
    prune_rate: float = 0.5            # regeneration rate r at the start (ceil(r * nnz) per layer)
    prune_rate_min: float = 0.005      # r decays by cosine to this floor (reference eta_min)


@register("granet")
class GraNet(DynamicSparse):
    """Dense-to-sparse: ERK start, global cubic magnitude pruning, gradient regrowth."""

    Options = GraNetOptions

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        o = self.opts
        self.init_density, self.init_distribution = float(o.init_density), o.init_distribution
        self.prune_start, self.prune_end = float(o.prune_start), float(o.prune_end)
        self.rate, self.rate_min = float(o.prune_rate), float(o.prune_rate_min)
        self._target: float | None = None

    def check_options(self) -> None:
        o = self.opts
        check_updater(self.name, o)
        check(0.0 < o.init_density <= 1.0, self.name, f"init_density={o.init_density} must be "
              "in (0, 1]")
        check(o.init_density_ratio is None or o.init_density_ratio >= 1.0, self.name,
              f"init_density_ratio={o.init_density_ratio} must be >= 1 (the start is denser "
              "than the end) or null")
        check(0.0 <= o.prune_start <= o.prune_end <= 1.0, self.name, f"need 0 <= prune_start="
              f"{o.prune_start} <= prune_end={o.prune_end} <= 1 (fractions of training)")
        check(0.0 <= o.prune_rate_min <= o.prune_rate <= 1.0, self.name, f"need 0 <= "
              f"prune_rate_min={o.prune_rate_min} <= prune_rate={o.prune_rate} <= 1")

    # ---- schedule ----------------------------------------------------------------------------
    def make_schedule(self, total: int) -> GradualSchedule:
        o = self.opts
        return gradual_schedule(o.delta_t, total, o.prune_start, o.prune_end, o.prune_rate,
                                o.prune_rate_min, o.grad_accumulation_n)

    def _init_sparsity(self, s: float) -> float:
        """Sparsity at the start for final sparsity ``s``: fixed, or a multiple of its density."""
        ratio = self.opts.init_density_ratio
        if ratio is not None:
            return max(0.0, 1.0 - ratio * (1.0 - s))
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
        sched = self.make_schedule(total)
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
        schedule = self.make_schedule(ctx.total_steps)
        if self._init_sparsity(ctx.s) < ctx.s and schedule.uf < 1 and ctx.total_steps > 1:
            raise UserError(f"method=granet: delta_t={self.opts.delta_t} leaves no update in "
                            f"{ctx.total_steps} steps, so s={ctx.s} is never reached; lower "
                            "method.delta_t or train longer")
        super().setup(model, ctx)

    def new_masks(self, step: int, fraction: float) -> dict[int, Tensor]:
        self._target = self.target_sparsity(step, self.ctx.s)
        if self._target is not None:
            k = keep_budget(self.ctx.table, self.ctx.sparse, self._target, self.ctx.extra_dense)
            if k < sum(self.masks.nnz()):
                self.masks.set_masks(self._magnitude_prune(k))
        out = {}
        nnz = self.masks.nnz()
        for i, (p, m) in enumerate(zip(self.masks.params, self.masks.masks)):
            n = math.ceil(fraction * nnz[i])
            if n > 0:
                out[i] = drop_and_grow(m, p.detach().abs(), self.dense_grad(i).abs(), n)
        return out

    @torch.no_grad()
    def _magnitude_prune(self, keep: int) -> dict[int, Tensor]:
        """Global top-``keep`` |w| among the active weights (exact count)."""
        scores = [p.detach().abs().masked_fill(~m, -math.inf)
                  for p, m in zip(self.masks.params, self.masks.masks)]
        return dict(enumerate(global_topk(scores, keep)))

    def event_extra(self) -> dict[str, Any]:
        return {"target_sparsity": self._target} if self._target is not None else {}
