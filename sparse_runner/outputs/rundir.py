"""Taking ownership of a run directory before anything is written into it.

``owned(cfg, run_dir)`` checks that files can really be created there, takes the directory's
lock (one process per run directory), and decides what the start means for what is already
there, *before* a byte is written:

- an empty directory, or one left by a start that failed before its first checkpoint: a new run;
- a run with the same trajectory settings (see :mod:`runconfig`) and ``resume=auto``: continue
  it, or, when it completed, do nothing and report its summary (``done``);
- anything else (other settings, ``resume=never`` or another run's checkpoint on top of a run
  with a checkpoint): refused in one line listing the differing keys, unless
  ``run.on_conflict=new`` asks for a fresh directory beside it (``<dir>-2``, ``<dir>-3``, ...).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from . import checkpoint as ckpt
from ..utils.errors import UserError, one_line
from .fsio import atomic_write_json, clean_temp_files, load_summary, probe_dir, read_json
from .runconfig import FINGERPRINT_KEYS, describe, differences, flatten, trajectory_config
from .runlock import RunLock

CONFIG_RECORD = ".sparse-run.json"  # the trajectory config of the run this directory holds
SUMMARY = "summary.json"
ON_CONFLICT = ("refuse", "new")


@dataclass
class Ownership:
    path: Path                      # where the run writes (a fresh sibling with on_conflict=new)
    done: dict[str, Any] | None     # the completed run's summary when there is nothing to do
    freed_bytes: int = 0            # temporary files of interrupted writes removed


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    record = read_json(run_dir / CONFIG_RECORD)
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        return record["config"]
    last = run_dir / "checkpoints" / ckpt.LAST
    if not last.is_file():
        return None
    try:  # an older run without the record: its checkpoint knows the settings
        payload = torch.load(last, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(payload.get("config"), dict):
        return payload["config"]
    fp = payload.get("fingerprint")
    return _unflatten(fp) if isinstance(fp, dict) else None


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _conflict(cfg: DictConfig, run_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """(why this start may not use ``run_dir``, or None; the completed summary if same run)."""
    summary = load_summary(run_dir / SUMMARY, warn=lambda _m: None)
    completed = summary is not None and summary.get("status") == "completed"
    has_ckpt = (run_dir / "checkpoints" / ckpt.LAST).is_file()
    if not (completed or has_ckpt):
        return None, None
    what = "a completed run" if completed else "an unfinished run (checkpoints/last.pt)"
    saved = _saved_config(run_dir)
    ours = trajectory_config(cfg)
    if saved is None:
        return f"{run_dir} holds {what} whose settings are unknown", None
    if set(flatten(saved)) <= set(FINGERPRINT_KEYS):  # legacy record: compare what it has
        ours = _unflatten({k: v for k, v in flatten(ours).items() if k in FINGERPRINT_KEYS})
    diff = differences(saved, ours)
    if diff:
        return f"{run_dir} holds {what} with other settings ({describe(diff)})", None
    if not _resumes_here(cfg, run_dir):
        return (f"{run_dir} holds {what} and resume={cfg.resume} would start over; continue it "
                "with resume=auto"), None
    return None, summary if completed else None


def _resumes_here(cfg: DictConfig, run_dir: Path) -> bool:
    resume = cfg.resume
    if resume == "auto":
        return True
    if resume in (None, "", "none", "false", "False", "never"):
        return False
    target = Path(str(resume)).expanduser().resolve()
    here = run_dir.resolve()
    return target in (here, here / "checkpoints", here / "checkpoints" / ckpt.LAST)


def fresh_sibling(run_dir: Path) -> Path:
    n = 2
    while Path(f"{run_dir}-{n}").exists():
        n += 1
    return Path(f"{run_dir}-{n}")


def resolved(cfg: DictConfig) -> DictConfig:
    """``method=auto`` resolved, as the run and its checkpoints see it (unchanged when the
    sparsity is invalid: the run reports that itself)."""
    from ..methods.auto import resolve_auto
    from ..plan import requested_sparsity

    try:
        return resolve_auto(cfg, requested_sparsity(cfg))
    except UserError:
        return cfg


@contextlib.contextmanager
def owned(cfg: DictConfig, run_dir: Path) -> Iterator[Ownership]:
    """Own ``run_dir`` for the ``with`` block (see the module docstring); raises UserError."""
    policy = str(cfg.run.get("on_conflict", "refuse"))
    if policy not in ON_CONFLICT:
        raise UserError(f"run.on_conflict={policy}; valid: {', '.join(ON_CONFLICT)}")
    run_dir, cfg = Path(run_dir), resolved(cfg)
    probe_dir(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        reason, done = _conflict(cfg, run_dir)
        if reason is not None and policy != "new":
            fix = "" if "resume=auto" in reason else "; rerun with its settings"
            raise UserError(f"{reason}{fix}, choose another out_dir=<dir>, or add "
                            "run.on_conflict=new for a fresh directory")
    except BaseException:
        lock.release()
        raise
    if reason is not None:  # run.on_conflict=new
        lock.release()
        sibling = fresh_sibling(run_dir)
        print(f"{reason}; writing this run to {sibling} (run.on_conflict=new)")
        with owned(cfg, sibling) as inner:
            yield inner
        return
    try:
        own = Ownership(run_dir, done)
        if done is None:
            own.freed_bytes = clean_temp_files(
                [run_dir, run_dir / "checkpoints", run_dir / ".hydra"])
            if own.freed_bytes:
                print(f"removed {own.freed_bytes} bytes of temporary files that an interrupted "
                      f"write left in {run_dir}")
            atomic_write_json(run_dir / CONFIG_RECORD, {"config": trajectory_config(cfg),
                                                        "pid": os.getpid()})
        yield own
    finally:
        lock.release()


def write_summary(run_dir: Path, summary: dict[str, Any], failing: bool) -> None:
    """Write ``summary.json``; when the run is already failing, a failure to write it is a
    warning line, so the original error (often the same full disk) is the one reported."""
    from .. import summary as sm

    try:
        sm.write(run_dir, summary)
    except (UserError, OSError) as exc:
        if not failing:
            raise
        print(f"sparse-run: warning: no summary.json written ({one_line(exc)})", file=sys.stderr)
