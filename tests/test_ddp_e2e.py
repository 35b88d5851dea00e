"""Data-parallel runs end to end: torchrun, 2 CPU ranks, gloo, tiny models on digits.

Each launch starts 3 processes, so the cases share launches: one sweep runs four dynamic
methods, another pruning at init (SNIP) beside the bad inputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dist_helpers import TINY_DDP, torchrun

pytestmark = pytest.mark.slow
METHODS = ("rigl", "set", "srigl", "granet")
# erk: srigl's constant fan-in needs >= 1 weight per neuron in the 8-wide test ResNet at s=0.9
COMMON = ("s=0.9", "distribution=erk", "++method.delta_t=10", "trainer.epochs=2", *TINY_DDP)
RIGL = ("method=rigl", *COMMON)
SCRIPT = str(Path(__file__).with_name("ddp_signal_main.py"))


def _check_masks_agree(run: Path, method: str, steps: int, global_batch: int) -> list[dict]:
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["method"] == method
    d = summary["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo" and d["global_batch"] == global_batch
    assert len(d["mask_hashes"]) == 2 and d["mask_hashes"][0] == d["mask_hashes"][1] != ""
    updates = [e for e in _events(run) if e["event"] == "mask_update"]
    for e in updates:
        assert len(e["mask_hashes"]) == 2 and len(set(e["mask_hashes"])) == 1
    # FLOPs count the samples of both ranks: 3 x forward x steps x global batch at least
    assert summary["metrics"]["steps"] == steps
    assert summary["flops"]["train_total"] >= 3 * summary["flops"]["sparse_fwd"] * steps * global_batch
    return updates


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def methods_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "methods"
    proc = torchrun("-m", "sparse_runner", "-m", f"method={','.join(METHODS)}", *COMMON,
                    f"out_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("job,method", list(enumerate(METHODS)))
def test_every_rank_holds_the_same_masks_at_every_update(methods_sweep, job, method):
    # 1437 digits / global batch 64 -> 22 steps per epoch; masks change every 10 steps
    updates = _check_masks_agree(methods_sweep / str(job), method, 44, 64)
    assert len(updates) >= 2


def test_one_set_of_outputs(methods_sweep):
    run = methods_sweep / "0"
    names = sorted(p.name for p in run.iterdir() if not p.name.startswith(".sparse-run"))
    assert names == [".hydra", "checkpoints", "metrics.jsonl", "summary.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert len(ck["rng_ranks"]) == 2  # each rank's RNG state travels in the one checkpoint
    tests = [e for e in _events(run) if e["event"] == "test"]
    assert [e["step"] for e in tests] == [22, 44]  # each event once, not once per rank


def test_a_signal_on_one_rank_stops_all_and_the_resumed_run_equals_the_uninterrupted(
        methods_sweep, tmp_path):
    run = tmp_path / "resumed"
    env = {"SIGNAL": "SIGTERM", "SIGNAL_RANK": "1", "SIGNAL_STEP": "15"}
    os.environ.update(env)
    try:
        first = torchrun(SCRIPT, *RIGL, f"out_dir={run}")
    finally:
        for k in env:
            os.environ.pop(k)
    assert first.returncode != 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "interrupted" in summary["error"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 15
    second = torchrun("-m", "sparse_runner", *RIGL, f"out_dir={run}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout
    ours = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    theirs = torch.load(methods_sweep / "0" / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "masks"):
        assert ours[key].keys() == theirs[key].keys()
        for name in ours[key]:
            assert torch.equal(ours[key][name], theirs[key][name]), (key, name)
    acc = [e["acc1"] for e in _events(run) if e["event"] == "test"]
    assert acc == [e["acc1"] for e in _events(methods_sweep / "0") if e["event"] == "test"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="nccl works with GPUs")
def test_pruning_at_init_on_two_ranks_and_bad_inputs_in_one_line(tmp_path):
    """Jobs: (nccl, *) -> no GPUs; (gloo, 1 test sample) -> more ranks than data; (gloo, 256)
    -> SNIP trains with the masks rank 0 scored."""
    proc = torchrun("-m", "sparse_runner", "-m", "distributed.backend=nccl,gloo",
                    "dataset.num_test_samples=1,256", "dataset=synthetic", "dataset.shape=[3,8,8]",
                    "method=snip", "s=0.9", "trainer.epochs=1", *TINY_DDP, f"out_dir={tmp_path}")
    assert proc.returncode != 0  # torchrun exits 1 when a rank exits 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sparse-run: error:")]
    assert len([line for line in lines if "distributed.backend=nccl needs CUDA GPUs" in line]) == 2
    # any rank may report it first (torchrun then stops the other): "error:" or "error (rank r):"
    assert any(line.startswith("sparse-run: error") and "2 processes but the test set has only 1 "
               "samples" in line for line in proc.stderr.splitlines())
    assert "sparse_runner/" not in proc.stderr  # no traceback through our code
    _check_masks_agree(tmp_path / "3", "snip", 1024 // 64, 64)
