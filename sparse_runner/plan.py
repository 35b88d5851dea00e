"""The run's plan: everything decided before training, computed once, in one place.

:func:`build_plan` validates the config, builds data, model and method, traces the layer
tables, runs the Iso-FLOP search and fixes the effective sparsity and the number of steps.
Training (run.py, train.py) and the summary (summary.py) read the plan; nothing re-derives it.
The plan fills in stage by stage, so a failure still leaves what was known for the summary.
"""
from __future__ import annotations

import math
import random
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from .distributed import ddp
from .distributed import comm as dist
from .data import Data, build_data, dataset_with_model_defaults
from .utils.errors import UserError, one_line
from .flops.budget import BUDGETS, Budget, official_budget
from .flops.tables import LayerTable, trace_layers
from .ift import build_ift_model
from .ift.feasible import isoflop_or_explain
from .flops.isoflop import S_MAX, IsoFlopResult
from .methods import build_method
from .models import build_model
from .sparsity import SetupContext, SparsityMethod, rounding_refine, select_sparse
from .sparsity.backend import BACKENDS
from .tasks import Task, build_task


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
    budget: Budget | None = None          # sparse.flop_budget=official: what the search matches
    steps_per_epoch: int = 0
    total_steps: int = 0
    epochs: int = 0                       # epochs the loop runs (the last may stop early)
    task: Task | None = None              # the dataset's task: loss, metrics, FLOP unit
    builder: Any = None                   # width_mult -> model (the IFT families call it)

    def context(self) -> SetupContext:
        """What the method's ``prepare`` / ``setup`` see."""
        data = self.data
        return SetupContext(
            table=self.table, sparse=self.sparse, s=self.s_eff, total_steps=self.total_steps,
            seed=int(self.cfg.seed), distribution=self.cfg.distribution,
            extra_dense=self.extra_dense, batches=lambda: data.train.batches(10**6),
            loss_fn=self.task.loss if self.task else torch.nn.functional.cross_entropy,
            device=self.device, trim=dict(self.iso.trim) if self.iso is not None else {})

    def trace(self, model: torch.nn.Module) -> LayerTable:
        """The layer table of ``model`` on the dataset's input (FLOPs per the task's unit)."""
        spec = self.data.spec
        return trace_layers(model, spec.input_shape, dtype=_input_dtype(spec.kind),
                            unit=self.task.unit)


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
    steps = cfg.trainer.get("max_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise UserError(f"trainer.max_steps={steps} must be a positive integer or null "
                        "(null: trainer.epochs sets the length)")
    dist.check_options(str(cfg.distributed.backend), str(cfg.distributed.mask_sync))
    if not isinstance(cfg.seed, int):
        raise UserError(f"seed={cfg.seed} must be an integer")
    if cfg.sparse.backend not in BACKENDS:
        raise UserError(f"sparse.backend={cfg.sparse.backend} is unknown; valid: "
                        f"{', '.join(BACKENDS)}")
    if cfg.sparse.flop_budget not in BUDGETS:
        raise UserError(f"sparse.flop_budget={cfg.sparse.flop_budget} is unknown; valid: "
                        f"{', '.join(BUDGETS)}")
    every = cfg.sparse.spectral_every
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise UserError(f"sparse.spectral_every={every} must be a positive integer (turn the "
                        "metrics off with sparse.spectral=false)")


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
    plan.data = build_data(dataset_with_model_defaults(cfg.dataset, cfg.model),
                           batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
                           seed=cfg.seed, device=plan.device, num_workers=t.num_workers)
    plan.task = build_task(plan.data.spec.task)
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
    plan.epochs, plan.total_steps = t.epochs, t.epochs * plan.steps_per_epoch
    if t.get("max_steps") is not None:  # the length in optimizer steps, for every task
        plan.total_steps = int(t.max_steps)
        plan.epochs = math.ceil(plan.total_steps / plan.steps_per_epoch)
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


def _input_dtype(kind: str) -> torch.dtype:
    return torch.long if kind == "text" else torch.float32


