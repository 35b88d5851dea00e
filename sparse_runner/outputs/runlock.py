"""One process owns a run directory: an ``fcntl.flock`` on ``<run dir>/.sparse-run.lock``.

The kernel drops the lock when the owner exits in any way (SIGKILL included), so a stale lock
never blocks a later run, and the lock file itself is never deleted (deleting it would let two
processes lock two different files of the same name). The owner's PID is written into the file
so a refused run can name it. Within one process the lock is re-entrant: the CLI takes it
before writing Hydra's files and ``run()`` takes it again for the same directory.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..utils.errors import UserError
from .fsio import io_error, make_dirs

LOCK_NAME = ".sparse-run.lock"

try:
    import fcntl
except ImportError:  # not POSIX: ownership is not enforced
    fcntl = None  # type: ignore[assignment]

_held: dict[str, list] = {}  # real path of the lock file -> [fd, depth]


class DirectoryBusy(UserError):
    """Another live process owns the run directory."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


class RunLock:
    """Context manager: ``with RunLock(run_dir): ...`` owns ``run_dir`` or raises DirectoryBusy."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.key = ""

    def acquire(self) -> "RunLock":
        make_dirs(self.run_dir)
        self.key = os.path.realpath(self.path)
        if self.key in _held:
            _held[self.key][1] += 1
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise io_error(exc, self.path, "create the lock file") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise io_error(exc, self.path, "lock") from None
                who = f"PID {pid}" if pid else "another process"
                raise DirectoryBusy(
                    f"{self.run_dir} is in use by another sparse-run ({who}); wait for it to "
                    "finish or choose another out_dir=<dir>") from None
        try:  # the PID, for the message a refused run prints (best effort: the lock is what counts)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        _held[self.key] = [fd, 1]
        return self

    def release(self) -> None:
        entry = _held.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[self.key]
            os.close(entry[0])  # closing the descriptor releases the flock

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def held(run_dir: Path) -> bool:
    """Whether this process owns ``run_dir``."""
    return os.path.realpath(Path(run_dir) / LOCK_NAME) in _held
