"""The method zoo end to end on digits: exact summary sparsity, training FLOPs with each
method's overhead, bit-identical resume for the stateful methods, Iso-FLOP with an IFT."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import run_tiny

from sparse_runner.train import Interrupted

FAST = {  # keep the runs short: one epoch is 22 optimizer steps
    "snip": ("method=snip", "s=0.9"),
    "grasp": ("method=grasp", "s=0.9", "method.samples_per_class=4"),
    "force": ("method=force", "s=0.9", "method.num_steps=5"),
    "iter_snip": ("method=force", "s=0.9", "method.num_steps=5", "method.variant=iter_snip"),
    "granet": ("method=granet", "s=0.9", "method.delta_t=5"),
    "nm": ("method=nm", "s=0.5"),
    "l0": ("method=l0", "s=0.9"),
}


def sparse_stats(summary: dict) -> tuple[int, int]:
    rows = [r for r in summary["sparsity"]["layers"] if not r["dense"]]
    total = sum(torch.Size(r["shape"]).numel() for r in rows)
    return total, sum(r["nnz"] for r in rows)


@pytest.mark.parametrize("key", list(FAST))
def test_trains_on_digits_with_exact_sparsity(tmp_path, key):
    summary = run_tiny(tmp_path, *FAST[key])
    assert summary["status"] == "completed"
    s = summary["sparsity"]["target"]
    total, nnz = sparse_stats(summary)
    assert nnz == total - int(s * total)                      # exact global count
    assert summary["sparsity"]["sparse_layers"] == pytest.approx(s, abs=1e-4)
    assert summary["metrics"]["test_acc1"] > 0
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    for name, mask in ck["masks"].items():                     # hard, binary, weights zero outside
        assert mask.dtype == torch.bool
        assert not ck["model"][name][~mask].any()


def test_pruning_at_init_charges_its_scoring_passes(tmp_path):
    snip = run_tiny(tmp_path, "method=snip", "s=0.9", "method.num_batches=2", name="snip")
    static = run_tiny(tmp_path, "method=static", "s=0.9", name="static")
    fl, steps = snip["flops"], snip["metrics"]["steps"]
    training = 3 * fl["sparse_fwd"] * steps * 64
    scoring = 3 * fl["model_dense_fwd"] * 2 * 64                 # fwd + bwd on two dense batches
    assert fl["train_total"] == pytest.approx(training + scoring, rel=1e-9)
    st = static["flops"]
    assert st["train_total"] == pytest.approx(3 * st["sparse_fwd"] * steps * 64)


def test_straight_through_charges_the_dense_weight_gradient(tmp_path):
    nm = run_tiny(tmp_path, "method=nm", "s=0.5", name="nm")
    fl, steps = nm["flops"], nm["metrics"]["steps"]
    per_sample = 3 * fl["sparse_fwd"] + (fl["model_dense_fwd"] - fl["sparse_fwd"])
    assert fl["train_total"] == pytest.approx(per_sample * steps * 64, rel=1e-9)


@pytest.mark.parametrize("key", ["granet", "nm", "l0"])
def test_resume_is_bit_identical(tmp_path, key):
    base = (*FAST[key], "trainer.epochs=2", "seed=1")
    full = run_tiny(tmp_path, *base, name="full")
    with pytest.raises(Interrupted):
        run_tiny(tmp_path, *base, "trainer.stop_after_steps=27", name="cut")
    resumed = run_tiny(tmp_path, *base, "resume=auto", name="cut")
    assert resumed["metrics"] == full["metrics"]
    assert resumed["flops"]["train_total"] == full["flops"]["train_total"]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    def lines(run: str) -> list[dict]:
        text = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("wall_time", "img_per_s")}
                for line in text]

    assert lines("cut") == lines("full")


@pytest.mark.parametrize("key", ["snip", "granet", "l0"])
def test_isoflop_search_matches_the_dense_baseline(tmp_path, key):
    summary = run_tiny(tmp_path, *FAST[key], "s=0.5", "ift=wide", "run.dry_run=true")
    assert summary["status"] == "dry_run"
    assert summary["isoflop"]["rel_error"] < 1e-4
    assert summary["sparsity"]["effective"] > 0.5      # wider model: sparser to stay Iso-FLOP


@pytest.mark.parametrize("ift,key", [("parallel", "granet"), ("factorized", "force"),
                                     ("doped", "l0"), ("wide", "grasp")])
def test_composes_with_the_ifts(tmp_path, ift, key):
    summary = run_tiny(tmp_path, *FAST[key], "s=0.5", f"ift={ift}")
    assert summary["status"] == "completed" and summary["isoflop"]["rel_error"] < 1e-4
    total, nnz = sparse_stats(summary)
    assert nnz == total - int(summary["sparsity"]["effective"] * total)


def test_nm_keeps_its_quantised_sparsity_under_an_ift(tmp_path):
    summary = run_tiny(tmp_path, "method=nm", "s=0.5", "ift=wide", "run.dry_run=true")
    assert "isoflop" not in summary and summary["sparsity"]["effective"] == 0.5
    assert summary["sparsity"]["sparse_layers"] == pytest.approx(0.5, abs=1e-3)
