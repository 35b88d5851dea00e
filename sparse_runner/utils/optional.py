"""Optional work never fails a run: one mechanism for every step that is nice to have.

Spectral metrics, the wandb mirror, the condensed backend's layer timing, report plots and
export extras are optional: a training that finished is ``completed`` whatever they do. Each
such call goes through :func:`attempt`. If it raises, the caller gets ``default`` back, one
warning line names what was skipped and why (once per section), and the error is kept by the
active :class:`Skipped` collector, which the run writes into the section of ``summary.json``
the step belongs to (e.g. ``spectral.error``, ``sparsity.backend.error``, ``wandb.error``).

What is never swallowed: ``KeyboardInterrupt`` (not an ``Exception``) and the exception types
a caller lists in ``reraise`` (e.g. ``UserError`` for a misconfiguration caught before training).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, MutableMapping, TypeVar

from .errors import one_line

T = TypeVar("T")


@dataclass
class Skipped:
    """The optional steps that failed in one run (or one report): section -> error."""

    prog: str = "sparse-run"
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, section: str, what: str, error: str) -> None:
        if section in self.errors:
            return  # one warning and one record per section, however often the step runs
        self.errors[section] = error
        rank = int(os.environ.get("RANK", 0) or 0)
        where = f" (rank {rank})" if rank else ""
        print(f"{self.prog}: warning{where}: {what} skipped: {error}", file=sys.stderr, flush=True)

    def record(self, summary: MutableMapping[str, Any]) -> None:
        """Write each error to ``<section>.error`` of ``summary`` (dotted sections nest)."""
        for section, error in self.errors.items():
            node = summary
            for key in section.split("."):
                child = node.get(key)
                if not isinstance(child, MutableMapping):
                    child = node[key] = {}
                node = child
            node["error"] = error


_active: contextvars.ContextVar[Skipped | None] = contextvars.ContextVar("skipped", default=None)


@contextlib.contextmanager
def collect(prog: str = "sparse-run") -> Iterator[Skipped]:
    """Collect the failures of :func:`attempt` calls made inside the block."""
    skipped = Skipped(prog)
    token = _active.set(skipped)
    try:
        yield skipped
    finally:
        _active.reset(token)


def attempt(section: str, what: str, fn: Callable[..., T], *args: Any, default: Any = None,
            reraise: tuple[type[BaseException], ...] = (), **kwargs: Any) -> T | Any:
    """``fn(*args, **kwargs)``, or ``default`` after a warning line if it raises."""
    try:
        return fn(*args, **kwargs)
    except reraise:
        raise
    except Exception as exc:  # noqa: BLE001 -- optional work: any failure is reported, not fatal
        error = f"{type(exc).__name__}: {one_line(exc)}"
        (_active.get() or Skipped()).add(section, what, error)
        return default
