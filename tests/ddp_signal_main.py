"""``sparse-run`` whose rank ``SIGNAL_RANK`` sends itself ``SIGNAL`` after optimizer step
``SIGNAL_STEP`` (tests of "a signal on any one rank stops all ranks"); run it under torchrun."""
from __future__ import annotations

import os
import signal

from sparse_runner import step as step_mod
from sparse_runner.cli import main

_call = step_mod.TrainStep.__call__


def _signalling_call(self, step, batches):
    result = _call(self, step, batches)
    if (step + 1 == int(os.environ["SIGNAL_STEP"])
            and os.environ["RANK"] == os.environ["SIGNAL_RANK"]):
        os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
    return result


step_mod.TrainStep.__call__ = _signalling_call

if __name__ == "__main__":
    main()
