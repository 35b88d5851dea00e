"""A Hydra sweeper for paper tables: a union of grids, plus a smoke form of the same grid.

A table is rarely one cartesian product: Table 2 of Sparse-IFT is (methods x s) *plus* one dense
baseline that has no s; Table 8's epochs depend on s. ``hydra/sweeper=grids`` (selected by the
table presets in ``conf/experiment/``) runs every grid of ``hydra.sweeper.grids`` one after the
other, each crossed with ``hydra.sweeper.params`` (keys shared by all grids, e.g. the seeds).

With ``smoke=true`` on the command line, ``hydra.sweeper.smoke`` (a list of overrides: digits,
one epoch, one seed, a narrow model) is applied to every job: the same grid, small enough for
CI. A grid may add its own smoke overrides under its key ``smoke`` (a list), for options that
only its methods have (e.g. a shorter GraNet update interval). Precedence, lowest first: grid,
params, smoke (common, then the grid's), the command line.
``hydra.sweeper.where={method:[dense,rigl],s:[0,0.9]}`` runs a sub-table (a key's value must be
listed; jobs that do not set the key pass), ``hydra.sweeper.take=N`` the first N jobs per grid.

Its config is conf/hydra/sweeper/grids.yaml. (Hydra executes this module without registering
it in ``sys.modules``, so it defines no dataclass.)
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


def _as_overrides(mapping: Any) -> list[str]:
    if not mapping:
        return []
    items = OmegaConf.to_container(mapping) if OmegaConf.is_config(mapping) else dict(mapping)
    return [f"{k}={_value(v)}" for k, v in items.items()]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return "null" if v is None else str(v)


def keep(job: Sequence[str], where: Any) -> bool:
    """False when the job sets a key of ``where`` to a value outside its list."""
    if not where:
        return True
    allowed = {k: {_value(x) for x in (v if isinstance(v, (list, tuple)) else [v])}
               for k, v in (OmegaConf.to_container(where) if OmegaConf.is_config(where)
                            else dict(where)).items()}
    for item in job:
        key, _, value = item.partition("=")
        if key in allowed and value not in allowed[key]:
            return False
    return True


def _split_grid(grid: Any) -> tuple[dict[str, Any], list[str]]:
    """A grid's sweep keys, and its own smoke overrides (key ``smoke``)."""
    items = dict(OmegaConf.to_container(grid) if OmegaConf.is_config(grid) else (grid or {}))
    return items, [str(x) for x in items.pop("smoke", None) or []]


def expand(grids: Sequence[Any], params: Any, smoke: Optional[Sequence[str]],
           arguments: Sequence[str], parser: OverridesParser,
           take: Optional[int] = None, where: Any = None) -> list[list[str]]:
    """The job list: one override list per job, grid after grid (deduplicated, in order).
    ``smoke``: None for the full table, else the common smoke overrides (each grid's own are
    added). ``where`` ({key: [values]}) keeps the jobs whose values are listed (a sub-table),
    ``take`` then only the first jobs of each grid (a cut grid for CI)."""
    jobs: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for grid in grids or [{}]:
        keys, own = _split_grid(grid)
        extra = [] if smoke is None else [*smoke, *own]
        conf = [*_as_overrides(keys), *_as_overrides(params), *extra, *arguments]
        (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(conf), None)
        for job in [j for j in batch if keep(j, where)][:take]:
            key = tuple(job)
            if key not in seen:
                seen.add(key)
                jobs.append(list(job))
    return jobs


class GridsSweeper(BasicSweeper):
    """BasicSweeper over a union of grids (see the module docstring)."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None,
                 grids: Optional[List[Dict[str, Any]]] = None,
                 smoke: Optional[List[str]] = None, take: Optional[int] = None,
                 where: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = list(grids or [])
        self.take, self.where = take, where
        self.smoke = [str(s) for s in (smoke or [])]

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        smoke = self.smoke if bool(OmegaConf.select(self.config, "smoke", default=False)) else None
        jobs = expand(self.grids, self.params, smoke, arguments, parser, self.take, self.where)
        # BasicSweeper.sweep re-parses "params + arguments"; hand it the finished job list instead
        self.overrides = list(BasicSweeper.split_overrides_to_chunks(jobs, self.max_batch_size))
        return self._launch_all()

    def _launch_all(self) -> Any:
        from pathlib import Path

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, first = [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first)
            for r in results:
                _ = r.return_value  # re-raise a job's unexpected exception
            first += len(batch)
            returns.append(results)
        return returns
