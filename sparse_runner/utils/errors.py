"""User-facing errors: one line that names the problem and the fix, never a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (config, data, paths). The CLI prints it as one line and exits 2."""

    exit_code = 2


class TrainingFailed(Exception):
    """Training cannot continue (e.g. the loss became NaN). The run is marked failed, exit code 1."""

    exit_code = 1


def one_line(exc: BaseException) -> str:
    """Collapse an exception message to a single line for the terminal and summary.json."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text
