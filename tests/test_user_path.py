"""The user's path: the installed console scripts, run as a user runs them.

Every command runs as a subprocess from a temporary folder outside the clone, with no
PYTHONPATH into it, so it finds sparse-run only through its installation (console scripts,
packaged config, Hydra plugins): the README's default run (shortened), a ``-m`` sweep, the smoke
cut of every table preset, the reports (md/csv/html/png), export and convert, a method from the
user's own file (``SPARSE_RUN_PLUGINS``), resume after an interruption, ``python -m`` and
``torchrun -m`` (2 CPU processes), and ``--help``. The tier skips (with the reason) only when the
installed ``sparse_runner`` is not this checkout (an editable install of it, or a wheel whose
files equal it): then it would test some other code.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_method_plugin import write_plugin
from test_presets import PRESETS, SMOKE_CUT, missing_models
from sparse_runner.report.tables import load_published

pytestmark = [pytest.mark.user_path, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = ("sparse-run", "sparse-run-report", "sparse-run-bench", "torchrun")
# the README's default run, shortened: a narrow ResNet-18, a few steps, no progress bar
SHORT = ("model.base_width=8", "trainer.max_steps=6", "trainer.progress=false", "run.device=cpu")
SPARSE = ("method=rigl", "s=0.8", "method.delta_t=2", "trainer.batch_size=128")
# The presets' smoke cells train one epoch (11 steps on digits, 20 on Shakespeare); here, where
# the installed scripts' plumbing is under test, 3 steps each (a mask update of the presets'
# delta_t=2 cells included): the command line wins over the preset's smoke list.
PRESET_STEPS = ("trainer.max_steps=3",)


def user_env(**extra: str) -> dict[str, str]:
    """The user's environment: nothing points into the clone; one thread per process."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*.py") if "__pycache__" not in p.parts}


def not_this_checkout(cwd: Path) -> str | None:
    """Why the installed scripts would not run this checkout's code (None: they do)."""
    missing = [s for s in SCRIPTS if not (BIN / s).exists()]
    if missing:
        return f"console scripts {missing} are not installed next to {sys.executable}"
    probe = subprocess.run(
        [sys.executable, "-c", "import os, sparse_runner; print(os.path.dirname(sparse_runner.__file__))"],
        cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return f"sparse_runner is not importable outside the clone: {probe.stderr[-300:]}"
    installed = Path(probe.stdout.strip()).resolve()
    mine = _files(REPO / "sparse_runner")
    theirs = _files(installed)
    if installed != (REPO / "sparse_runner").resolve() and any(
            theirs.get(k) != v for k, v in mine.items()):
        return f"the installed sparse_runner ({installed}) is not this checkout ({REPO})"
    return None


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """``user(*argv, env=..., code=0)``: run a command in the user's folder, check its code."""
    home = tmp_path_factory.mktemp("user")
    assert REPO not in home.resolve().parents
    reason = not_this_checkout(home)
    if reason:
        pytest.skip(reason)

    def run(*argv: str, code: int = 0, timeout: float = 540, **env: str):
        exe = str(BIN / argv[0]) if argv[0] in SCRIPTS else argv[0]
        proc = subprocess.run([exe, *argv[1:]], cwd=home, env=user_env(**env),
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == code, (argv, proc.returncode, proc.stderr[-3000:])
        return proc

    run.home = home
    return run


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_help(user):
    assert "rigl" in user("sparse-run", "--help").stdout
    assert "sift_table2" in user(sys.executable, "-m", "sparse_runner", "--help").stdout
    assert "export" in user("sparse-run-report", "--help").stdout
    assert "kernels" in user("sparse-run-bench", "--help").stdout


def test_default_run_interrupted_then_resumed(user):
    user("sparse-run", *SHORT, "trainer.stop_after_steps=3", "out_dir=default", code=130)
    assert summary(user.home / "default")["status"] == "failed"
    proc = user("sparse-run", *SHORT, "out_dir=default")
    done = summary(user.home / "default")
    assert done["status"] == "completed" and done["method"] == "dense"
    assert done["metrics"]["steps"] == 6 and "resuming from" in proc.stdout


def test_sweep_report_export_convert(user):
    user("sparse-run", "-m", "method=set,rigl", "s=0.8", "method.delta_t=2",
         "trainer.batch_size=128", *SHORT, "out_dir=sweep")
    runs = sorted((user.home / "sweep").glob("*/summary.json"))
    assert len(runs) == 2 and all(json.loads(p.read_text())["status"] == "completed" for p in runs)
    out = user("sparse-run-report", "sweep").stdout
    assert "rigl" in out and "set" in out
    for name in ("report.md", "report.csv", "report.png"):
        assert (user.home / "sweep" / name).stat().st_size > 0, name
    run = next(p.parent for p in runs if json.loads(p.read_text())["method"] == "rigl")
    user("sparse-run-report", "export", str(run.relative_to(user.home)))
    storage = json.loads((run / "export" / "storage.json").read_text())
    assert storage["layers"] and storage["total"]["csr"] < storage["total"]["dense"]
    user("sparse-run-report", "convert", str(run / "checkpoints" / "last.pt"), "--to", "condensed",
         "--out", "last.condensed.pt")
    assert (user.home / "last.condensed.pt").stat().st_size > 0


def test_method_from_the_users_file(user):
    path = write_plugin(user.home, "noisy_rigl_user")
    env = {"SPARSE_RUN_PLUGINS": str(path)}
    assert "noisy_rigl_user" in user("sparse-run", "--help", **env).stdout
    user("sparse-run", "method=noisy_rigl_user", "s=0.9", "method.delta_t=2",
         "trainer.batch_size=256", *SHORT, "out_dir=plugin", **env)
    done = summary(user.home / "plugin")
    assert done["status"] == "completed" and done["method"] == "noisy_rigl_user"


def test_torchrun_two_cpu_processes(user):
    user("torchrun", "--standalone", "--nproc_per_node=2", "-m", "sparse_runner", *SPARSE,
         *SHORT, "trainer.batch_size=32", "out_dir=ddp")
    done = summary(user.home / "ddp")
    assert done["status"] == "completed" and done["distributed"]["world_size"] == 2


@pytest.mark.parametrize("name", PRESETS)
def test_table_preset_smoke_cut_runs_and_reports(user, name):
    if missing_models(name):
        pytest.skip(f"model(s) {missing_models(name)} not on this branch yet (model zoo issue)")
    out = user.home / f"preset_{name}"
    user("sparse-run", "-m", f"experiment={name}", "smoke=true", *SMOKE_CUT[name],
         *PRESET_STEPS, f"out_dir={out.name}", "run.device=cpu")
    summaries = [json.loads(p.read_text()) for p in out.rglob("summary.json")]
    assert summaries and all(s["status"] == "completed" for s in summaries)
    assert {s["dataset"] for s in summaries} <= {"digits", "shakespeare"}
    text = user("sparse-run-report", out.name).stdout
    pub = load_published(name)
    assert pub.info["table"] in text and "Dense" in text
    first = next(r for r in pub.rows if not r.reference)
    assert first.label in text
    assert "not comparable" in text  # ours on digits, the paper on its dataset
    assert (out / "report.md").read_text().strip() and (out / "report.csv").read_text().strip()
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 1
