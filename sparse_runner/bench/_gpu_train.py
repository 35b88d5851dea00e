"""gpu_check stages train and sync: short CLI runs on synthetic CIFAR-shaped data.

``train``: three 50-step ``sparse-run`` runs (dense, RigL on the masked backend, SRigL on the
condensed backend), images/s read from each run's metrics.jsonl (median of the logged train
events after the first, which includes compilation and cuDNN autotuning).
``sync``: the same kind of run inside ``torch.cuda.set_sync_debug_mode("warn")``; every
synchronising CUDA call is recorded with its source line. A line that fires at least once per
training step is a per-step host sync (what the GPU path must not have) and fails the check.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from ._gpu_stage import Check

STEPS, BATCH = 50, 256
RUN_TIMEOUT_S = 24    # three runs fit the train stage's 75 s; two audit runs fit sync's 40 s
AUDIT_TIMEOUT_S = 19
RUNS = {"dense": ["method=dense"],
        "rigl_masked": ["method=rigl", "s=0.9"],
        "srigl_condensed": ["method=srigl", "s=0.9", "sparse.backend=condensed"]}


def overrides(name: str, out_dir: Path, steps: int = STEPS, batch: int = BATCH,
              log_every: int = 10, device: str = "cuda") -> list[str]:
    """The CLI arguments of one run: one epoch of ``steps`` steps of CIFAR-shaped images."""
    return [*RUNS[name], "dataset=synthetic", "dataset.shape=[3,32,32]", "dataset.num_classes=10",
            f"dataset.num_samples={steps * batch}", "dataset.num_test_samples=512",
            "trainer.epochs=1", f"trainer.batch_size={batch}", f"trainer.log_every={log_every}",
            "trainer.progress=false", f"run.device={device}", "logger=local", "resume=never",
            f"out_dir={out_dir}"]


def images_per_second(metrics: Path) -> float | None:
    """Median ``img_per_s`` of the train events of a metrics.jsonl, the first one excluded."""
    values = []
    for line in metrics.read_text().splitlines():
        event = json.loads(line) if line.strip() else {}
        if event.get("split") == "train" and isinstance(event.get("img_per_s"), (int, float)):
            values.append(float(event["img_per_s"]))
    values = values[1:] if len(values) > 1 else values
    return float(statistics.median(values)) if values else None


def train(args: argparse.Namespace) -> Iterator[Check]:
    for name in RUNS:
        run_dir = args.out / "runs" / name
        cmd = [sys.executable, "-m", "sparse_runner.cli", *overrides(name, run_dir)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            yield Check("train", name, "timeout", float(RUN_TIMEOUT_S), " s")
            continue
        metrics = run_dir / "metrics.jsonl"
        ips = images_per_second(metrics) if metrics.exists() else None
        if r.returncode != 0 or ips is None:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            yield Check("train", name, "fail", detail=f"exit {r.returncode}: {tail[0][:200]}")
            continue
        yield Check("train", name, "ok", round(ips, 1), " img/s", f"{STEPS} steps, batch {BATCH}")


def per_step_syncs(records: Iterable[tuple[str, int]], steps: int) -> list[tuple[str, int]]:
    """Source lines that synchronised at least once per step, most frequent first."""
    counts = collections.Counter(f"{Path(f).name}:{ln}" for f, ln in records)
    return [(where, n) for where, n in counts.most_common() if n >= steps]


def _audit_main(record_file: str, cli_args: list[str]) -> int:
    """Run the CLI in this process with sync debugging on; write (file, line) per sync."""
    import torch

    records: list[tuple[str, int]] = []
    show = warnings.showwarning

    def capture(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            records.append((filename, lineno))
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = capture
    warnings.simplefilter("always")
    cuda = torch.cuda.is_available()  # without a GPU: the plumbing runs, nothing is recorded
    if cuda:
        torch.cuda.set_sync_debug_mode("warn")
    sys.argv = ["sparse-run", *cli_args]
    from ..cli import main

    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
        Path(record_file).write_text(json.dumps(records))
    return code


def sync(args: argparse.Namespace) -> Iterator[Check]:
    for name in ("rigl_masked", "srigl_condensed"):
        run_dir = args.out / "sync_runs" / name
        record = args.out / f"sync_{name}.json"
        steps = 30
        cmd = [sys.executable, "-m", "sparse_runner.bench._gpu_train", str(record),
               *overrides(name, run_dir, steps=steps, batch=128, log_every=10)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=AUDIT_TIMEOUT_S,
                               env={**os.environ, "PYTHONWARNINGS": "always"})
        except subprocess.TimeoutExpired:
            yield Check("sync", name, "timeout", float(AUDIT_TIMEOUT_S), " s")
            continue
        if r.returncode != 0 or not record.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            yield Check("sync", name, "fail", detail=f"exit {r.returncode}: {tail[0][:200]}")
            continue
        records = [tuple(x) for x in json.loads(record.read_text())]
        bad = per_step_syncs(records, steps)
        top = ", ".join(f"{w} x{n}" for w, n in collections.Counter(
            f"{Path(f).name}:{ln}" for f, ln in records).most_common(4))
        yield Check("sync", f"{name} syncs per step", "fail" if bad else "ok",
                    round(len(records) / steps, 2), "", (f"per-step: {bad[:3]}" if bad
                                                         else f"top: {top or 'none'}"))


if __name__ == "__main__":
    sys.exit(_audit_main(sys.argv[1], sys.argv[2:]))
