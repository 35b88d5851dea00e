"""The CLI as a user meets it: one-line errors, exit codes, sweeps, the packaged config."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import TINY, cli

pytestmark = pytest.mark.slow


def one_line_error(proc) -> str:
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(err) >= 1 and err[-1].startswith("sparse-run: error:"), proc.stderr
    return err[-1]


def test_unknown_model_lists_valid_names(tmp_path):
    proc = cli("model=resnet99", f"out_dir={tmp_path / 'x'}")
    line = one_line_error(proc)
    assert proc.returncode == 2
    assert "resnet99" in line and "resnet18" in line and "resnet34" in line
    assert not (tmp_path / "x").exists(), "nothing is written for a bad command line"


@pytest.mark.parametrize("arg,word", [("dataset=mnist", "digits"), ("method=magic", "dense"),
                                      ("ift=tall", "none")])
def test_unknown_group_options(tmp_path, arg, word):
    line = one_line_error(cli(arg, f"out_dir={tmp_path / 'x'}"))
    assert word in line


def test_missing_dataset_directory(tmp_path):
    line = one_line_error(cli("dataset=cifar10", f"dataset.root={tmp_path / 'nowhere'}",
                              f"out_dir={tmp_path / 'x'}", *TINY))
    assert str(tmp_path / "nowhere") in line
    assert "dataset.download=true" in line and "dataset=digits" in line


def test_sparsity_out_of_range(tmp_path):
    out = tmp_path / "bad_s"
    proc = cli("s=1.5", "method=static", f"out_dir={out}", *TINY)
    line = one_line_error(proc)
    assert "s=1.5" in line and "[0, 1)" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "s=1.5" in summary["error"]


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = one_line_error(cli(f"out_dir={blocker / 'run'}", *TINY))
    assert "not a writable directory" in line and "out_dir" in line
    if os.geteuid() != 0:  # permissions do not bind root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        line = one_line_error(cli(f"out_dir={locked / 'run'}", *TINY))
        assert "not a writable directory" in line


def test_info_searchpath_is_packaged(tmp_path):
    proc = cli("--info", "searchpath", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pkg://sparse_runner.conf" in proc.stdout


def test_multirun_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("-m", "seed=0,1", f"out_dir={sweep}", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job in ("0", "1"):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == int(job)
    from sparse_runner.report import main as report_main

    assert report_main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert text.count("| completed |") == 2
    assert (sweep / "report.csv").exists() and (sweep / "report.png").exists()


def test_report_on_missing_dir(tmp_path, capsys):
    from sparse_runner.report import main as report_main

    assert report_main([str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_nan_loss_fails_cleanly_and_keeps_last_checkpoint(tmp_path):
    out = tmp_path / "nan"
    # A huge learning rate makes the loss blow up after the first epoch's checkpoint.
    proc = cli(f"out_dir={out}", *TINY, "trainer.epochs=3", "optimizer.lr=1e12",
               "schedule=constant", "optimizer.weight_decay=0")
    line = one_line_error(proc)
    assert "loss became" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "loss became" in summary["error"]
    assert not list(out.glob("**/*.tmp")), "no half-written files"


def test_sweep_over_methods_with_a_method_option(tmp_path):
    """-m method=a,b method.<key>=v: the default method lacks the key; every job reads it."""
    sweep = tmp_path / "sweep"
    proc = cli("-m", "method=rigl,set", "method.delta_t=7", "s=0.5", "run.dry_run=true",
               f"out_dir={sweep}", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job, name in (("0", "rigl"), ("1", "set")):
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["method"] == name
        assert "delta_t: 7" in (sweep / job / ".hydra" / "config.yaml").read_text()


def test_defer_swept_group_keys_rewrites_only_keys_of_swept_groups():
    from sparse_runner.config.overrides import defer_swept_group_keys

    argv = ["-m", "method=rigl,set", "method.delta_t=7", "seed=0", "method.alpha=choice(0.3)"]
    assert defer_swept_group_keys(argv) == [
        "-m", "method=rigl,set", "method.delta_t=choice(7)", "seed=0", "method.alpha=choice(0.3)"]
    assert defer_swept_group_keys(argv[1:]) == argv[1:]          # a single run: untouched
    single = ["-m", "method=rigl", "method.delta_t=7", "seed=0,1"]
    assert defer_swept_group_keys(single) == single              # the group is not swept
