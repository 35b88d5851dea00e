"""The run's plan: everything decided before training, computed once, in one place.

:func:`build_plan` validates the config, builds data, model and method, traces the layer
tables, runs the Iso-FLOP search and fixes the effective sparsity and the number of steps.
Training (run.py, train.py) and the summary (summary.py) read the plan; nothing re-derives it.
The plan fills in stage by stage, so a failure still leaves what was known for the summary.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
import numpy as np
import torch
from omegaconf import DictConfig

from . import ddp
from . import distributed as dist
from .data import Data, build_data
from .errors import UserError
from .flops import LayerTable, trace_layers
from .ift import build_ift_model
from .isoflop import IsoFlopResult, isoflop_sparsity
from .methods import build_method
from .models import build_model
from .sparsity import SetupContext, SparsityMethod, select_sparse
from .sparsity.backend import BACKENDS


@dataclass
class RunPlan:
    """The decisions of one run (None / empty until the stage that makes them has run)."""

    cfg: DictConfig
    s: float = 0.0                        # requested sparsity
    s_eff: float = 0.0                    # sparsity of the sparse layers after Iso-FLOP
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dist: dist.Dist = field(default_factory=lambda: dist.SINGLE)   # data-parallel ranks
    data: Data | None = None
    method: SparsityMethod | None = None
    model: torch.nn.Module | None = None
    baseline: LayerTable | None = None    # the untransformed dense model
    table: LayerTable | None = None       # the model that trains
    sparse: list[str] = field(default_factory=list)
    extra_dense: int = 0                  # dense weights counted in the budget (respread)
    iso: IsoFlopResult | None = None
    steps_per_epoch: int = 0
    total_steps: int = 0

    def context(self) -> SetupContext:
        """What the method's ``prepare`` / ``setup`` see."""
        data = self.data
        return SetupContext(
            table=self.table, sparse=self.sparse, s=self.s_eff, total_steps=self.total_steps,
            seed=int(self.cfg.seed), distribution=self.cfg.distribution,
            extra_dense=self.extra_dense, batches=lambda: data.train.batches(10**6),
            loss_fn=torch.nn.functional.cross_entropy, device=self.device)


def requested_sparsity(cfg: DictConfig) -> float:
    """``s`` as a float, or a one-line error (the only place that reads ``cfg.s``)."""
    s = cfg.s
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0.0 <= float(s) < 1.0:
        raise UserError(f"s={s} is outside [0, 1): s is the fraction of zero weights, e.g. s=0.9")
    return float(s)


def validate(cfg: DictConfig) -> None:
    """Checks that need no data or model; each failure is one line naming the fix."""
    for key in ("epochs", "batch_size", "grad_accum", "log_every"):
        value = cfg.trainer[key]
        if not isinstance(value, int) or value < 1:
            raise UserError(f"trainer.{key}={value} must be a positive integer")
    dist.check_options(str(cfg.distributed.backend), str(cfg.distributed.mask_sync))
    if not isinstance(cfg.seed, int):
        raise UserError(f"seed={cfg.seed} must be an integer")
    if cfg.sparse.backend not in BACKENDS:
        raise UserError(f"sparse.backend={cfg.sparse.backend} is unknown; valid: "
                        f"{', '.join(BACKENDS)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device={name} but no CUDA device is available; use run.device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_plan(plan: RunPlan) -> RunPlan:
    """Fill ``plan`` (whose ``cfg`` and ``s`` are set) stage by stage; returns it."""
    cfg = plan.cfg
    validate(cfg)
    plan.s_eff = plan.s
    plan.dist = dist.init(str(cfg.distributed.backend), str(cfg.run.device))
    plan.device = plan.dist.device if plan.dist.enabled else resolve_device(str(cfg.run.device))
    t = cfg.trainer
    plan.data = build_data(cfg.dataset, batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
                           seed=cfg.seed, device=plan.device, num_workers=t.num_workers)
    ddp.shard_data(plan.data, plan.dist, str(cfg.dataset.name))
    plan.method = build_method(cfg.method)
    _check_method(plan)
    _build_model(plan)
    ddp.seed_rank(int(cfg.seed), plan.dist)
    plan.steps_per_epoch = len(plan.data.train) // t.grad_accum
    if plan.steps_per_epoch < 1:
        ranks = f" x {plan.dist.world_size} ranks" if plan.dist.enabled else ""
        raise UserError(f"the training set ({plan.data.num_train} samples) is smaller than one "
                        f"step of {t.batch_size * t.grad_accum}{ranks}; lower "
                        "trainer.batch_size")
    plan.total_steps = t.epochs * plan.steps_per_epoch
    plan.method.prepare(plan.model, plan.context())
    _search_isoflop(plan)
    return plan


def dense_conflict(s: float, ift: str) -> str:
    """The error for method=dense with a sparsity or an IFT, suggesting only what would help."""
    asked = [f"s={s}"] if s > 0 else []
    asked += [f"ift={ift}"] if ift != "none" else []
    undo = " ".join(["s=0"] * (s > 0) + ["ift=none"] * (ift != "none"))
    return (f"method=dense trains every weight, so {' '.join(asked)} has no effect; pick a sparse "
            f"method with s > 0 (e.g. method=rigl s=0.9) or drop it for dense training ({undo})")


def _check_method(plan: RunPlan) -> None:
    method, ift = plan.method, str(plan.cfg.ift.name)
    if not method.sparse and (plan.s > 0 or ift != "none"):
        raise UserError(dense_conflict(plan.s, ift))
    if method.sparse and plan.s == 0:
        raise UserError(f"method={method.name} needs a sparsity s > 0, e.g. s=0.9 "
                        "(s=0 is dense training: method=dense)")


def _build_model(plan: RunPlan) -> None:
    cfg, spec = plan.cfg, plan.data.spec
    shape = (spec.in_channels, spec.image_size, spec.image_size)

    def build(width_mult: float) -> torch.nn.Module:
        return build_model(cfg.model, in_channels=spec.in_channels, num_classes=spec.num_classes,
                           image_size=spec.image_size, width_mult=width_mult)

    with torch.device("meta"):
        plan.baseline = trace_layers(build(1.0), shape)
    seed_everything(int(cfg.seed))
    plan.model = build_ift_model(cfg.ift, plan.s, build, shape)
    plan.table = trace_layers(plan.model, shape)
    if plan.method.sparse:
        plan.sparse = select_sparse(plan.model, plan.table, cfg.sparse.dense)
        if not plan.sparse:
            raise UserError("no layer is left to sparsify after sparse.dense; keep fewer "
                            "layers dense")
    if cfg.sparse.respread:
        chosen = set(plan.sparse)
        plan.extra_dense = sum(layer.numel for layer in plan.table if layer.name not in chosen)
    plan.model.to(plan.device)


def _search_isoflop(plan: RunPlan) -> None:
    cfg, method = plan.cfg, plan.method
    if (not method.sparse or not method.isoflop_search or cfg.ift.name == "none"
            or not cfg.sparse.isoflop):
        return
    plan.iso = isoflop_sparsity(
        lambda x: method.mean_fwd_flops(plan.table, plan.sparse, x, cfg.distribution,
                                        plan.extra_dense),
        target=float(plan.baseline.dense_fwd()))
    plan.s_eff = plan.iso.sparsity
