"""scripts/gpu_check.sh and its Python half, on a machine without a GPU: the one-line exit,
the stage plumbing (with a fake nvidia-smi), records, results.json, and the pure helpers."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparse_runner.bench import _gpu_checks, _gpu_sconv, _gpu_timing, _gpu_train
from sparse_runner.bench._gpu_stage import Check, merge, record, run_stage, table
from sparse_runner.bench.gpu_check import main

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _script(tmp_path: Path, path: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "PATH": path, "PYTHON": sys.executable},
                          timeout=300)


def test_script_without_a_gpu_exits_at_once_with_one_line(tmp_path):
    assert SCRIPT.stat().st_mode & stat.S_IXUSR, "scripts/gpu_check.sh must be executable"
    r = _script(tmp_path, "/usr/bin:/bin")   # "at once": before any stage (nothing written)
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no NVIDIA GPU" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_script_stages_record_failures_and_write_results(tmp_path):
    """A fake nvidia-smi gets past the first check; every stage then finds no CUDA in torch,
    is recorded as failed, and the table and results.json still come out (exit 1)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    (fake / "nvidia-smi").chmod(0o755)
    r = _script(tmp_path, f"{fake}:/usr/bin:/bin")
    assert r.returncode == 1, r.stdout + r.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"date", "device", "environment", "counts", "stages"} <= set(results)
    for stage in ("env", "build", "correct", "kernels", "sconv", "swrn", "train", "sync"):
        assert results["stages"][stage][-1]["status"] == "fail", stage
        assert f"[{stage}] stage: fail 3" in r.stdout
    assert results["stages"]["sanitizer_memcheck"][0]["status"] == "skip"
    assert results["stages"]["ddp"][0]["status"] == "skip"   # one (fake) GPU: no torchrun
    assert "totals: fail 8" in r.stdout


def test_stage_without_cuda_says_so_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["env", "--out", str(tmp_path)]) == 3
    assert "no CUDA device" in capsys.readouterr().err


def test_run_stage_prints_lines_and_turns_a_crash_into_a_failed_row(tmp_path, capsys):
    def checks():
        yield Check("demo", "first", "ok", 1.5, " ms", "fine")
        raise RuntimeError("boom")

    assert run_stage("demo", checks(), tmp_path) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["[demo] first: ok 1.5 ms (fine)", "[demo] stage: fail (RuntimeError: boom)"]
    rows = json.loads((tmp_path / "stage_demo.json").read_text())["checks"]
    assert [r["status"] for r in rows] == ["ok", "fail"]
    with pytest.raises(ValueError, match="status"):
        Check("demo", "x", "great")


def test_merge_and_table(tmp_path):
    run_stage("env", iter([Check("env", "device", "info", "H200"),
                           Check("env", "torch", "info", "2.11")]), tmp_path)
    run_stage("kernels", iter([Check("kernels", "ours fwd", "info", 0.25, " ms", "0.3x")]),
              tmp_path)
    record("train", "timeout", "100", "killed", tmp_path)
    results = merge(tmp_path, ("env", "kernels", "train", "sync"))
    assert results["device"] == "H200" and results["environment"]["torch"] == "2.11"
    assert results["stages"]["sync"][0]["status"] == "skip"
    assert results["counts"]["timeout"] == 1 and results["counts"]["info"] == 3
    rows = list(table(results))
    assert len(rows) == 1 + 5 + 1 and "ours fwd" in rows[3] and rows[-1].startswith("totals")
    assert main(["table", "--out", str(tmp_path)]) == 1  # a timeout fails the run
    assert json.loads((tmp_path / "results.json").read_text())["device"] == "H200"


def test_timing_helpers():
    l2 = 50 * 2**20
    assert _gpu_timing.rotations(85 * 2**20, l2) == 3  # 2 x L2 plus one
    assert _gpu_timing.rotations(1024, l2) == 64 and _gpu_timing.rotations(0, l2) == 1
    assert _gpu_timing.median_ms([3.0, 1.0, 2.0]) == 2.0
    assert _gpu_timing.ratio(0.5, 2.0) == 0.25
    with pytest.raises(ValueError):
        _gpu_timing.median_ms([])


