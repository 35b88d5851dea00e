"""The words a user reads: key typos, NaN, Ctrl-C, unreadable checkpoints, method=dense."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import TINY, cli, run_tiny
from sparse_runner.cli import check_command_line
from sparse_runner.utils.errors import TrainingFailed, UserError
from sparse_runner.config.overrides import normalise


@pytest.mark.parametrize("argv,message", [
    (["trainer.epoch=3"], "unknown key trainer.epoch; did you mean trainer.epochs?"),
    (["+trainer.epoch=3"], "the run does not read trainer.epoch; did you mean trainer.epochs?"),
    (["++optimizer.lrr=1"], "the run does not read optimizer.lrr; did you mean optimizer.lr?"),
    (["+seed=3"], "seed is already set; drop the '+' (seed=3)"),
    (["dataset.num_samples=64"], "unknown key dataset.num_samples"),
    (["-m", "method=rigl,static", "s=0.5", "method.delta_t=5"],
     "unknown key method.delta_t (with method=static)"),
    (["~trainer.epoch"], "unknown key trainer.epoch"),
])
def test_misspelt_keys_are_one_line_with_the_closest_key(argv, message):
    with pytest.raises(UserError) as info:
        check_command_line(normalise(argv))
    assert message in str(info.value)


@pytest.mark.parametrize("argv", [
    ["+experiment=cifar100_resnet18", "trainer.epochs=1"],
    ["dataset=synthetic", "dataset.num_samples=64", "hydra.job.chdir=false"],
    ["hydra/job_logging=disabled", "+distribution.overrides.fc=1.0"],
    ["-m", "seed=0,1", "s=0.5,0.9", "method=rigl", "method.delta_t=5"],
    ["--config-name", "config", "trainer.epochs=2"],
])
def test_valid_command_lines_pass(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_command_line(normalise(argv))


def test_plus_group_means_the_group():
    assert normalise(["+experiment=x", "+trainer.foo=1", "-m"]) == ["experiment=x",
                                                                   "+trainer.foo=1", "-m"]


def test_a_typo_on_the_command_line_exits_2_in_one_line(tmp_path):
    proc = cli("trainer.epoch=3", f"out_dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("sparse-run: error: unknown key trainer.epoch; did you mean "
                                   "trainer.epochs?")
    assert not (tmp_path / "x").exists()


def test_nan_in_the_first_epoch_does_not_claim_a_checkpoint(tmp_path):
    with pytest.raises(TrainingFailed) as info:
        run_tiny(tmp_path, "optimizer.lr=1e30", "schedule=constant", "optimizer.weight_decay=0")
    assert "no checkpoint was saved" in str(info.value)
    assert "holds the last good epoch" not in str(info.value)


def test_ctrl_c_is_exit_130_with_a_clear_line(tmp_path):
    out = tmp_path / "run"
    # preexec: a shell that starts the tests in the background ignores SIGINT for its children,
    # and Python then never turns Ctrl-C into KeyboardInterrupt; give the run the default back
    proc = subprocess.Popen([sys.executable, "-m", "sparse_runner.cli", *TINY, "trainer.epochs=50",
                             f"out_dir={out}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("sparse-run: interrupted (Ctrl-C); run the same "
                                            "command again to continue from checkpoints/last.pt")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "Ctrl-C" in summary["error"]


class Foreign:  # pickled by reference: weights_only loading refuses it
    pass


@pytest.mark.parametrize("content", [b"garbage, not a checkpoint" * 10, "pickle"])
def test_an_unreadable_resume_file_never_advises_weights_only_false(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "pickle":
        torch.save({"obj": Foreign()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        run_tiny(tmp_path, f"resume={path}")
    msg = str(info.value)
    assert f"cannot read checkpoint {path}" in msg and "resume=" in msg
    assert "weights_only" not in msg and "\n" not in msg


def test_dense_with_an_ift_does_not_suggest_s0_when_s_is_0(tmp_path):
    with pytest.raises(UserError) as info:
        run_tiny(tmp_path, "ift=wide", "method=dense")
    msg = str(info.value)
    assert "ift=wide has no effect" in msg and "(ift=none)" in msg
    assert not re.search(r"s=0(?![.\d])", msg), "s is already 0"
    with pytest.raises(UserError, match=r"s=0.5 ift=wide has no effect.*\(s=0 ift=none\)"):
        run_tiny(tmp_path, "ift=wide", "method=dense", "s=0.5", name="b")


def test_interruptions_exit_130_and_say_whether_a_rerun_continues(tmp_path, capsys):
    from sparse_runner.cli import _report
    from sparse_runner.train import Interrupted

    assert _report(Interrupted("stopped at step 5"), tmp_path) == 130
    assert capsys.readouterr().err.strip() == ("sparse-run: interrupted (stopped at step 5); no "
                                               "checkpoint was saved yet, so a rerun starts over")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    assert _report(KeyboardInterrupt(), tmp_path) == 130
    assert "continue from checkpoints/last.pt" in capsys.readouterr().err
    assert _report(UserError("bad"), tmp_path) == 2
    assert capsys.readouterr().err.strip() == "sparse-run: error: bad"