def dense_patterns(patterns: Sequence[str], model: torch.nn.Module) -> list[str]:
    """``sparse.dense`` for this model: ``stem`` is dropped for a model without one (GPT's
    first Linear is an attention projection; ``dense_layers`` says what it has)."""
    kept = getattr(model, "dense_layers", ("stem", "head"))
    return [str(p) for p in patterns if p not in ("stem", "head") or p in kept]


def _build_model(plan: RunPlan) -> None:
    cfg, spec = plan.cfg, plan.data.spec
    shape, dtype = spec.input_shape, _input_dtype(spec.kind)

    def build(width_mult: float) -> torch.nn.Module:
        return build_model(cfg.model, in_channels=spec.in_channels, num_classes=spec.num_classes,
                           image_size=spec.image_size, width_mult=width_mult, kind=spec.kind,
                           seq_len=spec.seq_len, dataset=spec.name)

    plan.builder = build
    with torch.device("meta"):
        base = build(1.0)
        plan.baseline = _trace_user_model(plan, base)
    seed_everything(int(cfg.seed))
    plan.model = build_ift_model(cfg.ift, plan.s, build, shape, dtype)
    plan.table = plan.trace(plan.model)
    if cfg.sparse.flop_budget == "official":
        plan.budget = official_budget(base, plan.model, shape, plan.table)
    if plan.method.sparse:
        plan.sparse = select_sparse(plan.model, plan.table, dense_patterns(cfg.sparse.dense, plan.model))
        if not plan.sparse:
            raise UserError("no layer is left to sparsify after sparse.dense; keep fewer "
                            "layers dense")
    if cfg.sparse.respread:
        chosen = set(plan.sparse)
        plan.extra_dense = sum(layer.numel for layer in plan.table if layer.name not in chosen)
    plan.model.to(plan.device)


def _trace_user_model(plan: RunPlan, model: torch.nn.Module) -> LayerTable:
    """The baseline's table; a model whose own forward rejects the data's input (a fixed input
    size, a patch or window size that does not divide it) is a one-line error naming both."""
    try:
        return plan.trace(model)
    except (AssertionError, RuntimeError, ValueError) as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = ([f for f in frames if "/torch/" not in f.filename] or frames)[-1]
        why = one_line(exc) if str(exc).strip() else f"at {Path(where.filename).name}:{where.lineno}"
        arch = plan.cfg.model.get("arch")
        name = f"model={plan.cfg.model.name}" + (f" model.arch={arch}" if arch else "")
        raise UserError(f"{name} cannot take the dataset's input {list(plan.data.spec.input_shape)} "
                        f"({type(exc).__name__}: {why}); use an input size the model accepts "
                        "(e.g. a multiple of its patch size or total stride)") from None


def _search_isoflop(plan: RunPlan) -> None:
    cfg, method = plan.cfg, plan.method
    if (not method.sparse or not method.isoflop_search or cfg.ift.name == "none"
            or not cfg.sparse.isoflop):
        return
    table, fixed, target = plan.table, 0, plan.baseline.dense_fwd()
    if plan.budget is not None:   # sparse.flop_budget=official: the official code's count
        table, fixed, target = plan.budget.table, plan.budget.fixed, plan.budget.target

    def flops_at(table: LayerTable, sparse: list[str]) -> Any:
        return lambda x: (method.mean_fwd_flops(table, sparse, x, cfg.distribution,
                                                plan.extra_dense) + fixed)

    def floor_at(s: float) -> float:
        """Forward FLOPs of the member at requested sparsity s with its sparse layers ~empty."""
        with torch.device("meta"):
            model = build_ift_model(cfg.ift, s, plan.builder, plan.data.spec.input_shape,
                                    _input_dtype(plan.data.spec.kind))
        table = plan.trace(model)
        sparse = select_sparse(model, table, dense_patterns(cfg.sparse.dense, model))
        return flops_at(table, sparse)(S_MAX)

    refine = rounding_refine(method, table, plan.sparse, cfg.distribution, plan.extra_dense)
    plan.iso = isoflop_or_explain(flops_at(table, plan.sparse), float(target), plan.s,
                                  str(cfg.ift.name), floor_at, refine)
    plan.s_eff = plan.iso.sparsity
