"""An interrupted RigL / SRigL run, resumed on the CPU, ends bit-identical to an uninterrupted one.

The cut falls inside a dense-gradient accumulation window (grad_accumulation_n=2), so the
checkpoint must carry the pending accumulator, and after several mask updates, so masks, ITOP
state and (SRigL) ablation must survive too.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import run_tiny
from sparse_runner.train import Interrupted

# 12 steps of 64 small images; T_end = 9: updates after steps 2, 4, 6, 8, each preceded by one
# accumulation step, so a cut after step 5 leaves half a dense gradient pending.
BASE = ("s=0.8", "method.delta_t=2", "method.grad_accumulation_n=2", "seed=1", "dataset=synthetic",
        "dataset.shape=[1,8,8]", "dataset.num_samples=768", "dataset.num_test_samples=128")


def _strip(path):
    return [{k: v for k, v in json.loads(line).items() if k not in ("wall_time", "img_per_s")}
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["rigl", "srigl"])
def test_resume_is_bit_identical(tmp_path, method):
    args = (f"method={method}", *BASE)
    full = run_tiny(tmp_path, *args, name="full")
    with pytest.raises(Interrupted):
        run_tiny(tmp_path, *args, "trainer.stop_after_steps=5", name="cut")
    cut = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert cut["step"] == 5 and "dense_grad" in cut["method"]
    resumed = run_tiny(tmp_path, *args, "resume=auto", name="cut")

    assert resumed["metrics"] == full["metrics"]
    assert resumed["flops"] == full["flops"] and resumed["sparsity"] == full["sparsity"]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model", "masks"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert all(v.dtype == torch.bool for v in b["masks"].values())
    assert all(torch.equal(a["method"]["ever"][k], b["method"]["ever"][k]) for k in a["masks"])
    events = _strip(tmp_path / "full" / "metrics.jsonl")
    assert sum(e["event"] == "mask_update" for e in events) == 4
    assert _strip(tmp_path / "cut" / "metrics.jsonl") == events
