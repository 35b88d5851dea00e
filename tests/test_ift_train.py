"""Every Sparse-IFT member trains end to end on digits with static and dynamic (RigL) sparsity."""
from __future__ import annotations

import math

import pytest
import torch

from ift_helpers import one_thread  # noqa: F401 (fixture)
from sparse_runner.methods import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")

MEMBERS = ("wide", "parallel", "factorized", "doped")
FAST = ("trainer.batch_size=256",)  # 5 optimizer steps: one tiny epoch of 1437 digits
DST = ("method.delta_t=2",)         # RigL updates the masks within those steps


@pytest.mark.parametrize("method", ["static", "rigl"])
@pytest.mark.parametrize("ift", MEMBERS)
def test_member_trains(tiny, tmp_path, ift, method):
    if method not in METHODS:
        pytest.skip(f"method={method} is not registered")
    extra = DST if method == "rigl" else ()
    summary = tiny(f"ift={ift}", f"method={method}", "s=0.75", *FAST, *extra, name="run")
    assert summary["status"] == "completed"
    assert math.isfinite(summary["metrics"]["train_loss"])
    fl = summary["flops"]
    # Iso-FLOP within one nonzero of the costliest layer (2 FLOPs x 8 x 8 positions on digits).
    assert abs(fl["sparse_fwd"] - fl["dense_baseline_fwd"]) <= 2 * 8 * 8
    assert fl["train_total"] >= 3 * fl["sparse_fwd"] * summary["metrics"]["steps"] * 256
    masks = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["masks"]
    sparse = {r["name"] for r in summary["sparsity"]["layers"] if not r["dense"]}
    assert set(masks) == sparse and "conv1.weight" not in masks and "fc.weight" not in masks
    if ift == "doped":  # the low-rank factors are dense by construction: never masked
        assert not any(n.endswith((".u.weight", ".v.weight")) for n in masks)
        assert any(n.endswith(".sparse.weight") for n in masks)
