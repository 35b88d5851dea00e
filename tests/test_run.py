"""End-to-end runs in-process: output contract, checkpoints, resume, dry run, loggers."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import compose, run_tiny
from sparse_runner.utils.errors import UserError
from sparse_runner.run import run
from sparse_runner.train import Interrupted

CONTRACT = {
    "model": ["name", "ift", "params_total", "params_nonzero"],
    "sparsity": ["target", "effective", "global", "layers"],
    "flops": ["dense_baseline_fwd", "model_dense_fwd", "sparse_fwd", "train_total"],
    "metrics": ["test_acc1", "test_acc5", "best_test_acc1", "train_loss"],
    "time": ["train_s", "per_epoch_s"],
    "versions": ["torch", "python", "sparse_runner"],
}


def test_output_contract(tmp_path):
    summary = run_tiny(tmp_path, "trainer.epochs=2")
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["status"] == "completed" and "device" in summary
    for section, keys in CONTRACT.items():
        assert set(keys) <= set(summary[section]), section
    layers = summary["sparsity"]["layers"]
    assert {"name", "shape", "density", "nnz", "dense"} <= set(layers[0])
    assert layers[0]["name"] == "conv1.weight" and layers[-1]["name"] == "fc.weight"
    # FLOPs: 3x forward per training sample; digits has 1437 train samples, 22 full batches/epoch.
    steps, batch = summary["metrics"]["steps"], 64
    assert steps == 2 * (1437 // batch)
    expected = 3 * summary["flops"]["sparse_fwd"] * steps * batch
    assert summary["flops"]["train_total"] == pytest.approx(expected, rel=1e-9)

    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tests = [e for e in events if e["split"] == "test"]
    assert len(tests) == 2 and tests[-1]["acc1"] == summary["metrics"]["test_acc1"]
    for e in events:
        assert {"step", "epoch", "split", "loss", "acc1", "train_flops", "sparsity", "wall_time"} <= set(e)
    assert [e["train_flops"] for e in events] == sorted(e["train_flops"] for e in events)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_trains_on_a_cifar100_tree_in_torchvision_format(tmp_path):
    from sparse_runner.data import write_fake_cifar

    write_fake_cifar(tmp_path / "data", kind="cifar100", n_train=128, n_test=64)
    summary = run_tiny(tmp_path, "dataset=cifar100", f"dataset.root={tmp_path / 'data'}",
                       "trainer.batch_size=32")
    assert summary["status"] == "completed" and summary["dataset"] == "cifar100"
    layers = summary["sparsity"]["layers"]
    assert layers[0]["shape"] == [8, 3, 3, 3] and layers[-1]["shape"] == [100, 64]
    assert any("differ from the official" in note for note in summary.get("data_notes", []))


def test_checkpoint_loads_weights_only(tmp_path):
    run_tiny(tmp_path)
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "masks", "step", "epoch", "optimizer", "rng"} <= set(ck)
    assert ck["masks"] == {} and ck["step"] == 1437 // 64 and ck["epoch"] == 1


def test_best_checkpoint_is_last_of_its_epoch_and_survives_later_epochs(tmp_path):
    from sparse_runner.outputs.checkpoint import link_or_copy, save

    d = tmp_path / "checkpoints"
    save(d / "last.pt", {"epoch": 1})
    link_or_copy(d / "last.pt", d / "best.pt")
    save(d / "last.pt", {"epoch": 2})       # later, worse epoch: last is replaced, best is not
    assert torch.load(d / "best.pt", weights_only=True) == {"epoch": 1}
    assert torch.load(d / "last.pt", weights_only=True) == {"epoch": 2}
    assert sorted(p.name for p in d.iterdir()) == ["best.pt", "last.pt"]   # no temp files left


def test_resume_is_bit_identical(tmp_path):
    base = ("trainer.epochs=2", "seed=3")
    full = run_tiny(tmp_path, *base, name="full")
    with pytest.raises(Interrupted):
        run_tiny(tmp_path, *base, "trainer.stop_after_steps=31", name="cut")
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut["status"] == "failed" and "resume" in cut["error"]
    resumed = run_tiny(tmp_path, *base, "resume=auto", name="cut")
    assert resumed["metrics"] == full["metrics"]
    assert resumed["flops"]["train_total"] == full["flops"]["train_total"]
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k not in ("wall_time", "img_per_s")}
                       for l in p.read_text().splitlines()]
    assert strip(tmp_path / "cut" / "metrics.jsonl") == strip(tmp_path / "full" / "metrics.jsonl")


def test_resume_refuses_a_different_run(tmp_path):
    run_tiny(tmp_path, name="a")
    with pytest.raises(UserError, match="different run"):
        run_tiny(tmp_path, "seed=5", f"resume={tmp_path / 'a'}", name="b")
    with pytest.raises(UserError, match="no checkpoint"):
        run_tiny(tmp_path, f"resume={tmp_path / 'nothing'}", name="c")


def test_dry_run_writes_summary_without_training(tmp_path):
    summary = run_tiny(tmp_path, "run.dry_run=true", "method=static", "s=0.5")
    assert summary["status"] == "dry_run" and "metrics" not in summary
    assert not (tmp_path / "run" / "checkpoints").exists()
    sparse = [l for l in summary["sparsity"]["layers"] if not l["dense"]]
    assert sparse and all(abs(l["density"] - 0.5) < 1e-3 for l in sparse)
    assert (tmp_path / "run" / "layers.csv").read_text().startswith("name,shape,density")


@pytest.mark.parametrize("overrides,message", [
    (("s=-0.1", "method=static"), "outside"),
    (("s=0.5", "method=dense"), "method=dense"),
    (("method=static",), "needs a sparsity"),
    (("trainer.batch_size=4096",), "smaller than one step"),
    (("trainer.precision=fp8",), "precision"),
])
def test_bad_input_is_one_line(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as info:
        run_tiny(tmp_path, *overrides)
    assert "\n" not in str(info.value)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_method_auto_picks_dense_or_rigl(tmp_path):
    assert run_tiny(tmp_path, "run.dry_run=true", name="a")["method"] == "dense"
    sparse = run_tiny(tmp_path, "run.dry_run=true", "s=0.8", name="b")
    assert sparse["method"] == "rigl" and sparse["sparsity"]["sparse_layers"] == pytest.approx(0.8, abs=1e-4)


def test_wandb_offline_mirror(tmp_path):
    pytest.importorskip("wandb")
    summary = run_tiny(tmp_path, "logger=wandb", "logger.mode=offline")
    assert summary["status"] == "completed"
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(ck["wandb_id"], str)


def test_default_config_is_the_documented_one():
    cfg = compose([])
    assert (cfg.model.name, cfg.dataset.name, cfg.method.name, cfg.ift.name) == \
        ("resnet18", "digits", "auto", "none")
    assert cfg.s == 0.0 and cfg.seed == 0 and cfg.sparse.dense == ["stem", "head"]
    paper = compose(["experiment=cifar100_resnet18"])
    assert (paper.trainer.epochs, paper.trainer.batch_size, paper.optimizer.lr) == (200, 128, 0.1)
    assert list(paper.schedule.milestones) == [60, 120, 160] and paper.schedule.gamma == 0.2
    assert paper.dataset.name == "cifar100" and paper.optimizer.nesterov


def test_trainer_compile_runs(tmp_path):
    """trainer.compile=true: the compiled forward trains (Inductor on CPU; ~30 s)."""
    summary = run_tiny(tmp_path, "trainer.compile=true", "trainer.stop_after_steps=null")
    assert summary["status"] == "completed" and summary["metrics"]["steps"] == 1437 // 64
