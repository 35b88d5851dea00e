"""Peak resident memory per phase of a run (summary.json ``memory.phases``).

``ru_maxrss`` only ever grows, so it cannot tell a training step's peak from the setup's.
Linux can reset the process's high-water mark (``echo 5 > /proc/self/clear_refs``) and reports
it as ``VmHWM`` in ``/proc/self/status``: the tracker reads the mark at the end of each phase
and resets it at the start of the next, so every phase gets its own peak (RSS is the same
whatever the load on the machine, unlike time, so these figures hold on a busy machine too).

Phases: ``setup`` (process start to the first training step: model, masks, backend, timing),
``steady_step`` (training steps without a dense gradient or a mask update),
``update_step`` (steps that compute the dense gradient or change the masks) and
``between_steps`` (evaluation, checkpoints, logging). The process-wide peak is the largest of
them (resetting the mark also lowers ``ru_maxrss``, so the tracker keeps the overall peak).
:meth:`restart` at the start of each run (run.py) keeps runs in one process apart. Where
``/proc`` cannot be read or reset (not Linux), phases are simply absent.
"""
from __future__ import annotations

import re
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def hwm_mb() -> float | None:
    """The process's resident high-water mark since the last reset (MB), or None."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) / 1024.0 if found else None


def reset_hwm() -> bool:
    """Lower the high-water mark to the current resident set; False where not possible."""
    try:
        with _CLEAR.open("w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PhaseMemory:
    """Per-phase peak RSS: :meth:`begin_step` / :meth:`end_step` around every training step."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self.overall = 0.0
        self.enabled = hwm_mb() is not None

    def restart(self) -> None:
        """A run starts (its ``setup`` phase): forget the phases of an earlier run in this
        process (the overall peak is kept)."""
        if self.enabled:
            self._close("_before")
        self.peaks.clear()

    def _close(self, phase: str) -> None:
        mb = hwm_mb()
        if mb is None or not reset_hwm():
            self.enabled = False
            return
        self.peaks[phase] = max(self.peaks.get(phase, 0.0), mb)
        self.overall = max(self.overall, mb)

    def begin_step(self) -> None:
        """Closes what ran since the last step (``setup`` before the first one)."""
        if self.enabled:
            self._close("between_steps" if self.peaks else "setup")

    def end_step(self, update: bool) -> None:
        """Closes a training step; ``update``: it had a dense gradient or a mask update."""
        if self.enabled:
            self._close("update_step" if update else "steady_step")

    def summary(self) -> dict[str, float]:
        """Peak MB per phase so far (the current open phase included), rounded."""
        if self.enabled and self.peaks:
            mb = hwm_mb()
            if mb is not None:
                self.overall = max(self.overall, mb)
                self.peaks["between_steps"] = max(self.peaks.get("between_steps", 0.0), mb)
        return {k: round(v, 1) for k, v in self.peaks.items() if not k.startswith("_")}


PHASES = PhaseMemory()   # one per process: the high-water mark is the process's
