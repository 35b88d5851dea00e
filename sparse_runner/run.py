"""One run: plan -> trainer -> (resume) -> fit -> summary.

``run(cfg, run_dir)`` is a plain function of the composed config (Hydra stays in cli.py), so
tests and notebooks call it directly. Whatever happens, ``summary.json`` is written atomically
with status ``completed``, ``dry_run`` or ``failed`` (plus a one-line ``error``).
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from . import summary as sm
from .errors import TrainingFailed, UserError, one_line
from .loggers import Loggers, MetricsFile, WandbMirror
from .methods.auto import resolve_auto
from .optim import build_optimizer, lr_schedule
from .plan import RunPlan, build_plan, requested_sparsity
from .sparsity.backend import apply_backend
from .train import Interrupted, Trainer, TrainSetup

FINGERPRINT_KEYS = ("model.name", "dataset.name", "method.name", "ift.name", "s", "seed",
                    "distribution.name", "trainer.batch_size", "trainer.epochs")


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    return {k: OmegaConf.select(cfg, k) for k in FINGERPRINT_KEYS}


def _example_batch(plan: RunPlan, channels_last: bool) -> torch.Tensor | None:
    """A random batch of the run's input shape (the condensed backend times its layers on it)."""
    if plan.data is None:
        return None
    spec, n = plan.data.spec, min(int(plan.cfg.trainer.batch_size), 16)
    x = torch.randn(n, spec.in_channels, spec.image_size, spec.image_size, device=plan.device)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def make_trainer(plan: RunPlan, run_dir: Path) -> Trainer:
    """Masks, optimizer, execution backend, schedule and loop for the planned run."""
    cfg, t, model = plan.cfg, plan.cfg.trainer, plan.model
    channels_last = _auto(t.channels_last, plan.device.type == "cuda")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    plan.method.setup(model, plan.context())
    optimizer = build_optimizer(cfg.optimizer, model)
    plan.method.attach_optimizer(optimizer)
    apply_backend(str(cfg.sparse.backend), model, plan.method, _example_batch(plan, channels_last))
    lr_at = lr_schedule(cfg.schedule, float(cfg.optimizer.lr), plan.steps_per_epoch,
                        plan.total_steps)
    setup = TrainSetup(
        epochs=t.epochs, steps_per_epoch=plan.steps_per_epoch, grad_accum=t.grad_accum,
        device=plan.device, amp_dtype=_amp_dtype(str(t.precision), plan.device),
        channels_last=channels_last, label_smoothing=float(t.label_smoothing),
        log_every=t.log_every, stop_after_steps=t.stop_after_steps,
        progress=None if t.progress == "auto" else bool(t.progress),
        checkpoint_dir=run_dir / "checkpoints",
        extra={"fingerprint": fingerprint(cfg), "s_effective": plan.s_eff},
    )
    forward = torch.compile(model) if t.compile else model
    return Trainer(model, plan.data, plan.method, optimizer, lr_at, plan.table, setup,
                   Loggers(MetricsFile(run_dir / "metrics.jsonl")), forward)


def resume_if_asked(cfg: DictConfig, trainer: Trainer, run_dir: Path) -> str | None:
    """Continue from a checkpoint when ``resume`` finds one; returns its wandb run id."""
    path = ckpt.resolve_resume(cfg.resume, run_dir)
    if path is None:
        return None
    payload = ckpt.load(path)
    theirs, ours = payload.get("fingerprint", {}), fingerprint(cfg)
    diff = [f"{k}={theirs.get(k)}" for k in ours if theirs.get(k) != ours[k]]
    if diff:
        raise UserError(f"checkpoint {path} belongs to a different run ({', '.join(diff)}); "
                        "resume with the same settings or choose a new out_dir")
    trainer.restore(payload)
    metrics = trainer.loggers.metrics
    source = path.parent.parent / "metrics.jsonl"
    if source.resolve() != metrics.path.resolve() and source.exists():
        shutil.copyfile(source, metrics.path)
    metrics.truncate_after(trainer.state.step)
    print(f"resuming from {path} at step {trainer.state.step}")
    return payload.get("wandb_id")


def attach_wandb(cfg: DictConfig, trainer: Trainer, run_dir: Path, run_id: str | None) -> None:
    if cfg.logger.name != "wandb":
        return
    mirror = WandbMirror(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True), run_id)
    trainer.loggers.mirrors.append(mirror)
    trainer.setup.extra["wandb_id"] = mirror.run_id


def _auto(value: Any, default: bool) -> bool:
    return default if value == "auto" else bool(value)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("trainer.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "fp32":
        return None
    raise UserError(f"trainer.precision={precision!r}; valid: auto, fp32, bf16, fp16")


def _execute(plan: RunPlan, run_dir: Path, trainers: list[Trainer]) -> bool:
    """Plan, then train (True) or set up a dry run (False); the trainer goes to ``trainers``
    as soon as it exists, so a failure during training can still report its state."""
    build_plan(plan)
    if plan.cfg.run.dry_run:
        plan.method.setup(plan.model, plan.context())
        return False
    trainer = make_trainer(plan, run_dir)
    trainers.append(trainer)
    run_id = resume_if_asked(plan.cfg, trainer, run_dir)
    attach_wandb(plan.cfg, trainer, run_dir, run_id)
    trainer.fit()
    return True


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Execute one configured run in ``run_dir``; returns the summary that was written.

    User errors, NaN losses and interruptions still write a ``failed`` summary and are then
    re-raised for the CLI to turn into an exit code; bugs keep their traceback.
    """
    t0, run_dir = time.perf_counter(), Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {run_dir}: {exc.strerror}; choose "
                        "another with out_dir=<dir>") from None
    status, error, raised = "completed", None, None
    plan, trainers = RunPlan(cfg=cfg), []
    try:
        plan.s = requested_sparsity(cfg)
        plan.cfg = resolve_auto(cfg, plan.s)
        if not _execute(plan, run_dir, trainers):
            out = sm.dry_run(plan, run_dir, t0)
            sm.write(run_dir, out)
            return out
    except Interrupted as exc:
        status, error, raised = "failed", f"interrupted ({exc}); resume with resume={run_dir}", exc
    except (UserError, TrainingFailed) as exc:
        status, error, raised = "failed", one_line(exc), exc
    except KeyboardInterrupt as exc:
        status, error, raised = "failed", "interrupted by the user (Ctrl-C)", exc
    except Exception as exc:  # a bug: still leave a failed summary, keep the traceback
        status, error, raised = "failed", f"{type(exc).__name__}: {one_line(exc)}", exc
    trainer = trainers[0] if trainers else None
    out = sm.build(plan, trainer.state if trainer else None, status, error, t0, run_dir)
    sm.write(run_dir, out)
    if trainer is not None:
        trainer.loggers.close(_flat(out))
    if plan.model is not None:  # a run that never got a model: the one-line error says it all
        print(sm.result_text(out))
    if raised is not None:
        raise raised
    return out


def _flat(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, Mapping):
            flat.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v)):
            flat[f"{prefix}{k}"] = v
    return flat
