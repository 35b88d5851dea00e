"""The interface between the training loop and every sparse-training method, and its registry.

The loop never branches on the method's name; :class:`~sparse_runner.step.TrainStep` calls
these hooks in this order::

    method.prepare(model, ctx)               # before the Iso-FLOP search (PaI methods score here)
    method.setup(model, ctx)                 # before training: build masks at the searched s
    method.attach_optimizer(optimizer)
    for each optimizer step:
        method.before_step(step)                 # e.g. tells the execution backend (backend.py)
        for each micro-batch: loss.backward(); method.after_backward(step)
        if method.before_optimizer_step(step): optimizer.step()   # masks grads; may skip
        event = method.after_optimizer_step(step)                 # mask updates on schedule
    method.state_dict() / load_state_dict()  # checkpoints

Planning functions (``planned_density``, ``mean_fwd_flops``) run before the masks exist: the
Iso-FLOP search and dry runs call them many times, after ``prepare`` (which may look at data).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..data.base import generator
from ..flops.tables import LayerTable
from ..utils.registry import Registry
from .distributions import flop_rounding, layer_nnz
from .masks import MaskManager
from .options import MethodOptions, parse_options

Batches = Callable[[], Iterator[tuple[Tensor, Tensor]]]


@dataclass
class SetupContext:
    """Everything a method may need before training; methods know nothing about the data."""

    table: LayerTable
    sparse: list[str]                 # names of the sparse weights (after the layer filter)
    s: float                          # sparsity of the sparse layers (after the Iso-FLOP search)
    total_steps: int                  # optimizer steps of the whole run
    seed: int
    distribution: Mapping[str, Any] = field(default_factory=lambda: {"name": "uniform"})
    extra_dense: int = 0              # dense weights that share the budget (uniform re-spread)
    batches: Batches | None = None    # fresh iterator over training batches (pruning at init)
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # FLOP-aware rounding of the Iso-FLOP search: extra steps per layer (nonzeros, or fan-in
    # for constant fan-in methods) on top of what the distribution gives at ``s``
    trim: Mapping[str, int] = field(default_factory=dict)

    def nnz(self) -> dict[str, int]:
        """Nonzeros per sparse layer this run trains with (distribution at ``s``, then trim)."""
        return planned_nnz(self.table, self.sparse, self.s, self.distribution, self.extra_dense,
                           self.trim)


def planned_nnz(table: LayerTable, sparse: list[str], s: float,
                distribution: Mapping[str, Any], extra_dense: int = 0,
                trim: Mapping[str, int] | None = None) -> dict[str, int]:
    """Exact nonzeros per sparse layer that the configured distribution assigns at sparsity s,
    plus the Iso-FLOP search's FLOP-aware ``trim`` (extra nonzeros per layer)."""
    shapes = {n: table[n].shape for n in sparse}
    nnz = layer_nnz(
        str(distribution.get("name", "uniform")), shapes, s,
        power_scale=float(distribution.get("power_scale", 1.0)),
        overrides=dict(distribution.get("overrides") or {}), extra_dense=extra_dense,
    )
    for n, extra in (trim or {}).items():
        nnz[n] = min(table[n].numel, max(0, nnz[n] + int(extra)))
    return nnz


