"""Resume compares every trajectory setting and explains any checkpoint that does not fit."""
from __future__ import annotations

import pytest
import torch

from conftest import compose, run_tiny
from sparse_runner.utils.errors import UserError
from sparse_runner.outputs.runconfig import NOT_TRAJECTORY, differences, trajectory_config
from sparse_runner.train import Interrupted

CUT = ("trainer.stop_after_steps=5",)
STATIC = ("method=static", "s=0.5")


def _cut(tmp_path, *overrides, name="a"):
    with pytest.raises(Interrupted):
        run_tiny(tmp_path, *overrides, *CUT, name=name)
    return tmp_path / name


def test_trajectory_config_drops_only_the_documented_keys():
    cfg = compose(["trainer.progress=true", "out_dir=/x", "trainer.log_every=3"])
    traj = trajectory_config(cfg)
    assert "out_dir" not in traj and "logger" not in traj and "run" not in traj
    assert "progress" not in traj["trainer"] and "log_every" not in traj["trainer"]
    assert traj["trainer"]["epochs"] == 8 and traj["optimizer"]["name"] == "sgd"
    assert traj["sparse"]["dense"] == ["stem", "head"]
    other = trajectory_config(compose(["optimizer=adamw", "sparse.dense=[stem]"]))
    diff = differences(traj, other)
    assert "optimizer.name: \"sgd\" -> \"adamw\"" in diff
    assert 'sparse.dense: ["stem", "head"] -> ["stem"]' in diff
    assert not any(k.startswith("optimizer.betas") for k in diff), "the group swap says it all"
    assert all("." in k or k in ("out_dir", "resume", "logger", "run") for k in NOT_TRAJECTORY)


@pytest.mark.parametrize("changed,key", [(("optimizer=adamw",), "optimizer.name"),
                                         (("sparse.dense=[stem]",), "sparse.dense"),
                                         (("trainer.label_smoothing=0.1",), "trainer.label_smoothing")])
def test_resume_with_another_setting_names_it(tmp_path, changed, key):
    src = _cut(tmp_path, *STATIC)
    with pytest.raises(UserError, match=f"different run \\({key}: ") as info:
        run_tiny(tmp_path, *STATIC, *changed, f"resume={src}", name="b")
    assert "\n" not in str(info.value)


def _strip_config(path):
    payload = torch.load(path, weights_only=True)
    payload.pop("config")
    torch.save(payload, path)


@pytest.mark.parametrize("changed", [("optimizer=adamw",), ("sparse.dense=[stem]",)])
def test_an_older_checkpoint_that_does_not_fit_is_a_clear_error(tmp_path, changed):
    """Checkpoints from before the config record match on the fingerprint only: the optimizer
    or the sparse layers may still differ (was: KeyError 'step' / ValueError 'lacks masks')."""
    src = _cut(tmp_path, *STATIC)
    _strip_config(src / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match="does not fit this run|another optimizer"):
        run_tiny(tmp_path, *STATIC, *changed, f"resume={src}", name="b")


def test_resume_accepts_changed_reporting_settings(tmp_path):
    src = _cut(tmp_path, *STATIC)
    done = run_tiny(tmp_path, *STATIC, "trainer.log_every=7", "trainer.eval_batch_size=100",
                    f"resume={src}", name="a")
    assert done["status"] == "completed"


def test_a_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": {}, "epoch": 3}, path)
    with pytest.raises(UserError, match="not a complete sparse-run checkpoint"):
        run_tiny(tmp_path, f"resume={path}")
    torch.save([1, 2], path)
    with pytest.raises(UserError, match="holds a list"):
        run_tiny(tmp_path, f"resume={path}")
