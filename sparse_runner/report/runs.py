"""Reading a sweep directory: one record per run, robust to damaged files.

A report must never die on one bad run: an unreadable, binary, non-object or status-less
``summary.json`` is skipped with one warning line, a section that is null or not an object is
treated as empty (one warning line), and everything else is reported. A job directory that Hydra
created (``.hydra/``) but that has no summary yet is a run *without summary* (crashed or still
running), shown as such.

Each run's table coordinates come from its Hydra config (``.hydra/config.yaml``): the ``preset``
block a table preset sets (``name``, ``row``, ``column``, ``baseline``, interpolated per job).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..outputs.fsio import load_summary

Warn = Callable[[str], None]


def stderr_warn(message: str) -> None:
    print(f"sparse-run-report: warning: {message}", file=sys.stderr)


def read_summary(path: Path, warn: Warn = stderr_warn) -> dict[str, Any] | None:
    """``summary.json`` as a dict with every section a dict, or None after one warning."""
    return load_summary(path, warn=warn)


def read_preset(run_dir: Path, warn: Warn = stderr_warn) -> dict[str, Any] | None:
    """The resolved ``preset`` block of the run's Hydra config, or None (no preset, no config)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        import hydra.core.utils  # noqa: F401  (registers the ${now:} resolver out_dir uses)
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        node = OmegaConf.select(cfg, "preset")
        if node is None:
            return None
        return {k: OmegaConf.select(cfg, f"preset.{k}") for k in ("name", "row", "column", "baseline")}
    except Exception as exc:  # a damaged config must not stop the report
        warn(f"{path}: cannot read the preset block ({type(exc).__name__}: {exc}); run not placed")
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def column_key(value: Any) -> float | None:
    """s as a table column (rounded so 0.75 from YAML and 0.7500000001 meet)."""
    v = _number(value)
    return None if v is None else round(v, 6)


@dataclass
class Run:
    """One run of a sweep: what the report needs, whatever state its files are in."""

    path: str
    status: str                      # completed | failed | dry_run | no summary
    summary: dict[str, Any] = field(default_factory=dict)
    preset: dict[str, Any] | None = None

    @property
    def acc(self) -> float | None:
        return self.metric("test_acc1")

    def metric(self, key: str) -> float | None:
        """A final metric of summary.json (``test_acc1``, ``test_loss``, ...), None if absent."""
        return _number(self.summary.get("metrics", {}).get(key))

    @property
    def train_flops(self) -> float | None:
        return _number(self.summary.get("flops", {}).get("train_total"))

    @property
    def method(self) -> str | None:
        m = self.summary.get("method")
        return m if isinstance(m, str) else None

    @property
    def dataset(self) -> str | None:
        d = self.summary.get("dataset")
        return d if isinstance(d, str) else None

    @property
    def seed(self) -> Any:
        return self.summary.get("seed")

    def coord(self, key: str) -> Any:
        return None if self.preset is None else self.preset.get(key)

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.acc is not None


def find_runs(root: Path, warn: Warn = stderr_warn) -> list[Run]:
    """Every run under ``root``: each ``summary.json`` plus Hydra job dirs that lack one."""
    runs, seen = [], set()
    for path in sorted(root.rglob("summary.json")):
        seen.add(path.parent)
        data = read_summary(path, warn)
        if data is None:
            continue
        rel = str(path.parent.relative_to(root)) or "."
        runs.append(Run(rel, data["status"], data, read_preset(path.parent, warn)))
    for hydra_dir in sorted(root.rglob(".hydra")):
        job = hydra_dir.parent
        if job not in seen and (hydra_dir / "config.yaml").is_file():
            rel = str(job.relative_to(root)) or "."
            runs.append(Run(rel, "no summary", {}, read_preset(job, warn)))
    return runs
