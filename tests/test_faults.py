"""Fault injection: SIGKILL a run at 10 random points, resume, compare with an unbroken run.

The run is forked from the test process (no interpreter start per attempt). Points are drawn
with a fixed seed from what the reference run does: a write of a checkpoint (the process dies
with half the chunk written), a metrics.jsonl append (torn line), before and after a rename
into place, and a kill from outside at a random moment. Each resumed run must end with the
same checkpoint tensors, metrics.jsonl events and summary metrics, and no temporary files.
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import TINY, compose
from sparse_runner.outputs import fsio

RUN = ("dataset=synthetic", "dataset.shape=[1,8,8]", "dataset.num_samples=128",
       "dataset.num_test_samples=32", "trainer.batch_size=32", "trainer.epochs=2",
       "trainer.log_every=2", "method=rigl", "s=0.8", "method.delta_t=2", "seed=2",
       "model.base_width=4")
CFG = []  # the composed config, once (composing costs more than the run's training)


def run_once(root: Path, name: str = "run") -> None:
    from sparse_runner.run import run

    run(CFG[0], root / name)
VOLATILE = ("wall_time", "img_per_s")


def _fresh_locks() -> None:
    """A forked child inherits locks other threads of the test process may hold (tqdm's
    multiprocessing write lock is one: a child blocked on it forever); give it its own."""
    from tqdm import tqdm
    from tqdm.std import TqdmDefaultWriteLock

    tqdm.set_lock(TqdmDefaultWriteLock())


HUNG = 240.0  # seconds: a child still running by then is stuck, not slow (runs take ~2 s)


def in_child(fn: Callable[[], None], kill_after: float | None = None) -> int:
    """Run ``fn`` in a forked child; returns its wait status (SIGKILL from outside optional).
    A child that hangs (a lock inherited held through fork) is killed and run once more."""
    for _ in range(2):
        hung = threading.Event()
        status = _fork_and_wait(fn, kill_after, hung)
        if not hung.is_set():
            return status
    raise AssertionError(f"the forked run hung twice (> {HUNG:.0f} s)")


def _fork_and_wait(fn: Callable[[], None], kill_after: float | None, hung: threading.Event) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            _fresh_locks()
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    timer = threading.Timer(kill_after, os.kill, (pid, signal.SIGKILL)) if kill_after else None
    if timer:
        timer.start()

    def stuck() -> None:
        hung.set()
        os.kill(pid, signal.SIGKILL)

    watchdog = threading.Timer(HUNG, stuck)
    watchdog.start()
    _, status = os.waitpid(pid, 0)
    watchdog.cancel()
    if timer:
        timer.cancel()
    return status


def trace_io(record: Path) -> Callable[[], None]:
    """The reference run, recording every os.write (size, file) and os.replace (target)."""
    def go() -> None:
        events: list[list] = []
        real_write, real_replace = os.write, os.replace

        def write(fd, data):
            try:
                name = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                name = "?"
            events.append(["write", len(data), Path(name).name])
            return real_write(fd, data)

        def replace(src, dst):
            events.append(["replace", 0, Path(dst).name])
            return real_replace(src, dst)

        os.write, os.replace = write, replace
        t0 = time.perf_counter()
        run_once(record.parent, "reference")
        os.write, os.replace = real_write, real_replace
        record.write_text(json.dumps({"events": events, "seconds": time.perf_counter() - t0}))
    return go


def killed_at(run_root: Path, kind: str, index: int) -> Callable[[], None]:
    """A run that SIGKILLs itself at the ``index``-th event of ``kind``."""
    def go() -> None:
        seen = {"write": 0, "replace": 0}
        real_write, real_replace = os.write, os.replace

        def write(fd, data):
            seen["write"] += 1
            if kind == "write" and seen["write"] == index:
                real_write(fd, bytes(memoryview(data).cast("B")[: max(1, len(data) // 2)]))
                os.kill(os.getpid(), signal.SIGKILL)
            return real_write(fd, data)

        def replace(src, dst):
            seen["replace"] += 1
            hit = seen["replace"] == index
            if hit and kind == "replace_before":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
            if hit and kind == "replace_after":
                os.kill(os.getpid(), signal.SIGKILL)

        os.write, os.replace = write, replace
        run_once(run_root)
    return go


def draw_faults(events: list[list], seconds: float, rng: random.Random) -> list[tuple]:
    writes = [i + 1 for i, e in enumerate(e for e in events if e[0] == "write")]
    kinds = [e[2] for e in events if e[0] == "write"]
    ckpt_writes = [n for n, k in zip(writes, kinds) if k.startswith(".last.pt.")]
    log_writes = [n for n, k in zip(writes, kinds) if k == "metrics.jsonl"]
    n_replace = sum(e[0] == "replace" for e in events)
    faults = [("write", rng.choice(ckpt_writes)), ("write", rng.choice(ckpt_writes)),
              ("write", rng.choice(log_writes)), ("write", rng.choice(log_writes)),
              ("write", rng.choice(writes)),
              ("replace_before", rng.randint(1, n_replace)),
              ("replace_after", rng.randint(1, n_replace))]
    faults += [("timer", rng.uniform(0.1, seconds)) for _ in range(3)]
    return faults


def tensors_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k])
                                                                    for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def outcome(run_dir: Path) -> dict:
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    events = [{k: v for k, v in e.items() if k not in VOLATILE}
              for e in fsio.read_jsonl(run_dir / "metrics.jsonl")]
    summary = json.loads((run_dir / "summary.json").read_text())
    strip = lambda c: {k: v for k, v in c.items() if k != "state"}  # state holds timings
    return {"last": strip(ck), "best": strip(best), "events": events,
            "metrics": summary["metrics"], "status": summary["status"]}


def event_bytes(out: dict) -> int:
    return sum(len(json.dumps(e)) + 1 for e in out["events"])


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork") or not Path("/proc/self/fd").is_dir(),
                    reason="needs fork and /proc")
def test_sigkill_at_ten_random_points_resumes_bit_identical(tmp_path):
    CFG[:] = [compose([*TINY, *RUN])]
    record = tmp_path / "trace.json"
    assert in_child(trace_io(record)) == 0
    trace = json.loads(record.read_text())
    ref = outcome(tmp_path / "reference")
    faults = draw_faults(trace["events"], trace["seconds"], random.Random(12))
    report = []
    for i, (kind, where) in enumerate(faults):
        root = tmp_path / f"fault{i}"
        if kind == "timer":
            status = in_child(lambda: run_once(root), kill_after=where)
        else:
            status = in_child(killed_at(root, kind, int(where)))
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        run_dir = root / "run"
        orphans = sum(p.stat().st_size for p in fsio.temp_files([run_dir, run_dir / "checkpoints"]))
        assert in_child(lambda: run_once(root)) == 0, (kind, where)
        got = outcome(run_dir)
        same = tensors_equal(got, ref)
        report.append({"fault": kind, "at": where, "killed": killed, "orphan_tmp_bytes": orphans,
                       "identical": same, "bytes_lost": event_bytes(ref) - event_bytes(got)})
        assert same, (kind, where)
        assert not fsio.temp_files([run_dir, run_dir / "checkpoints"]), "temp files cleaned"
    (tmp_path / "faults.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    assert sum(r["killed"] for r in report) >= 8, report
