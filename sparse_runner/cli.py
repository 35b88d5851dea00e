"""``sparse-run``: the Hydra entry point (thin). Composition happens here; the work in run.py.

Before Hydra starts, the command line is checked for the mistakes Hydra would report as a
multi-line trace (an unknown option of a config group, an unwritable output directory) so the
user gets one line naming the valid choices, and exit code 2.
"""
from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from . import distributed as dist
from .errors import TrainingFailed, UserError, one_line
from .launch import rank_overrides
from .stop import forward
from .train import Interrupted

CONF_PACKAGE = "sparse_runner.conf"
_failures: list[int] = []


def group_options(group: str) -> list[str]:
    """Option names of a config group: the yaml files in ``conf/<group>/`` and the structured
    configs registered in Hydra's ConfigStore (every ``method=<name>``)."""
    from hydra.core.config_store import ConfigStore

    folder = resources.files(CONF_PACKAGE) / group  # importing it registers the schemas
    names = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")} \
        if folder.is_dir() else set()
    try:
        names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)}
    except OSError:  # no such group in the store
        pass
    return sorted(names)


def _override_values(arg: str) -> tuple[str, list[str]] | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        (override,) = OverridesParser.create().parse_overrides([arg])
    except Exception:
        return None  # Hydra will report malformed overrides itself
    key = override.key_or_group
    if override.is_sweep_override():
        values = [str(v) for v in override.sweep_string_iterator()]
    else:
        value = override.value()
        values = [] if value is None else [str(value)]
    return key, values


def check_command_line(argv: list[str]) -> None:
    """Raise UserError for unknown group options and an unwritable output directory."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        parsed = _override_values(arg)
        if parsed is None:
            continue
        key, values = parsed
        key = key.lstrip("+~")
        # hydra/... groups also hold the plugins' options (submitit_local, optuna, ...)
        ours = "." not in key and not key.startswith("hydra")
        options = group_options(key) if ours else []
        for value in values:
            if options and value not in options and value != "null":
                raise UserError(f"unknown {key} {value!r}; valid: {', '.join(options)}")
        if key in ("out_dir", "hydra.run.dir", "hydra.sweep.dir") and values:
            check_writable(Path(values[0]))
    if not any(a.split("=", 1)[0] in ("out_dir", "hydra.run.dir") for a in argv):
        check_writable(Path.cwd())


def check_writable(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a writable directory."""
    probe = path.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the output directory {path}: {probe} is not a writable "
                        "directory; choose another with out_dir=<dir>")


def task(cfg: DictConfig) -> Any:
    """One Hydra job: run it, turn expected failures into an exit code (single run) or a tally."""
    from .run import run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    try:
        summary = run(cfg, run_dir)
    except (UserError, TrainingFailed, Interrupted, KeyboardInterrupt) as exc:
        code = getattr(exc, "exit_code", 1)
        rank = int(os.environ.get("RANK", 0))  # every rank reports: it may be its error alone
        where = f" (rank {rank})" if rank else ""
        print(f"sparse-run: error{where}: {one_line(exc) or 'interrupted'}", file=sys.stderr)
        # checkpoint and summary are written: now the cluster's handler may requeue the job
        forward(getattr(exc, "signum", 0))
        if isinstance(exc, KeyboardInterrupt) or not multirun:
            sys.exit(code if not isinstance(exc, KeyboardInterrupt) else 130)
        _failures.append(code)
        return None
    return (summary.get("metrics") or {}).get("test_acc1")


_hydra_main = hydra.main(version_base="1.3", config_path=f"pkg://{CONF_PACKAGE}",
                         config_name="config")(task)


def main() -> None:
    try:
        check_command_line(sys.argv[1:])
        sys.argv[1:] = rank_overrides(sys.argv[1:])  # torchrun: one run directory for all ranks
    except UserError as exc:
        print(f"sparse-run: error: {one_line(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    try:
        _hydra_main()
    finally:
        dist.shutdown()
    if _failures:
        print(f"sparse-run: {len(_failures)} job(s) of the sweep failed; see their summary.json",
              file=sys.stderr)
        sys.exit(max(_failures))


if __name__ == "__main__":
    main()
