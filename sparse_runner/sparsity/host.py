"""The only device-to-host reads a training step may make, each with the reason it is needed.

On a GPU a host read (``.item()``, ``int(t)``, ``bool(t)``, ``.tolist()``, a data-dependent
shape such as ``nonzero``) waits for every queued kernel. A step must make none, except where
a mask update needs numbers on the host (counts that size an index, event statistics): there
the code calls :func:`read` or :func:`nonzero` with a one-line reason, so every sync of a step
is visible in one place. tests/test_meta_step.py runs every method on the ``meta`` device
(where any other read raises) and counts host reads per step on the CPU: these functions are
the only ones allowed, and only on the steps whose ``after_optimizer_step`` returns an event.
Call sites use ``host.read(...)`` (module attribute), so the test can record and replay them.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor


def read(t: Tensor, why: str) -> Any:
    """``t.tolist()``: a host read (a sync on a GPU) for the reason ``why``; mask updates only."""
    return t.tolist()


def nonzero(t: Tensor, why: str) -> Tensor:
    """``t.nonzero()`` (a data-dependent shape: a sync on a GPU); mask updates only."""
    return t.nonzero()
