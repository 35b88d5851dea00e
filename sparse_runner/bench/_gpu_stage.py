"""What a gpu_check stage is and how its results are kept: a ``Check`` per line of the report,
one JSON file per stage (written even when the stage crashes), the merged results.json and the
final table. The stages (_gpu_checks, _gpu_timing, _gpu_sconv, _gpu_train) build on this module;
gpu_check.py, the entry point, sits on top of them.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

STATUSES = ("ok", "fail", "skip", "info", "timeout")


@dataclass
class Check:
    """One line of the report: what was checked or measured, and how it came out."""

    stage: str
    name: str
    status: str
    value: float | str | None = None
    unit: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def line(self) -> str:
        value = "" if self.value is None else (
            f" {self.value:.4g}{self.unit}" if isinstance(self.value, float) else
            f" {self.value}{self.unit}")
        return f"[{self.stage}] {self.name}: {self.status}{value}" + (
            f" ({self.detail})" if self.detail else "")


def run_stage(stage: str, checks: Iterable[Check], out: Path) -> int:
    """Print each check as it comes, write the stage file (also when the stage raises)."""
    done: list[Check] = []
    try:
        for check in checks:
            print(check.line(), flush=True)
            done.append(check)
    except Exception as exc:  # noqa: BLE001 (a crashed stage is a failed check, not a crash)
        check = Check(stage, "stage", "fail", detail=f"{type(exc).__name__}: {exc}"[:300])
        print(check.line(), flush=True)
        done.append(check)
    write_json(out / f"stage_{stage}.json", {"stage": stage, "checks": [asdict(c) for c in done]})
    return 1 if any(c.status in ("fail", "timeout") for c in done) else 0


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def record(stage: str, status: str, value: str, detail: str, out: Path) -> None:
    """A stage-level row the shell script adds (a timeout, a sanitizer error, a crash)."""
    path = out / f"stage_{stage}.json"
    checks = json.loads(path.read_text())["checks"] if path.exists() else []
    number: float | str | None = value or None
    try:
        number = float(value) if value else None
    except ValueError:
        pass
    check = Check(stage, "stage", status, number, " s" if status == "timeout" else "", detail)
    print(check.line(), flush=True)
    checks.append(asdict(check))
    write_json(path, {"stage": stage, "checks": checks})


def merge(out: Path, order: Iterable[str]) -> dict[str, Any]:
    """results.json: environment of the env stage, date, and every stage's checks in order."""
    stages: dict[str, list[dict[str, Any]]] = {}
    for name in order:
        path = out / f"stage_{name}.json"
        stages[name] = json.loads(path.read_text())["checks"] if path.exists() else [
            asdict(Check(name, "stage", "skip", detail="did not run"))]
    env = {c["name"]: c["value"] for c in stages.get("env", []) if c["status"] == "info"}
    counts = {s: sum(c["status"] == s for cs in stages.values() for c in cs) for s in STATUSES}
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": env.get("device"), "environment": env, "counts": counts,
            "stages": stages}


def table(results: dict[str, Any]) -> Iterator[str]:
    """The final table: one row per check, then the totals."""
    yield f"{'stage':<8} {'check':<46} {'status':<7} {'value':>12}  detail"
    for stage, checks in results["stages"].items():
        for c in checks:
            v = c["value"]
            value = "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
            yield (f"{stage:<8} {c['name'][:46]:<46} {c['status']:<7} "
                   f"{(value + c['unit'])[:12]:>12}  {c['detail'][:60]}")
    yield "totals: " + ", ".join(f"{k} {n}" for k, n in results["counts"].items() if n)


def compare(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, terms: int
            ) -> tuple[bool, float]:
    """(within rounding, max abs error) of ``got`` against the float64 ``want``."""
    got = got.detach().double().cpu()
    if got.shape != want.shape:
        return False, float("inf")
    if not want.numel():
        return True, 0.0
    eps = {torch.float64: 2.0**-52, torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8,
           torch.float16: 2.0**-11}[dtype]
    acc = 2.0**-52 if dtype == torch.float64 else 2.0**-23
    scale = max(want.abs().max().item(), 1.0)
    err = (got - want).abs()
    ok = bool(torch.isfinite(got).all()) and bool(
        (err <= eps * want.abs() + 4 * (acc * terms + eps) * scale).all())
    return ok, err.max().item()
