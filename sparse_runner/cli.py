"""``sparse-run``: the Hydra entry point (thin). Composition happens here; the work in run.py.

Before Hydra starts, the command line is checked for the mistakes Hydra would report as a
multi-line trace (an unknown option of a config group, a misspelt key, an output directory
that takes no files) so the user gets one line naming the fix, and exit code 2. Hydra writes
nothing into the run directory itself (``hydra.output_subdir: null``): ``.hydra/`` is written
here once the run owns its directory, so a refused start leaves a finished run untouched.

Exit codes: 0 ok, 2 user or environment error, 1 a bug (traceback), 130 interrupted.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .distributed import comm as dist
from .utils.errors import TrainingFailed, UserError, one_line
from .outputs.fsio import atomic_write, atomic_write_text, probe_dir
from .distributed.launch import rank_overrides
from .config.overrides import check_keys, defer_swept_group_keys, normalise, parse
from .distributed.stop import forward
from .config.hydra_register import register_hydra_plugins
from .train import Interrupted

CONF_PACKAGE = "sparse_runner.conf"
INTERRUPTED = 130
_failures: list[int] = []
_sweep: dict[str, Any] = {}  # multirun.yaml as it was before this sweep, and when it started


def check_command_line(argv: list[str]) -> None:
    """Raise UserError for unknown options or keys and an output directory that takes no files."""
    check_keys(argv)
    dirs = [a.values[0] for a in parse(argv)
            if a.key in ("out_dir", "hydra.run.dir", "hydra.sweep.dir") and a.values]
    for d in dirs or ["."]:
        probe_dir(Path(d))


def write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """What Hydra would have written to ``.hydra/`` (config, hydra config, overrides)."""
    hc = HydraConfig.get()
    out = run_dir / ".hydra"
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})))
    atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(hc.overrides.task))


def _report(exc: BaseException, run_dir: Path | None = None) -> int:
    """Print the one line for ``exc``; returns the exit code."""
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        saved = run_dir is not None and (run_dir / "checkpoints" / "last.pt").is_file()
        how = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else one_line(exc)
        then = ("run the same command again to continue from checkpoints/last.pt" if saved
                else "no checkpoint was saved yet, so a rerun starts over")
        print(f"sparse-run: interrupted ({how}); {then}", file=sys.stderr)
        return INTERRUPTED
    rank = int(os.environ.get("RANK", 0))  # every rank reports: it may be its error alone
    where = f" (rank {rank})" if rank else ""
    print(f"sparse-run: error{where}: {one_line(exc)}", file=sys.stderr)
    return getattr(exc, "exit_code", 1)


def task(cfg: DictConfig) -> Any:
    """One Hydra job: own the run dir, run, turn expected failures into an exit code or a tally."""
    from .outputs.rundir import owned
    from .run import run

    hc = HydraConfig.get()
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    try:
        if dist.launch_env().rank != 0:  # rank 0 owns the directory and writes its files
            summary = run(cfg, Path(hc.runtime.output_dir))
        else:
            with owned(cfg, Path(hc.runtime.output_dir)) as own:
                if own.done is None:
                    write_hydra_files(own.path, cfg)
                summary = run(cfg, own.path)
    except (UserError, TrainingFailed, Interrupted, KeyboardInterrupt) as exc:
        code = _report(exc, Path(hc.runtime.output_dir))
        # checkpoint and summary are written: now the cluster's handler may requeue the job
        forward(getattr(exc, "signum", 0))
        if isinstance(exc, KeyboardInterrupt) or not multirun:
            sys.exit(code)
        _failures.append(code)
        return None
    return (summary.get("metrics") or {}).get("test_acc1")


class SweepGuard(Callback):
    """Keeps a sweep directory's ``multirun.yaml`` when a new sweep there runs no job (all
    refused or already complete): Hydra rewrites it before any job can be checked. A job that
    runs writes its ``.hydra/`` (in whichever process the launcher runs it), which is how the
    end of the sweep tells."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        old = (path.read_bytes(), path.stat()) if path.is_file() else None
        # file times come from a coarse clock: allow it to lag (no earlier sweep ends this late)
        _sweep.update(path=path, old=old, start=time.time_ns() - 200_000_000)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _sweep.get("old") is None:
            return
        path = _sweep["path"]
        ran = any(p.stat().st_mtime_ns >= _sweep["start"]
                  for p in path.parent.glob("*/.hydra/config.yaml"))
        if not ran:
            data, st = _sweep["old"]
            atomic_write(path, data)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


_hydra_main = hydra.main(version_base="1.3", config_path=f"pkg://{CONF_PACKAGE}",
                         config_name="config")(task)


def main() -> None:
    try:
        sys.argv[1:] = normalise(sys.argv[1:])
        check_command_line(sys.argv[1:])
        sys.argv[1:] = defer_swept_group_keys(sys.argv[1:])
        sys.argv[1:] = rank_overrides(sys.argv[1:])  # torchrun: one run directory for all ranks
        register_hydra_plugins()  # the grids sweeper, also under an editable install
        _hydra_main()
    except UserError as exc:
        sys.exit(_report(exc))
    except KeyboardInterrupt as exc:
        sys.exit(_report(exc))
    finally:
        dist.shutdown()
    if _failures:
        print(f"sparse-run: {len(_failures)} job(s) of the sweep failed; see their summary.json",
              file=sys.stderr)
        sys.exit(max(_failures))


if __name__ == "__main__":
    main()