def test_compare_bound_accepts_rounding_and_rejects_errors():
    want = torch.randn(50, 40, dtype=torch.float64)
    assert _gpu_checks.compare(want.to(torch.bfloat16), want, torch.bfloat16, 10)[0]
    assert _gpu_checks.compare(want.float(), want, torch.float32, 10)[0]
    bad = want.float().clone()
    bad[3, 4] += 1e-2
    assert not _gpu_checks.compare(bad, want, torch.float32, 10)[0]
    assert not _gpu_checks.compare(want[:, :3].float(), want, torch.float32, 10)[0]


def test_sync_records_and_metrics_parsing(tmp_path):
    records = [("/a/train.py", 205)] * 30 + [("/a/loggers.py", 9)] * 3
    assert _gpu_train.per_step_syncs(records, steps=30) == [("train.py:205", 30)]
    metrics = tmp_path / "metrics.jsonl"
    lines = [{"split": "train", "img_per_s": v} for v in (10.0, 300.0, 310.0, 290.0)]
    metrics.write_text("\n".join(json.dumps(x) for x in lines + [{"split": "test"}]) + "\n")
    assert _gpu_train.images_per_second(metrics) == 300.0


@pytest.mark.slow
def test_train_stage_arguments_make_a_valid_run(tmp_path):
    """The condensed SRigL run of the train stage, on the CPU with a narrow model."""
    args = _gpu_train.overrides("srigl_condensed", tmp_path / "run", steps=2, batch=8,
                                log_every=1, device="cpu")
    r = subprocess.run([sys.executable, "-m", "sparse_runner.cli", *args, "model.base_width=16"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _gpu_train.images_per_second(tmp_path / "run" / "metrics.jsonl") > 0


def test_correctness_stage_code_on_the_cpu_kernels():
    """The GPU stage's checks, pointed at the CPU: every row passes (the code paths run)."""
    rows = [*_gpu_checks.kernel_checks((17, 30, 70, 9), "bf16", device="cpu"),
            *_gpu_checks.kernel_checks((0, 20, 7, 3), "fp64", device="cpu"),
            _gpu_checks.layer_check(device="cpu")]
    assert len(rows) == 7 and all(r.status == "ok" for r in rows), [r.line() for r in rows]


def test_timed_calls_compute_what_they_name():
    sets = _gpu_timing.make_sets(5, 0.9, torch.float32, layer=(40, 24), device="cpu",
                                 l2_bytes=1 << 16)
    assert len(sets) >= 2
    x, g, w, m, v, i, t = sets[0]
    out = {name: fn(*sets[0]) for name, fn in _gpu_timing.cases(n_in=40).items()}
    torch.testing.assert_close(out["ours fwd"], out["dense fwd"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["masked fwd"], out["dense fwd"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["ours bwd_in"], out["dense bwd_in"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["ours bwd_w"], out["dense bwd_w"].gather(1, i.long()),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_sync_audit_wrapper_runs_the_cli_in_process(tmp_path):
    """The audit's wrapper (sync debug mode is a GPU feature: here it records nothing)."""
    args = _gpu_train.overrides("rigl_masked", tmp_path / "run", steps=3, batch=8, log_every=1,
                                device="cpu")
    rec = tmp_path / "records.json"
    r = subprocess.run([sys.executable, "-m", "sparse_runner.bench._gpu_train", str(rec), *args,
                        "model.base_width=8"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(rec.read_text()) == [] and (tmp_path / "run" / "summary.json").exists()


def test_sconv_stage_code_on_the_cpu_kernels():
    """The sconv stage's checks and timed calls, pointed at the CPU operators."""
    rows = [*_gpu_sconv.op_checks(_gpu_sconv.SMALL[3], "bf16", device="cpu"),
            *_gpu_sconv.op_checks(_gpu_sconv.SMALL[-1], "fp64", device="cpu")]
    assert len(rows) == 6 and all(r.status == "ok" for r in rows), [r.line() for r in rows]
    case = (3, 6, 10, 9, 9, (3, 3), (2, 2), (1, 1))
    sets = _gpu_sconv.make_sets(case, torch.float32, 0.3, device="cpu", l2_bytes=1 << 16)
    assert len(sets) >= 2
    x, g, w, m, v, i = sets[0]
    out = {name: fn(*sets[0]) for name, fn in _gpu_sconv.calls(case).items()}
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # noqa: E731
    for name in ("fwd", "dx"):
        close(out[f"ours {name}"], out[f"dense {name}"])
    close(out["masked fwd"], out["dense fwd"])
    close(out["ours dW"], out["dense dW"].flatten(1).gather(1, i.clamp(min=0).long()) * (i >= 0))
    assert len(_gpu_sconv.WIDE) == 10
