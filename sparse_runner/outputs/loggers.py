"""Where metrics go: ``metrics.jsonl`` always (the source of truth), wandb optionally (a mirror).

wandb is imported only when ``logger=wandb`` and always gets an explicit ``mode`` (the
``WANDB_MODE`` variable is read once per process, which breaks in-process multirun sweeps) and
is finished in ``close()`` so every Hydra job gets its own run. Its x-axis for accuracy is
cumulative training FLOPs.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from ..utils.errors import UserError
from .fsio import append_line, atomic_write, make_dirs, read_jsonl, rewrite_jsonl
from ..utils.optional import attempt


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsFile:
    """Append-only JSON lines: each event is one whole-line append, fsynced, so a crash loses
    nothing already logged and can tear at most the last line (which readers skip)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled   # disabled: a data-parallel rank other than 0
        if enabled:
            make_dirs(self.path.parent)

    def truncate_after(self, step: int) -> None:
        """Drop events logged after ``step`` (they belong to the part a resume will redo) and a
        torn last line, so the next append starts on a line of its own."""
        if self.enabled and self.path.exists():
            rewrite_jsonl(self.path, lambda e: _step(e) <= step)

    def reset(self) -> None:
        """Start empty (a fresh start over what a failed attempt logged)."""
        if self.enabled and self.path.exists() and self.path.stat().st_size:
            atomic_write(self.path, b"")

    def write(self, event: Mapping[str, Any]) -> None:
        if self.enabled:
            append_line(self.path, json.dumps({k: _clean(v) for k, v in event.items()}))

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)


def _step(event: Mapping[str, Any]) -> float:
    step = event.get("step", 0)
    return step if isinstance(step, (int, float)) else 0


class WandbMirror:
    """Mirror of the metrics stream to Weights & Biases (online, offline or disabled)."""

    section = "wandb"   # where summary.json records a failure of the mirror (optional.py)

    def __init__(self, cfg: Mapping[str, Any], run_dir: Path, config: dict, run_id: str | None):
        try:
            import wandb
        except ImportError:
            raise UserError("logger=wandb needs the wandb package: pip install 'sparse-run[wandb]'"
                            " or use logger=local") from None
        mode = str(cfg.get("mode", "offline"))
        if mode not in ("online", "offline", "disabled"):
            raise UserError(f"logger.mode={mode!r}; valid: online, offline, disabled")
        self.run = wandb.init(
            mode=mode, project=cfg.get("project") or "sparse-run", entity=cfg.get("entity"),
            group=cfg.get("group"), tags=list(cfg.get("tags") or []), dir=str(run_dir),
            config=config, id=run_id, resume="allow" if run_id else None, reinit="create_new",
        )
        self.run.define_metric("train_flops")
        for split in ("train", "test"):
            self.run.define_metric(f"{split}/*", step_metric="train_flops")

    @property
    def run_id(self) -> str:
        return str(self.run.id)

    def write(self, event: Mapping[str, Any]) -> None:
        split = event.get("split") or event.get("event", "misc")
        data = {f"{split}/{k}": v for k, v in event.items()
                if isinstance(v, (int, float)) and k not in ("step", "train_flops")}
        data["train_flops"] = event.get("train_flops", 0.0)
        self.run.log(data, step=int(event.get("step", 0)))

    def summary(self, summary: Mapping[str, Any]) -> None:
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The local file plus optional mirrors; ``log`` fans an event out to all of them. A mirror
    is optional: one that raises is reported once (optional.py) and dropped."""

    def __init__(self, metrics: MetricsFile, mirrors: list[Any] | None = None) -> None:
        self.metrics = metrics
        self.mirrors = mirrors or []

    def log(self, event: Mapping[str, Any]) -> None:
        self.metrics.write(event)
        for m in list(self.mirrors):
            if attempt(m.section, f"the {m.section} mirror", m.write, event, default=False) is False:
                self.mirrors.remove(m)

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        for m in self.mirrors:
            if summary is not None:
                attempt(m.section, f"the {m.section} mirror's summary", m.summary, summary)
            attempt(m.section, f"closing the {m.section} mirror", m.close)
        self.mirrors = []
