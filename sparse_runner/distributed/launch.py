"""Command-line rewriting for a data-parallel launch, before Hydra starts.

Under ``torchrun`` every rank runs the CLI, so every rank would resolve ``${now:...}`` in
``out_dir`` at its own microsecond and write a run directory of its own (a known Hydra + DDP
pitfall). :func:`rank_overrides` makes every rank resolve the run directory from rank 0's clock,
and keeps Hydra's own output files (``.hydra/``, the job log) to rank 0.
"""
from __future__ import annotations

import re
from datetime import datetime
from importlib import resources

from omegaconf import OmegaConf

from . import comm as dist

DIR_KEYS = ("out_dir", "hydra.run.dir", "hydra.sweep.dir")
_NOW = re.compile(r"\$\{now:([^}]*)\}")
# Hydra's files of the run directory come from rank 0 only.
FOLLOWER_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=none",
                      "hydra/hydra_logging=none")


def freeze_now(value: str, when: datetime) -> str:
    """``value`` with every ``${now:FORMAT}`` replaced by ``when`` in that format."""
    return _NOW.sub(lambda m: when.strftime(m.group(1)), value)


def default_out_dir() -> str:
    """``out_dir`` of the root config, unresolved."""
    root = OmegaConf.load(str(resources.files("sparse_runner.conf") / "config.yaml"))
    return str(OmegaConf.to_container(root, resolve=False)["out_dir"])


def rank_overrides(argv: list[str], launch: dist.Launch | None = None) -> list[str]:
    """``argv`` for this rank: run directories pinned to rank 0's time, and on the other ranks
    no Hydra output files. A single process gets ``argv`` back unchanged."""
    launch = dist.launch_env() if launch is None else launch
    if not launch.distributed:
        return list(argv)
    stamp = dist.shared_value("now", datetime.now().isoformat(), launch)
    when = datetime.fromisoformat(stamp)
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        out.append(f"{key}={freeze_now(value, when)}" if sep and key.lstrip("+") in DIR_KEYS
                   else arg)
    if not any(a.partition("=")[0].lstrip("+") in ("out_dir", "hydra.run.dir") for a in argv):
        out.append(f"out_dir={freeze_now(default_out_dir(), when)}")
    if launch.rank != 0:
        out.extend(FOLLOWER_OVERRIDES)
    return out
