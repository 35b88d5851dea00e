"""One run: plan -> trainer -> (resume) -> fit -> summary.

``run(cfg, run_dir)`` is a plain function of the composed config (Hydra stays in cli.py), so
tests and notebooks call it directly. Whatever happens, ``summary.json`` is written atomically
with status ``completed``, ``dry_run`` or ``failed`` (plus a one-line ``error``).
"""
from __future__ import annotations

import math
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from . import ddp
from . import distributed as dist
from . import summary as sm
from .errors import TrainingFailed, UserError, one_line
from .loggers import Loggers, MetricsFile, WandbMirror
from .methods.auto import resolve_auto
from .optim import build_optimizer, lr_schedule
from .plan import RunPlan, build_plan, requested_sparsity
from .precision import amp_dtype
from .sparsity.backend import apply_backend
from .resume import resume_trainer
from .rundir import owned, write_summary
from .runconfig import trajectory_config
from .train import Interrupted, Trainer, TrainSetup, to_channels_last

FINGERPRINT_KEYS = ("model.name", "dataset.name", "method.name", "ift.name", "s", "seed",
                    "distribution.name", "trainer.batch_size", "trainer.epochs", "trainer.max_steps")


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    return {k: OmegaConf.select(cfg, k) for k in FINGERPRINT_KEYS}


def _example_batch(plan: RunPlan, channels_last: bool) -> torch.Tensor | None:
    """The first few samples of one real batch (first test batch: no shuffle, no augmentation,
    no RNG drawn), on which the condensed backend times each layer: every layer then sees
    inputs of its real shape and dtype, whatever the task (images, token ids)."""
    if plan.data is None:
        return None
    with closing(plan.data.test.batches(0)) as batches:
        x = next(batches, (None, None))[0]
    if x is None:
        return None
    return to_channels_last(x[:16]) if channels_last else x[:16]


def make_trainer(plan: RunPlan, run_dir: Path) -> Trainer:
    """Masks, optimizer, execution backend, schedule and loop for the planned run."""
    cfg, t, model, ranks = plan.cfg, plan.cfg.trainer, plan.model, plan.dist
    channels_last = _auto(t.channels_last, plan.device.type == "cuda")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model = plan.model = ddp.sync_bn(model, bool(t.sync_bn), ranks)
    plan.method.setup(model, plan.context())
    mask_sync = str(cfg.distributed.mask_sync)
    if ranks.enabled:
        if str(cfg.sparse.backend) == "condensed":  # DDP's buckets would not follow new K
            raise UserError("sparse.backend=condensed stores each layer's nonzeros, whose shape "
                            "changes at mask updates, and does not run data-parallel; use "
                            "sparse.backend=masked with several ranks")
        ddp.sync_initial_masks(plan.method, mask_sync)
    optimizer = build_optimizer(cfg.optimizer, model)
    plan.method.attach_optimizer(optimizer)
    apply_backend(str(cfg.sparse.backend), model, plan.method, _example_batch(plan, channels_last))
    lr_at = lr_schedule(cfg.schedule, float(cfg.optimizer.lr), plan.steps_per_epoch,
                        plan.total_steps)
    setup = TrainSetup(
        epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch, grad_accum=t.grad_accum,
        device=plan.device, amp_dtype=amp_dtype(str(t.precision), plan.device),
        channels_last=channels_last, label_smoothing=float(t.label_smoothing),
        log_every=t.log_every, stop_after_steps=t.stop_after_steps,
        progress=(None if t.progress == "auto" else bool(t.progress)) if ranks.is_main() else False,
        checkpoint_dir=run_dir / "checkpoints",
        extra={"fingerprint": fingerprint(cfg), "config": trajectory_config(cfg),
               "s_effective": plan.s_eff},
        max_steps=plan.total_steps,
        spectral_every=int(cfg.sparse.spectral_every) if cfg.sparse.spectral else 0,
        ranks=ranks, mask_sync=mask_sync,
    )
    forward = ddp.wrap(model, ranks, bool(cfg.distributed.find_unused_parameters))
    forward = torch.compile(forward) if t.compile else forward
    metrics = MetricsFile(run_dir / "metrics.jsonl", enabled=ranks.is_main())
    return Trainer(model, plan.data, plan.method, optimizer, lr_at, plan.table, setup,
                   Loggers(metrics), forward, plan.task)


def resume_if_asked(cfg: DictConfig, trainer: Trainer, run_dir: Path) -> str | None:
    """Continue from a checkpoint when ``resume`` finds one; returns its wandb run id."""
    payload = resume_trainer(trainer, cfg, run_dir)
    return payload.get("wandb_id") if payload else None


def attach_wandb(cfg: DictConfig, trainer: Trainer, run_dir: Path, run_id: str | None) -> None:
    if cfg.logger.name != "wandb" or not dist.current().is_main():
        return
    mirror = WandbMirror(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True), run_id)
    trainer.loggers.mirrors.append(mirror)
    trainer.setup.extra["wandb_id"] = mirror.run_id


def _auto(value: Any, default: bool) -> bool:
    return default if value == "auto" else bool(value)


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

    The directory is owned first (:mod:`rundir`): a busy directory or one holding another run
    is refused before anything is written, and a completed identical run is left untouched
    (its summary is returned). User errors, NaN losses and interruptions still write a
    ``failed`` summary and are then re-raised for the CLI to turn into an exit code; bugs keep
    their traceback.
    """
    launch = dist.launch_env()
    if launch.rank != 0:  # rank 0 owns the directory for the whole data-parallel launch
        if dist.shared_value(f"owned/{run_dir}", "", launch) != "train":
            return {}     # rank 0 found the run completed, or could not own the directory
        return _run_owned(cfg, Path(run_dir))
    decision = "refused"
    try:
        with owned(cfg, Path(run_dir)) as own:
            decision = "train" if own.done is None else "done"
            dist.shared_value(f"owned/{run_dir}", decision, launch)
            if own.done is not None:
                print(f"{own.path} already holds this run, completed; nothing to do")
                return own.done
            return _run_owned(cfg, own.path)
    finally:
        if decision == "refused":
            dist.shared_value(f"owned/{run_dir}", decision, launch)


def _run_owned(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    status, error, raised = "completed", None, None
    plan, trainers = RunPlan(cfg=cfg), []
    try:
        plan.s = requested_sparsity(cfg)
        plan.cfg = resolve_auto(cfg, plan.s)
        if not _execute(plan, run_dir, trainers):
            out = sm.dry_run(plan, run_dir, t0)
            if plan.dist.is_main():
                sm.write(run_dir, out)
            dist.finish_together(str(run_dir))
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
    out = sm.build(plan, trainer.state if trainer else None, status, error, t0, run_dir,
                   spectral=trainer.spectral_final if trainer else None)
    out["distributed"] = ddp.summary_section(
        plan.dist, int(cfg.trainer.batch_size), int(cfg.trainer.grad_accum),
        (trainer.mask_hashes if trainer else []) or [""] * plan.dist.world_size)
    if plan.dist.is_main():  # the others wait until it is written (torchrun would stop rank 0
        write_summary(run_dir, out, failing=raised is not None)  # if they exited first)
    dist.finish_together(str(run_dir))
    if trainer is not None:
        trainer.loggers.close(_flat(out))
    if plan.model is not None and plan.dist.is_main():  # else the one-line error says it all
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