class SparsityMethod:
    """Base class: a dense no-op. Subclasses own a :class:`MaskManager` and override hooks."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type] = MethodOptions   # the method.* keys, with their defaults
    sparse: ClassVar[bool] = True     # False for dense training (no masks, s must be 0)
    # False when the method's sparsity is quantised (N:M): the Iso-FLOP search is skipped and
    # the requested s is used as is.
    isoflop_search: ClassVar[bool] = True
    # Why the condensed execution backend (backend.py) cannot run this method; "" if it can.
    condensed_unsupported: ClassVar[str] = ""

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        self.opts = parse_options(self.Options, self.name, dict(cfg or {}))
        self.check_options()
        self.masks: MaskManager | None = None
        self.ctx: SetupContext | None = None
        self.backend: Any = None          # CondensedBackend when sparse.backend=condensed

    def check_options(self) -> None:
        """Validate ``self.opts`` (one-line :class:`UserError` per problem)."""

    # ---- planning (pure) -------------------------------------------------------------------
    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        """Density per sparse layer the method will train with at sparsity s (on average)."""
        nnz = planned_nnz(table, sparse, s, distribution, extra_dense)
        return {n: nnz[n] / table[n].numel for n in sparse}

    def mean_fwd_flops(self, table: LayerTable, sparse: list[str], s: float,
                       distribution: Mapping[str, Any], extra_dense: int = 0) -> float:
        """Forward FLOPs per sample averaged over training (what the Iso-FLOP search matches)."""
        return table.sparse_fwd(self.planned_density(table, sparse, s, distribution, extra_dense))

    def rounding_steps(self, table: LayerTable, sparse: list[str], s: float,
                       distribution: Mapping[str, Any], extra_dense: int = 0
                       ) -> dict[str, tuple[float, int]]:
        """Per sparse layer, (FLOPs one more step adds to ``mean_fwd_flops``, steps that still
        fit) at sparsity s: what the search's FLOP-aware rounding (:func:`flop_rounding`) may
        add, applied through ``SetupContext.trim``. A step is one nonzero here. A method that
        overrides ``planned_density`` or ``mean_fwd_flops`` gets {} (no trim: the search keeps
        the bisection's s) unless it overrides this too, since its FLOPs need not be linear in
        its final counts (schedules, ramps, global rankings)."""
        base = SparsityMethod
        if (type(self).planned_density is not base.planned_density
                or type(self).mean_fwd_flops is not base.mean_fwd_flops):
            return {}
        nnz = planned_nnz(table, sparse, s, distribution, extra_dense)
        return nonzero_steps(table, sparse, nnz)

    # ---- lifecycle ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: SetupContext) -> None:
        """Before the Iso-FLOP search (``ctx.s`` is the requested s): data-dependent methods
        compute what ``mean_fwd_flops`` needs here, e.g. pruning-at-init scores on the dense init."""

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        """Create masks before training. Default: random exact-count masks per the distribution."""
        self.ctx = ctx
        self.masks = MaskManager(model, ctx.sparse)
        nnz = ctx.nnz()
        self.masks.set_masks({i: random_mask(p.shape, nnz[n], self.rng(-1, i), p.device)
                              for i, (n, p) in enumerate(zip(self.masks.names, self.masks.params))})

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.masks is not None:
            self.masks.attach(optimizer)

    def before_step(self, step: int) -> None:
        """Called before the forward passes of optimizer step ``step``."""
        if self.backend is not None:
            self.backend.begin_step(self.dense_grad_wanted(step))

    def dense_grad_wanted(self, step: int) -> bool:
        """Whether step ``step`` needs the dense weight gradient (a backend must then run the
        sparse layers dense); the masked backend always computes it."""
        return False

    def after_backward(self, step: int) -> None:
        """Called after every micro-batch backward (dense gradients are in ``p.grad``; under
        DDP they are averaged over ranks only after the last micro-batch: no_sync before)."""

    def unscale_dense_grads(self, inv_scale: Tensor) -> None:
        """fp16, on a dense-gradient step: the optimizer's gradients were just unscaled; scale
        the dense gradients it does not hold (condensed layers' dense views) by ``inv_scale``."""
        if self.masks is not None:
            self.masks.unscale_dense_grads(inv_scale)

    def before_optimizer_step(self, step: int) -> bool:
        """Mask gradients; return False to skip ``optimizer.step()`` on this step."""
        if self.masks is not None:
            self.masks.mask_grads()
        return True

    def after_optimizer_step(self, step: int) -> dict[str, Any] | None:
        """Update masks on schedule; return a metrics event (dict) when the masks changed."""
        return None

    def extra_flops(self, step: int, batch_size: int) -> float:
        """Training FLOPs this step costs beyond forward + backward at the current densities."""
        return 0.0

    # ---- reporting / checkpoint --------------------------------------------------------------
    def density(self) -> dict[str, float]:
        return self.masks.density() if self.masks is not None else {}

    def mask_state(self) -> dict[str, Tensor]:
        return self.masks.state_dict() if self.masks is not None else {}

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond the masks (schedules, accumulators); masks are saved separately."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any], masks: Mapping[str, Tensor]) -> None:
        if self.masks is not None:
            self.masks.load_state_dict(masks)

    # ---- helpers -----------------------------------------------------------------------------
    def rng(self, step: int, layer: int) -> torch.Generator:
        """Stateless generator seeded by (seed, step, layer): identical on every rank and resume."""
        seed = self.ctx.seed if self.ctx is not None else 0
        return generator(seed, 0x5EED, step, layer)


def nonzero_steps(table: LayerTable, sparse: list[str], nnz: Mapping[str, int]
                  ) -> dict[str, tuple[float, int]]:
    """``rounding_steps`` for one nonzero per step: its FLOPs, and the zeros left per layer."""
    return {n: (table[n].fwd_flops / table[n].numel, table[n].numel - nnz[n]) for n in sparse}


def rounding_refine(method: "SparsityMethod", table: LayerTable, sparse: list[str],
                    distribution: Mapping[str, Any], extra_dense: int = 0
                    ) -> Callable[[float, float], tuple[dict[str, int], float]]:
    """The Iso-FLOP search's ``refine``: at sparsity s with ``gap`` FLOPs missing, the method's
    FLOP-aware trim (:func:`flop_rounding` over its ``rounding_steps``) and the FLOPs it adds."""
    def refine(s: float, gap: float) -> tuple[dict[str, int], float]:
        steps = method.rounding_steps(table, sparse, s, distribution, extra_dense)
        trim = flop_rounding(steps, gap)
        return trim, sum(steps[n][0] * k for n, k in trim.items())
    return refine


def random_mask(shape: torch.Size, nnz: int, gen: torch.Generator,
                device: torch.device | str = "cpu") -> Tensor:
    """Bool mask with exactly ``nnz`` True entries at uniformly random positions."""
    numel = int(torch.Size(shape).numel())
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=gen)[:nnz]] = True
    return flat.view(shape).to(device)


METHODS: Registry[type[SparsityMethod]] = Registry("method")


def register(name: str):
    """Class decorator: ``@register("rigl")`` makes ``method=rigl`` select the class.

    The class's ``Options`` dataclass becomes the Hydra schema of ``method=<name>`` (defaults
    and valid keys in one place)."""

    def deco(cls: type[SparsityMethod]) -> type[SparsityMethod]:
        cls.name = name
        METHODS.register(name)(cls)
        store_schema(name, cls.Options)
        return cls

    return deco


def store_schema(name: str, options: type) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="method", name=name, node=options(name=name))
