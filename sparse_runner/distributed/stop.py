"""Stop requests: a signal on any rank checkpoints the run once, then every rank exits.

Clusters warn a job before killing it: SLURM (through submitit) sends SIGUSR2 ``signal_delay_s``
before the time limit, preemption and ``torchrun``'s agent send SIGTERM. The handler only sets a
flag; the training loop asks :meth:`StopRequest.due` after each optimizer step. Under data
parallelism the flag is all-reduced (max), so all ranks stop after the same step even when only
one got the signal, and rank 0 writes the one checkpoint.

After the checkpoint and ``summary.json`` are written, :func:`forward` hands the signal to the
handler that was installed before ours: submitit's, which requeues the job (the requeued job
resumes from ``last.pt``). Without a previous handler nothing more happens.
"""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any

import torch

from . import comm as dist

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2"))
                if s is not None)


class StopRequest:
    """Context manager owning the stop signals while training runs."""

    def __init__(self, device: torch.device | str = "cpu", check_every: int = 1) -> None:
        self.signum = 0                      # the signal that asked to stop (0: none yet)
        self.check_every = max(1, int(check_every))
        self.agreed = False                  # all ranks know: stop (stays true)
        self._flag = torch.zeros(1, dtype=torch.int32, device=device)
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or int(signum)

    def __enter__(self) -> "StopRequest":
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def due(self, step: int) -> bool:
        """Whether to stop after optimizer step ``step``; identical on every rank. The ranks
        agree every ``check_every`` steps (one 4-byte all-reduce)."""
        if not dist.current().enabled:
            self.agreed = self.signum != 0
        elif not self.agreed and step % self.check_every == 0:
            self._flag.fill_(self.signum)
            dist.all_reduce_(self._flag, "max")
            self.signum = self.signum or int(self._flag.item())
            self.agreed = self.signum != 0
        return self.agreed


def forward(signum: int) -> None:
    """Deliver ``signum`` to the handler now installed for it, if that is a Python function
    (submitit's requeue handler); the default and ignore handlers are left alone."""
    if not signum:
        return
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)
