"""Cluster launchers through Hydra plugins: submitit's local executor (the SLURM code path) with
preemption -> checkpoint -> requeue -> resume, and the Optuna example with a tiny budget."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import TINY, cli

pytestmark = pytest.mark.slow


def _tasks(sweep: Path) -> list[int]:
    """PIDs of the running submitit tasks (children of each job's local controller)."""
    pids = []
    for folder in (sweep / ".submitit").glob("[0-9]*"):
        children = Path(f"/proc/{folder.name}/task/{folder.name}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
    return pids


def _wait_for_training(run: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and '"event": "train"' in metrics.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"no training event in {metrics}")


def test_submitit_jobs_complete_and_a_preempted_job_requeues_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "sparse_runner", "-m", "hydra/launcher=local", "seed=0,1",
           *TINY, "trainer.epochs=2", "trainer.log_every=1", f"out_dir={sweep}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_training(sweep / "0")
        tasks = _tasks(sweep)
        assert tasks, "no submitit task found"
        for pid in tasks:  # as SLURM does before the time limit
            try:
                os.kill(pid, signal.SIGUSR2)
            except ProcessLookupError:
                pass
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == int(job)
        assert summary["metrics"]["steps"] == 2 * (1437 // 64)
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert "resuming from" in logs  # the requeued job continued from its checkpoint
    events = [json.loads(line) for line in (sweep / "0" / "metrics.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no step logged twice


def test_optuna_example_tunes_delta_t_and_alpha(tmp_path):
    proc = cli("experiment=optuna_rigl", "hydra.sweeper.n_trials=2", *TINY,
               f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"method.delta_t", "method.alpha"}
    accs = [json.loads((tmp_path / j / "summary.json").read_text())["metrics"]["test_acc1"]
            for j in ("0", "1")]
    assert result["best_value"] == pytest.approx(max(accs))


def test_a_submitit_job_with_two_tasks_is_one_data_parallel_run(tmp_path):
    """The SLURM path of ``hydra/launcher=slurm`` (one task per GPU), on the local executor."""
    proc = cli("-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", "method=rigl",
               "s=0.9", "method.delta_t=10", *TINY, "trainer.batch_size=32", f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    d = summary["distributed"]
    assert summary["status"] == "completed" and d["world_size"] == 2 and d["global_batch"] == 64
    assert d["mask_hashes"][0] == d["mask_hashes"][1]
