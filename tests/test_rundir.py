"""Run-directory ownership: one process per directory, finished runs never modified."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, run_tiny
from sparse_runner.utils.errors import UserError
from sparse_runner.outputs.runlock import DirectoryBusy, RunLock


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and mtime (the lock file excepted)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".sparse-run.lock"}


HOLD = ("import sys, time; from sparse_runner.outputs.runlock import RunLock; "
        "l = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")


def test_a_busy_directory_is_refused_naming_the_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryBusy, match=f"in use by another sparse-run \\(PID {holder.pid}\\)"):
            run_tiny(tmp_path)
        assert not (tmp_path / "run" / "summary.json").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path / "run"):   # the kernel released the killed holder's lock
        with RunLock(tmp_path / "run"):   # re-entrant within one process
            pass


def test_two_identical_runs_started_together_do_not_share_a_directory(tmp_path):
    args = ("model.base_width=8", "trainer.epochs=2", "trainer.progress=false", "run.device=cpu",
            f"out_dir={tmp_path / 'run'}")
    procs = [subprocess.Popen([sys.executable, "-m", "sparse_runner.cli", *args], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # either the second was refused while the first trained, or it started after the first
    # finished and found the identical run completed: never two writers
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert "in use by another sparse-run (PID" in [e for c, e in results if c == 2][0]
    events = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([e for e in events if e["split"] == "test"]) == 2, "every event exactly once"


def test_a_rerun_with_other_settings_is_refused_and_touches_nothing(tmp_path):
    run_tiny(tmp_path)
    before = snapshot(tmp_path / "run")
    with pytest.raises(UserError, match=r"other settings \(trainer.epochs: 1 -> 2\)"):
        run_tiny(tmp_path, "trainer.epochs=2")
    with pytest.raises(UserError, match="resume=never would start over"):
        run_tiny(tmp_path, "resume=never")
    same = run_tiny(tmp_path, "trainer.log_every=3")     # same trajectory: nothing to do
    assert same["status"] == "completed"
    assert snapshot(tmp_path / "run") == before
    fresh = run_tiny(tmp_path, "trainer.epochs=2", "run.on_conflict=new")
    assert fresh["run_dir"] == str(tmp_path / "run-2") and fresh["status"] == "completed"
    assert snapshot(tmp_path / "run") == before


def test_a_start_that_failed_before_a_checkpoint_may_be_redone(tmp_path):
    with pytest.raises(UserError, match="outside"):
        run_tiny(tmp_path, "s=1.5", "method=static")
    assert run_tiny(tmp_path, "s=0.5", "method=static")["status"] == "completed"


def test_cli_refused_rerun_keeps_hydra_files_and_sweep_summaries(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = ("model.base_width=8", "trainer.epochs=1", "trainer.progress=false", "run.device=cpu")
    proc = cli("-m", "seed=0,1", f"out_dir={sweep}", *tiny)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (sweep / "0" / ".hydra" / "config.yaml").exists() and (sweep / "multirun.yaml").exists()
    assert not list(sweep.rglob("*.log")), "no Hydra job log files"
    before = snapshot(sweep)
    time.sleep(0.01)
    proc = cli("-m", "seed=0,1", f"out_dir={sweep}", *tiny, "trainer.epochs=2")
    assert proc.returncode == 2
    assert proc.stderr.count("other settings (trainer.epochs: 1 -> 2)") == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(sweep) == before, "completed jobs, .hydra/ and multirun.yaml untouched"
    single = cli(f"out_dir={sweep / '0'}", *tiny, "seed=0", "optimizer.lr=0.05")
    assert single.returncode == 2 and "optimizer.lr: 0.1 -> 0.05" in single.stderr
    assert snapshot(sweep) == before


def test_a_run_resumed_from_elsewhere_is_continued_with_resume_auto(tmp_path):
    from sparse_runner.train import Interrupted

    with pytest.raises(Interrupted):
        run_tiny(tmp_path, "trainer.stop_after_steps=5", name="a")
    with pytest.raises(Interrupted):
        run_tiny(tmp_path, "trainer.stop_after_steps=10", f"resume={tmp_path / 'a'}", name="b")
    with pytest.raises(UserError, match="would start over; continue it with resume=auto"):
        run_tiny(tmp_path, f"resume={tmp_path / 'a'}", name="b")
    assert run_tiny(tmp_path, name="b")["metrics"]["steps"] == 1437 // 64
