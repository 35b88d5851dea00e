"""Durable file I/O for everything a user relies on, and OS errors as one-line user errors.

A file is written to a temporary name beside it, fsynced, renamed into place and the directory
fsynced, so after a crash (even a power cut) the name holds either the old or the new bytes.
``metrics.jsonl`` grows by whole-line appends; a crash can still tear the *last* line, which
readers skip and a resume cuts off. Temporary files of interrupted writes (``.<name>.*.tmp``)
are removed by the next run that owns the directory.

Every ``OSError`` on these paths becomes a :class:`UserError` naming the path, the cause and
the fix (disk full, read-only, no permission, missing parent, a file system such as ``/proc``
that takes no files).
"""
from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable

from ..utils.errors import UserError

TMP_SUFFIX = ".tmp"
PROBE_PREFIX = ".sparse-run-probe-"

_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another out_dir=<dir>"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another out_dir=<dir>"),
    errno.EROFS: ("the file system is read-only", "choose a writable out_dir=<dir>"),
    errno.EACCES: ("permission denied", "fix the permissions or choose another out_dir=<dir>"),
    errno.EPERM: ("operation not permitted", "fix the permissions or choose another out_dir=<dir>"),
    errno.ENOENT: ("a parent directory is missing or the file system takes no new files",
                   "choose an out_dir=<dir> on a regular disk"),
    errno.ENOTDIR: ("a parent path is a file, not a directory", "choose another out_dir=<dir>"),
    errno.EISDIR: ("a directory is in the way", "remove it or choose another out_dir=<dir>"),
    errno.EIO: ("an I/O error (failing disk or lost network mount)",
                "check the disk or choose another out_dir=<dir>"),
}


def io_error(exc: OSError, path: Path | str, action: str = "write") -> UserError:
    """The one-line user error for ``exc`` raised while trying to ``action`` ``path``."""
    cause, fix = _CAUSES.get(exc.errno or -1, (exc.strerror or type(exc).__name__,
                                               "choose another out_dir=<dir>"))
    return UserError(f"cannot {action} {path}: {cause}; {fix}")


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class _Guarded:
    """A write-only file object that remembers the first OSError of a ``write``.

    Serialisers such as ``torch.save`` replace the OSError of a full disk with their own
    message (``unexpected pos ...``); the remembered error lets the caller report the cause."""

    def __init__(self, fd: int) -> None:
        self.fd, self.error, self.pos = fd, None, 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.pos += done
        return done

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dirs(path: Path, action: str = "create the directory") -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise io_error(exc, path, action) from None


def atomic_write(path: Path, write: Callable[[BinaryIO], Any] | bytes,
                 action: str = "write") -> None:
    """Replace ``path`` by the bytes ``write(f)`` produces (or ``write`` itself), durably."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    except OSError as exc:
        raise io_error(exc, path, action) from None
    guard = _Guarded(fd)
    try:
        try:
            if isinstance(write, (bytes, bytearray)):
                guard.write(write)
            else:
                write(guard)  # type: ignore[arg-type]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        unlink_quietly(Path(tmp))
        oserror = exc if isinstance(exc, OSError) else guard.error
        if oserror is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise io_error(oserror, path, action) from None
        raise


def atomic_write_text(path: Path, text: str, action: str = "write") -> None:
    atomic_write(path, text.encode(), action)


def atomic_write_json(path: Path, obj: Any, action: str = "write") -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n"
    atomic_write_text(path, text, action)


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def append_line(path: Path, line: str) -> None:
    """Append one complete line with a single write, then fsync (line-complete appends)."""
    data = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise io_error(exc, path, "append to") from None
    try:
        view, done = memoryview(data), 0
        while done < len(data):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    except OSError as exc:
        raise io_error(exc, path, "append to") from None
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """The JSON value in ``path``, or None when it is missing or unreadable (no warning)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def split_jsonl(text: str) -> tuple[list[dict[str, Any]], int]:
    """Parse JSON lines; returns the records and the length of the intact prefix of ``text``.

    The last line counts as torn (and is dropped) when it lacks its newline or does not parse;
    an unparsable line in the middle (never written by sparse-run) is skipped too."""
    records, good_end, pos = [], 0, 0
    for line in text.splitlines(keepends=True):
        pos += len(line)
        complete = line.endswith("\n")
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            record = None
            complete = complete and pos < len(text)  # a bad middle line is kept, a bad tail cut
        if not complete:
            break
        if isinstance(record, dict):
            records.append(record)
        good_end = pos
    return records, good_end


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete records of a JSON-lines file (a torn last line is ignored)."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return split_jsonl(text)[0]


