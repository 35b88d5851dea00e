"""Dynamic sparse training (DST): the updater shared by SET, RigL, SRigL and GraNet.

A DST method (``sparse_runner/methods/``) says only how new masks are made (``new_masks``,
usually through ``grow_score``); this class owns the rest: the schedule, dense-gradient
accumulation, mask installation, ITOP, the dense-gradient FLOP charge and checkpoint state.
docs/methods.md gives each choice where the reference implementations disagree:

* the optimizer steps, then the masks change (``skip_optimizer_step_on_update=false``);
* on the last ``grad_accumulation_n`` optimizer steps up to an update the (signed) gradient
  is averaged into an accumulator before it is masked; every other step costs one
  multi-tensor multiply;
* grown positions were pruned, so they start at exactly zero with zero optimizer state.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from ..flops.tables import dense_grad_extra
from . import bitmask, host
from .method import SetupContext, SparsityMethod
from .options import MethodOptions, check, check_bool, check_choice, is_int, is_num
from .schedules import Schedule
from .topk import drop_and_grow

ANNEALS = ("cosine", "constant")


@dataclass
class UpdaterOptions(MethodOptions):
    """The keys of every method on the DST updater (declared once)."""

    delta_t: int = 100                 # optimizer steps between mask updates (ΔT)
    grad_accumulation_n: int = 1       # dense gradients of the last n steps before an update
    skip_optimizer_step_on_update: bool = False   # true: the update replaces the step (RigL TF)


@dataclass
class DSTOptions(UpdaterOptions):
    """... plus the drop-fraction schedule of SET, RigL and SRigL."""

    t_end: float = 0.75                # masks stop changing after this fraction of training
    alpha: float = 0.3                 # drop fraction at the start
    anneal: str = "cosine"             # cosine: α/2·(1+cos(π t/T_end)) | constant: α


def check_updater(name: str, o: UpdaterOptions) -> None:
    """One-line errors for out-of-range updater options."""
    check(is_int(o.delta_t) and o.delta_t >= 1, name, f"delta_t={o.delta_t} must be a positive "
          "integer (steps between mask updates, e.g. method.delta_t=100)")
    n = o.grad_accumulation_n
    check(is_int(n) and 1 <= n <= o.delta_t, name,
          f"grad_accumulation_n={n} must be an integer in [1, delta_t={o.delta_t}]")
    check_bool(name, "skip_optimizer_step_on_update", o.skip_optimizer_step_on_update)


def check_dst(name: str, o: DSTOptions) -> None:
    """... and for the drop-fraction schedule."""
    check_updater(name, o)
    check(is_num(o.t_end) and 0.0 < o.t_end <= 1.0, name, f"t_end={o.t_end} must be in (0, 1]: "
          "the fraction of training after which masks stop changing, e.g. method.t_end=0.75")
    check(is_num(o.alpha) and 0.0 <= o.alpha <= 1.0, name, f"alpha={o.alpha} must be in [0, 1] "
          "(fraction of each layer's weights replaced per update, e.g. method.alpha=0.3)")
    check_choice(name, "anneal", o.anneal, ANNEALS)


class DynamicSparse(SparsityMethod):
    """Shared DST updater; subclasses give ``grow_score`` (or override ``new_masks``)."""

    Options: ClassVar[type] = DSTOptions
    needs_dense_grad: ClassVar[bool] = True

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        self.schedule = self.make_schedule(1)
        self._acc: list[Tensor] | None = None       # dense-gradient accumulator (pending update)
        self._ever: list[Tensor] = []               # OR of every mask seen (ITOP)
        self._nnz: list[int] = []
        self._grad_extra = 0.0                      # (f_D - f_S) per sample at the current masks
        self._extra_now = 0.0

    def check_options(self) -> None:
        check_dst(self.name, self.opts)

    def make_schedule(self, total_steps: int) -> Schedule:
        o = self.opts
        return Schedule(o.delta_t, int(o.t_end * total_steps), o.alpha, o.anneal,
                        o.grad_accumulation_n)

    # ---- lifecycle ---------------------------------------------------------------------------
    def init_masks(self, model: nn.Module, ctx: SetupContext) -> None:
        """Initial masks: random exact counts from the distribution (SRigL overrides)."""
        super().setup(model, ctx)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        self.init_masks(model, ctx)
        self.schedule = self.make_schedule(ctx.total_steps)
        if ctx.total_steps > 1 and self.schedule.n_updates() == 0:
            warnings.warn(f"method={self.name}: no mask update will happen (delta_t="
                          f"{self.opts.delta_t} >= T_end={self.schedule.t_end} steps); lower "
                          "method.delta_t or train longer", stacklevel=2)
        self._ever = [bitmask.pack(m) for m in self.masks.masks]
        self._acc = None
        self._refresh()

    def dense_grad_wanted(self, step: int) -> bool:
        return self.needs_dense_grad and self.schedule.needs_grad(step)

    def before_optimizer_step(self, step: int) -> bool:
        if self.dense_grad_wanted(step):
            self._accumulate()
            self._extra_now = self._grad_extra
        if self.opts.skip_optimizer_step_on_update and self.schedule.is_update(step):
            return False
        self.masks.mask_grads()
        return True

    def after_optimizer_step(self, step: int) -> dict[str, Any] | None:
        if not self.schedule.is_update(step):
            return None
        return self.update(step)

    def extra_flops(self, step: int, batch_size: int) -> float:
        """The dense-gradient charge on every accumulation step (flops.dense_grad_extra)."""
        if self.dense_grad_wanted(step):
            return self._extra_now * batch_size
        return 0.0

    # ---- the update --------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int) -> dict[str, Any]:
        """Change the masks now; returns the mask-update event for metrics.jsonl."""
        fraction = self.schedule.drop_fraction(step)
        old = list(self.masks.masks)
        self.masks.set_masks(self.new_masks(step, fraction))
        self._acc = None
        for ever, m in zip(self._ever, self.masks.masks):
            ever |= bitmask.pack(m)
        counts = torch.stack([torch.count_nonzero(m & ~o) for m, o in zip(self.masks.masks, old)]
                             + [bitmask.popcount(e) for e in self._ever])
        counts = host.read(counts, "mask-update event: grown positions and ITOP coverage")
        self._refresh()
        total = sum(math.prod(shape) for shape in self.masks.shapes)
        changed, itop = sum(counts[:len(old)]), sum(counts[len(old):]) / total
        return {"global_sparsity": 1.0 - sum(self._nnz) / total, "drop_fraction": fraction,
                "changed": changed, "itop": itop, **self.event_extra()}

    def new_masks(self, step: int, fraction: float) -> dict[int, Tensor]:
        """Per layer: drop the ``int(nnz * fraction)`` smallest |w|, grow as many by score."""
        out = {}
        for i, (p, m) in enumerate(zip(self.masks.params, self.masks.masks)):
            n = int(self._nnz[i] * fraction)
            if n > 0:
                out[i] = drop_and_grow(m, p.detach().abs(), self.grow_score(i, step), n)
        return out

    def grow_score(self, layer: int, step: int) -> Tensor:
        """Score of every position of layer ``layer`` for growth (higher grows first)."""
        raise NotImplementedError

    def event_extra(self) -> dict[str, Any]:
        return {}

    def dense_grad(self, layer: int) -> Tensor:
        if self._acc is None:
            raise RuntimeError(f"method={self.name}: mask update without a dense gradient")
        return self._acc[layer]

    # ---- checkpoint --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """ITOP masks and, if an update is pending, the dense-gradient accumulator; the
        schedule position is a function of the step the loop saves."""
        names = self.masks.names
        state: dict[str, Any] = {"ever": {n: bitmask.unpack(e, shape).cpu() for n, e, shape
                                          in zip(names, self._ever, self.masks.shapes)}}
        if self._acc is not None:
            state["dense_grad"] = {n: a.cpu().clone() for n, a in zip(names, self._acc)}
        return state

    def load_state_dict(self, state: Mapping[str, Any], masks: Mapping[str, Tensor]) -> None:
        super().load_state_dict(state, masks)
        names, params = self.masks.names, self.masks.params
        ever = state.get("ever") or {}
        self._ever = [bitmask.pack(ever[n].to(m.device, torch.bool) if n in ever else m)
                      for n, m in zip(names, self.masks.masks)]
        acc = state.get("dense_grad")
        self._acc = None if acc is None else [acc[n].to(p.device) for n, p in zip(names, params)]
        self._refresh()

    # ---- internals ---------------------------------------------------------------------------
    @torch.no_grad()
    def _accumulate(self) -> None:
        """acc += grad / n. A layer stored dense divides a copy (its ``.grad`` is masked in
        place next); a condensed layer hands its dense gradient over (made from dy on this
        step only, nobody else holds it) and it is divided in place: no second dense copy.
        An fp16 overflow step (skipped by the GradScaler) leaves inf/NaN entries: they would
        become inf growth scores, so they count as zero (sync-free, no skip decision)."""
        n, masks = float(self.opts.grad_accumulation_n), self.masks
        part: list[Tensor | None] = [None] * len(masks)
        dense = [i for i in range(len(masks)) if masks.stores[i] is None]
        if dense:
            grads = [masks.dense_params[i].grad for i in dense]
            grads = [torch.zeros_like(masks.dense_params[i]) if g is None else g
                     for i, g in zip(dense, grads)]
            for i, g in zip(dense, torch._foreach_div(grads, n)):
                part[i] = g
        for i, store in enumerate(masks.stores):
            if store is not None:
                g = store.take_dense_grad()
                part[i] = (g.div_(n) if g is not None else
                           store.values.new_zeros(store.shape))
        for g in part:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
        if self._acc is None:
            self._acc = part   # type: ignore[assignment]
        else:
            torch._foreach_add_(self._acc, part)

    def _refresh(self) -> None:
        self._nnz = self.masks.nnz()
        self._grad_extra = dense_grad_extra(self.ctx.table, self.masks.density())
