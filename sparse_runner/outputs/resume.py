"""Continue a run from a checkpoint: check it belongs to this run, restore, align metrics.jsonl.

Every way a checkpoint can fail to fit (another run's settings, a foreign or partial file, a
different optimizer or set of sparse layers) is a one-line :class:`UserError`, never a
``KeyError`` from deep inside ``load_state_dict``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import checkpoint as ckpt
from ..utils.errors import UserError, one_line
from .fsio import atomic_write
from .runconfig import check_payload, check_resume
from ..sparsity.condensed_ckpt import adapt


def resume_trainer(trainer: Any, cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Restore ``trainer`` from the checkpoint ``cfg.resume`` names; returns its payload.

    Without a checkpoint the run starts fresh, and ``metrics.jsonl`` is emptied: whatever is
    in it was logged by an attempt that died before its first checkpoint."""
    metrics = trainer.loggers.metrics
    path = ckpt.resolve_resume(cfg.resume, Path(run_dir))
    if path is None:
        metrics.reset()
        return None
    payload = ckpt.load(path)
    check_payload(payload, path)
    check_resume(payload, cfg, path)
    check_optimizer(trainer.optimizer, payload["optimizer"], path)
    try:
        payload = adapt(payload, trainer.model, trainer.optimizer)  # the other sparse.backend
        trainer.restore(payload)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise UserError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: "
                        f"{one_line(exc)[:160]}); resume with the settings it was written with "
                        "or choose a new out_dir") from None
    if not metrics.enabled:  # a data-parallel rank other than 0: rank 0 keeps the files
        return payload
    source = path.parent.parent / "metrics.jsonl"
    if source.exists() and source.resolve() != metrics.path.resolve():
        atomic_write(metrics.path, source.read_bytes())
    metrics.truncate_after(trainer.state.step)
    if path.resolve() == (Path(run_dir) / "checkpoints" / ckpt.LAST).resolve():
        repair_best(path, payload)
    print(f"resuming from {path} at step {trainer.state.step}")
    return payload


def check_optimizer(optimizer: Any, saved: Any, path: Path) -> None:
    """The saved optimizer state must be of this optimizer (older checkpoints do not record
    the config, and loading SGD state into AdamW only fails at the first step)."""
    ours = optimizer.state_dict()["param_groups"]
    theirs = saved.get("param_groups") if isinstance(saved, dict) else None
    if (not isinstance(theirs, list) or len(theirs) != len(ours)
            or any(not isinstance(t, dict) or set(t) - {"initial_lr"} != set(o) - {"initial_lr"}
                   or len(t.get("params", ())) != len(o["params"]) for t, o in zip(theirs, ours))):
        raise UserError(f"checkpoint {path} holds the state of another optimizer or other "
                        "parameters (a different optimizer= or sparse.dense?); resume with the "
                        "settings it was written with or choose a new out_dir")


def repair_best(last: Path, payload: dict[str, Any]) -> None:
    """Redo the ``best.pt`` link a crash between writing ``last.pt`` and linking it lost: the
    best checkpoint must record the best accuracy ``last.pt`` knows of."""
    best = last.with_name(ckpt.BEST)
    state = payload.get("state") or {}
    target = state.get("best_acc1", -1.0)
    last_acc = (state.get("last_eval") or {}).get("acc1")
    if last_acc is None or last_acc != target:
        return  # this epoch was not the best one: best.pt (if any) is older and correct
    try:
        theirs = torch.load(best, map_location="cpu", weights_only=True)["state"]["best_acc1"]
    except Exception:
        theirs = None
    if theirs is None or theirs < target:
        ckpt.link_or_copy(last, best)
