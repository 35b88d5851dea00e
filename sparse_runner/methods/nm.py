"""``method=nm``: N:M structured sparsity, transposable by default (Hubara et al. 2021).

M = ``method.m`` (default 8), N = M(1 - s): s=0.5 is 4:8, s=0.75 is 2:8, s=0.875 is 1:8,
``method.m=4 s=0.5`` is 2:4; ``method.preset=N:M`` sets M and checks s; an s that gives no
integer N is an error. The forward uses ``W * m`` and gradients go straight through to the
dense W (kept in a shadow), with SR-STE's decay of the masked-out weights; the mask is
recomputed from |W| every ``update_every`` steps (exact min-cost-flow solver first, greedy +
repair after). The sparsity is quantised, so the Iso-FLOP search is skipped. Details:
docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from ..utils.errors import UserError
from ..flops.tables import LayerTable, dense_grad_extra
from ..sparsity import host
from ..sparsity.masks import MaskManager
from ..sparsity.method import SetupContext, SparsityMethod, register
from ..sparsity.nm_solver import SOLVERS, nm_nnz, row_nm_mask, transposable_mask
from ..sparsity.options import MethodOptions, check, check_choice
from ..sparsity.shadow import Shadow


@dataclass
class NMOptions(MethodOptions):
    m: int = 8                       # M (block size)
    preset: Optional[str] = None     # optional "N:M" (e.g. 4:8): sets M and checks s = 1 - N/M
    transposable: bool = True        # false: plain N:M along the input dimension of each row
    init_solver: str = "exact"       # first mask: exact (min-cost flow) | greedy
    update_solver: str = "greedy"    # periodic masks: greedy + repair (fast, exact) | exact
    update_every: int = 40           # optimizer steps between mask recomputations (reference 40)
    update_end: float = 1.0          # masks stop changing after this fraction of training
    sr_ste_decay: float = 2.0e-4     # SR-STE decay λ of masked-out dense weights; 0 = plain STE


def parse_preset(preset: Any) -> tuple[int, int] | None:
    """``"4:8"`` -> (4, 8); None/empty -> None."""
    if preset in (None, "", "null"):
        return None
    try:
        n, m = (int(v) for v in str(preset).split(":"))
    except ValueError:
        raise UserError(f"method.preset={preset!r} is not N:M; use e.g. method.preset=4:8") from None
    if not 0 < n < m:
        raise UserError(f"method.preset={preset}: need 0 < N < M, e.g. 4:8, 2:8, 1:8 or 2:4")
    return n, m


@register("nm")
class NM(SparsityMethod):
    """(Transposable) N:M masks recomputed from dense weights, straight-through gradients."""

    isoflop_search = False
    condensed_unsupported = ("recomputes its masks from the dense weights and needs their "
                             "gradient on every step (straight-through)")

    Options = NMOptions

    def check_options(self) -> None:
        o = self.opts
        check_choice(self.name, "init_solver", o.init_solver, tuple(SOLVERS))
        check_choice(self.name, "update_solver", o.update_solver, tuple(SOLVERS))
        self.preset = parse_preset(o.preset)
        self.m = self.preset[1] if self.preset else int(o.m)
        check(self.m >= 2, self.name, f"m={self.m} must be >= 2 (e.g. method.m=8)")
        check(o.update_every >= 1, self.name, f"update_every={o.update_every} must be >= 1")

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        o = self.opts
        self.transposable = bool(o.transposable)
        self.init_solver, self.update_solver = o.init_solver, o.update_solver
        self.update_every, self.update_end = int(o.update_every), float(o.update_end)
        self.decay = float(o.sr_ste_decay)
        self.n = 0
        self.shadow: Shadow | None = None
        self._grad_extra = 0.0

    # ---- N from s ----------------------------------------------------------------------------
    def n_for(self, s: float) -> int:
        """N = M·(1-s), which must be an integer in [1, M)."""
        exact = self.m * (1.0 - s)
        n = round(exact)
        if abs(exact - n) > 1e-6 or not 0 < n < self.m:
            near = ", ".join(f"s={1 - k / self.m:g}" for k in range(1, self.m))
            raise UserError(f"method=nm: s={s} gives N = {self.m}*(1-s) = {exact:g}, not an integer; "
                            f"with M={self.m} use {near}")
        if self.preset and self.preset[0] != n:
            raise UserError(f"method=nm: preset {self.preset[0]}:{self.m} means s="
                            f"{1 - self.preset[0] / self.m:g}, but s={s}; set s accordingly")
        return n

    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        n = self.n_for(s)
        return {name: nm_nnz(table[name].shape, n, self.m, self.transposable) / table[name].numel
                for name in sparse}

    def _mask(self, weight: Tensor, solver: str) -> Tensor:
        if self.transposable:
            return transposable_mask(weight, self.n, self.m, solver)
        return row_nm_mask(weight, self.n, self.m)

    # ---- lifecycle ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: SetupContext) -> None:
        self.ctx = ctx
        self.n_for(ctx.s)
        if str(ctx.distribution.get("name", "uniform")) != "uniform" or ctx.extra_dense:
            raise UserError("method=nm makes every sparse layer exactly N:M, so distribution="
                            f"{ctx.distribution.get('name')} / sparse.respread have no effect; use "
                            "distribution=uniform sparse.respread=false")

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        self.prepare(model, ctx)
        self.n = self.n_for(ctx.s)
        self.masks = MaskManager(model, ctx.sparse)
        self.shadow = Shadow(self.masks.params)
        self._install([self._mask(w, self.init_solver) for w in self.shadow.dense])
        self._grad_extra = dense_grad_extra(ctx.table, self.density())

    def _install(self, masks: list[Tensor]) -> int:
        """Use ``masks`` from now on; the shown weights become W ⊙ m. Returns changed positions.

        Masks are swapped in directly, not through ``MaskManager.set_masks``: the dense weights
        and their optimizer state must survive (straight-through)."""
        old = self.masks.masks
        diff = torch.stack([(m.to(o.device) != o).sum() for m, o in zip(masks, old)])
        changed = sum(host.read(diff, "N:M mask change: positions that moved")) // 2
        self.masks.masks = [m.to(p.device) for m, p in zip(masks, self.masks.params)]
        self.shadow.show([w * m for w, m in zip(self.shadow.dense, self.masks.masks)])
        return changed

    def before_optimizer_step(self, step: int) -> bool:
        """Straight-through: the gradient w.r.t. W ⊙ m updates the dense W (plus SR-STE decay)."""
        with torch.no_grad():
            if self.decay:
                for p, w, m in zip(self.masks.params, self.shadow.dense, self.masks.masks):
                    if p.grad is not None:
                        p.grad.add_(w * ~m, alpha=self.decay)
        self.shadow.restore()
        return True

    def after_optimizer_step(self, step: int) -> dict[str, Any] | None:
        self.shadow.capture()
        t = step + 1
        if t % self.update_every == 0 and t < self.update_end * self.ctx.total_steps:
            changed = self._install([self._mask(w, self.update_solver) for w in self.shadow.dense])
            return {"changed": changed, "n": self.n, "m": self.m}
        self.shadow.show([w * m for w, m in zip(self.shadow.dense, self.masks.masks)])
        return None

    def extra_flops(self, step: int, batch_size: int) -> float:
        return self._grad_extra * batch_size

    # ---- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.shadow.state_dict(self.masks.names)}

    def load_state_dict(self, state: Mapping[str, Any], masks: Mapping[str, Tensor]) -> None:
        self.shadow.load_state_dict(self.masks.names, state["dense"])
        self._install([masks[n].bool() for n in self.masks.names])
