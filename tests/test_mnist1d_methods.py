"""Conv1d through the sparse machinery: every method trains the 1-D CNN on MNIST-1D (masks hold
the planned count on every Conv1d), the ER/ERK distributions take 3-D weights, and the export
round-trips a Conv1d weight in both formats."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import run_tiny
from sparse_runner.outputs import checkpoint as ckpt
from sparse_runner import report
from sparse_runner.export.formats import from_condensed, from_csr
from sparse_runner.sparsity.distributions import layer_nnz

BASE = ("dataset=mnist1d", "dataset.num_samples=400", "model=cnn1d", "trainer.max_steps=4",
        "trainer.progress=false", "run.device=cpu")
METHOD_ARGS = {
    "static": [], "snip": [], "grasp": [], "force": [], "l0": [],
    "set": ["method.delta_t=2"], "rigl": ["method.delta_t=2"], "srigl": ["method.delta_t=2"],
    "granet": ["method.delta_t=2"], "nm": ["method.preset=2:4"],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHOD_ARGS))
def test_every_method_trains_the_1d_cnn(tmp_path, data_root, method):
    s = 0.5 if method == "nm" else 0.8
    summary = run_tiny(tmp_path, *BASE, f"dataset.root={data_root}", f"method={method}",
                       f"s={s}", *METHOD_ARGS[method], tiny=False)
    assert summary["status"] == "completed", summary.get("error")
    assert math.isfinite(summary["metrics"]["test_loss"])
    state = torch.load(tmp_path / "run" / "checkpoints" / ckpt.LAST, weights_only=False)
    masks = state.get("masks") or {}
    if method != "l0":   # L0's gates decide the weights; the others hold exact masks
        convs = [masks[n] for n in ("convs.1.weight", "convs.2.weight")]
        assert all(m.dim() == 3 for m in convs)   # global allocation (SNIP...): over both
        kept = sum(int(m.sum()) for m in convs) / sum(m.numel() for m in convs)
        assert kept == pytest.approx(1 - s, abs=1e-3)


@pytest.mark.parametrize("distribution", ["er", "erk"])
def test_distributions_take_conv1d_weights(distribution):
    shapes = {"convs.1.weight": (25, 25, 3), "convs.2.weight": (25, 25, 3), "fc.weight": (10, 125)}
    nnz = layer_nnz(distribution, shapes, 0.9)
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(nnz.values()) == round(0.1 * total)   # exact integer budget
    dens = {n: nnz[n] / math.prod(shapes[n]) for n in shapes}
    # ER: (O + C) / (O C); ERK: (O + C + k) / (O C k), so the kernel width counts
    score = ((10 + 125) / 1250 / ((25 + 25) / 625) if distribution == "er"
             else (10 + 125) / 1250 / ((25 + 25 + 3) / 1875))
    assert dens["fc.weight"] / dens["convs.1.weight"] == pytest.approx(score, rel=0.02)


def test_export_round_trips_conv1d_weights(tmp_path, data_root):
    summary = run_tiny(tmp_path, *BASE, f"dataset.root={data_root}", "method=srigl", "s=0.8",
                       "method.delta_t=2", tiny=False)
    assert summary["status"] == "completed"
    run_dir = tmp_path / "run"
    assert report.main(["export", str(run_dir)]) == 0
    data = torch.load(run_dir / "export" / "sparse_weights.pt", weights_only=True)
    state = torch.load(run_dir / "checkpoints" / ckpt.LAST, weights_only=False)
    for name in ("convs.1.weight", "convs.2.weight"):
        entry, weight = data["layers"][name], state["model"][name]
        assert tuple(entry["shape"]) == (25, 25, 3)
        assert torch.equal(from_csr(entry["csr"], (25, 25, 3)), weight)
        assert torch.equal(from_condensed(entry["condensed"], (25, 25, 3)), weight)
