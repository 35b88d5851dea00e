"""``sparse-run-bench gpu_check <stage> --out DIR``: the Python half of scripts/gpu_check.sh.

GPU time is rare, so one prepared command validates and benchmarks everything in one go.
The shell script runs each stage in its own process under its own timeout; a stage prints
one line per check as it finishes and writes ``DIR/stage_<stage>.json``; ``table`` merges the
stage files into ``DIR/results.json`` (device, versions, date, every check) and prints the
final table (``record`` adds the rows the script knows of: timeouts, sanitizer errors).
Stages: env, build, correct, kernels, sconv, swrn, train, sync, ddp (see their modules:
_gpu_checks.py, _gpu_timing.py, _gpu_sconv.py, _gpu_swrn.py, _gpu_train.py, _gpu_ddp.py;
ddp runs only where more than one GPU is visible). ``correct --small`` (the
Linear kernels' small shapes and four sparse-convolution ones) is what the script runs under
compute-sanitizer.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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


def _stages() -> dict[str, Callable[[argparse.Namespace], Iterable[Check]]]:
    from . import _gpu_checks, _gpu_ddp, _gpu_sconv, _gpu_swrn, _gpu_timing, _gpu_train

    return {"env": _gpu_checks.env, "build": _gpu_checks.build, "correct": _gpu_checks.correct,
            "kernels": _gpu_timing.kernels, "sconv": _gpu_sconv.sconv, "swrn": _gpu_swrn.swrn,
            "train": _gpu_train.train, "sync": _gpu_train.sync, "ddp": _gpu_ddp.ddp}


ORDER = ("env", "build", "correct", "sanitizer_memcheck", "sanitizer_racecheck", "kernels",
         "sconv", "swrn", "train", "sync", "ddp")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sparse-run-bench gpu_check", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=[*_stage_names(), "table", "record"])
    p.add_argument("--out", type=Path, required=True, help="results directory")
    p.add_argument("--small", action="store_true", help="correct: small shapes only")
    p.add_argument("--nproc", type=int, default=2, help="ddp: processes (GPUs) of torchrun")
    p.add_argument("--name", default=None, help="stage file name (default: the stage)")
    p.add_argument("--status", choices=STATUSES, default="fail", help="record: its status")
    p.add_argument("--value", default="", help="record: its value")
    p.add_argument("--detail", default="", help="record: what happened")
    args = p.parse_args(argv)
    if args.stage == "record":
        record(args.name or "unknown", args.status, args.value, args.detail, args.out)
        return 0
    if args.stage == "table":
        results = merge(args.out, ORDER)
        write_json(args.out / "results.json", results)
        for row in table(results):
            print(row)
        return 1 if results["counts"]["fail"] + results["counts"]["timeout"] else 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; run this on a GPU machine",
              file=sys.stderr)
        return 3
    return run_stage(args.name or args.stage, _stages()[args.stage](args), args.out)


def _stage_names() -> tuple[str, ...]:
    return ("env", "build", "correct", "kernels", "sconv", "swrn", "train", "sync", "ddp")


if __name__ == "__main__":
    sys.exit(main())