def rewrite_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Atomically keep only the complete records ``keep`` accepts (drops a torn last line)."""
    records = read_jsonl(path) if Path(path).exists() else []
    text = "".join(json.dumps(r) + "\n" for r in records if keep(r))
    atomic_write_text(path, text)


def temp_files(folders: Iterable[Path]) -> list[Path]:
    """Leftovers of interrupted atomic writes and probes in ``folders`` (not recursive)."""
    found = []
    for folder in folders:
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        for p in entries:
            name = p.name
            if name.startswith(".") and name.endswith(TMP_SUFFIX) and p.is_file():
                found.append(p)
    return found


def clean_temp_files(folders: Iterable[Path]) -> int:
    """Remove the leftovers of interrupted writes; returns the bytes freed. Call it only while
    owning the directory (another process's write in flight would lose its temp file)."""
    freed = 0
    for p in temp_files(folders):
        try:
            freed += p.stat().st_size
            p.unlink()
        except OSError:
            continue
    return freed


def probe_dir(path: Path) -> None:
    """Check that files can really be created in ``path`` (or, if it does not exist yet, in its
    nearest existing ancestor): create, write, fsync and remove a probe file.

    ``os.access`` says yes for ``/proc``, read-only bind mounts seen by root, and full disks."""
    target = Path(path).expanduser().absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write the output directory {path}: {probe} is not a writable "
                        "directory; choose another with out_dir=<dir>")
    try:
        fd, name = tempfile.mkstemp(dir=probe, prefix=PROBE_PREFIX, suffix=TMP_SUFFIX)
    except OSError as exc:
        raise io_error(exc, target, "write the output directory") from None
    try:
        try:
            os.write(fd, b"sparse-run write probe\n" * 4)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise io_error(exc, target, "write the output directory") from None
    finally:
        unlink_quietly(Path(name))


SECTIONS = ("model", "sparsity", "flops", "metrics", "time", "isoflop", "spectral")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_summary(path: Path, warn: Callable[[str], None] = _warn) -> dict[str, Any] | None:
    """A ``summary.json`` as a dict, or None (after one ``warn`` line) when it is unreadable,
    not UTF-8, not JSON, not an object, or lacks a string ``status``. Sections that should be
    objects but are null or another type are replaced by ``{}`` (with a warning), so callers
    can use ``summary["metrics"].get(...)`` safely on what they get back."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        warn(f"skipping {path}: cannot read it ({exc.strerror or exc})")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        warn(f"skipping {path}: not a text file (binary or corrupt)")
        return None
    try:
        data = json.loads(text)
    except ValueError as exc:
        reason = "empty" if not text.strip() else f"not valid JSON ({exc})"
        warn(f"skipping {path}: {reason}")
        return None
    if not isinstance(data, dict):
        warn(f"skipping {path}: holds a JSON {type(data).__name__}, not an object")
        return None
    if not isinstance(data.get("status"), str):
        warn(f"skipping {path}: no 'status' field (not a sparse-run summary?)")
        return None
    for key in SECTIONS:
        if key in data and not isinstance(data[key], dict):
            warn(f"{path}: section '{key}' is {json.dumps(data[key])[:40]}, not an object; "
                 "treated as empty")
            data[key] = {}
    return data
