"""Per-phase peak RSS (memphase.py): a phase sees its own peak, not an earlier phase's."""
from __future__ import annotations

import pytest
import torch

from sparse_runner.utils.memphase import PhaseMemory, hwm_mb, reset_hwm

pytestmark = pytest.mark.skipif(hwm_mb() is None or not reset_hwm(),
                                reason="needs Linux /proc/self/clear_refs")


def _touch(mb: int) -> torch.Tensor:
    return torch.ones(mb * 2**18)   # float32: mb MB, every page written


def test_each_phase_has_its_own_peak():
    mem = PhaseMemory()
    mem.restart()
    base = hwm_mb()
    big = _touch(300)                 # setup holds 300 MB, then frees it
    del big
    mem.begin_step()
    small = _touch(40)                # a steady step: 40 MB
    del small
    mem.end_step(update=False)
    mem.begin_step()
    mid = _touch(150)                 # an update step: 150 MB
    del mid
    mem.end_step(update=True)
    peaks = mem.summary()
    assert set(peaks) == {"setup", "steady_step", "update_step", "between_steps"}
    assert peaks["setup"] >= base + 290
    assert peaks["steady_step"] < peaks["setup"] - 200     # the setup's 300 MB is not in it
    assert peaks["update_step"] >= peaks["steady_step"] + 90
    assert round(mem.overall, 1) >= max(peaks.values())


def test_restart_forgets_the_phases_of_an_earlier_run():
    mem = PhaseMemory()
    mem.begin_step()
    mem.end_step(update=True)
    mem.restart()
    assert mem.summary() == {} and mem.overall > 0
