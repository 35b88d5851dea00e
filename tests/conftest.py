"""Shared test helpers: compose the packaged Hydra config and run in-process, offline, on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import torch  # noqa: E402
import tqdm  # noqa: E402

# No tqdm monitor thread: it takes tqdm's multiprocessing lock, which a test that forks
# (test_faults.py) must not inherit held.
tqdm.tqdm.monitor_interval = 0

# The tests use tiny models, where a second intra-op thread costs more than it brings (and
# thrashes when the 2 CI cores are shared); the kernels' threading is tested explicitly.
torch.set_num_threads(1)

# Without a GPU the Triton kernels (the GPU path) run in Triton's interpreter: it must be on
# before anything imports triton (``-m gpu_code`` tests; triton_cfi.py sets it too).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tiny, fast defaults for end-to-end runs: an 8-wide ResNet-18 on digits, one epoch, no bar.
TINY = ("model.base_width=8", "trainer.epochs=1", "trainer.progress=false", "run.device=cpu")


def compose(overrides: Sequence[str] = ()) -> Any:
    """The config ``sparse-run <overrides>`` would run (without Hydra's runtime section)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def run_tiny(tmp_path: Path, *overrides: str, name: str = "run", tiny: bool = True) -> dict:
    """Run ``sparse_runner.run.run`` in-process with TINY defaults; returns the summary."""
    from sparse_runner.run import run

    cfg = compose([*(TINY if tiny else ()), *overrides])
    return run(cfg, tmp_path / name)


def cli(*args: str, cwd: Path | None = None, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``sparse-run`` entry point in a subprocess (as a user would)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "sparse_runner.cli", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def tiny(tmp_path):
    """``tiny(*overrides)`` -> summary of a small in-process run under ``tmp_path``."""
    counter = iter(range(10**6))

    def _run(*overrides: str, **kw) -> dict:
        return run_tiny(tmp_path, *overrides, name=kw.pop("name", f"run{next(counter)}"), **kw)

    return _run
