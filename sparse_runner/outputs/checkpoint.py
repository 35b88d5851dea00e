"""Atomic checkpoints and complete RNG capture, so a resumed CPU run is bit-identical.

Everything saved is a tensor, a number, a string or a container of those, so checkpoints load
with ``torch.load(..., weights_only=True)``. Files are written durably to a temporary name and
renamed into place (:mod:`fsio`): a crash mid-write never leaves a half-written ``last.pt``, and
a full or read-only disk is a one-line error with the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import fsio
from ..utils.errors import UserError
from .fsio import atomic_write

LAST, BEST = "last.pt", "best.pt"


def atomic_write_bytes(path: Path, write) -> None:
    """Durably replace ``path`` by what ``write(f)`` writes (see :func:`fsio.atomic_write`)."""
    atomic_write(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    fsio.atomic_write_json(path, obj)


def save(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(dict(payload), f), action="write the checkpoint")


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a file with ``src``'s bytes: a hard link where the file system
    allows it (checkpoints are replaced, never modified, so the two names stay independent)."""
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.link{fsio.TMP_SUFFIX}"
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsio.fsync_dir(dst.parent)
    except OSError as exc:
        fsio.unlink_quietly(tmp)
        raise fsio.io_error(exc, dst, "write the checkpoint") from None
    except BaseException:
        fsio.unlink_quietly(tmp)
        raise


def load(path: Path) -> dict[str, Any]:
    """A checkpoint's payload, loaded safely (tensors and plain values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise fsio.io_error(exc, path, "read the checkpoint") from None
    except Exception as exc:  # corrupt, truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {_why_unreadable(exc)}; point resume= "
                        "at another run directory or checkpoint") from None


def _why_unreadable(exc: Exception) -> str:
    # PyTorch's own text for these cases recommends weights_only=False, which would execute
    # arbitrary code from the file: never pass it on.
    text = str(exc)
    if "weights_only" in text or "Unsupported global" in text or "Unpickler" in text:
        return "it holds Python objects, not only tensors (not written by sparse-run)"
    return "not a PyTorch checkpoint, or a truncated or corrupt one"


def rng_state() -> dict[str, Any]:
    mt = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": {"key": mt[0], "pos": int(mt[2]), "has_gauss": int(mt[3]),
                  "cached": float(mt[4]), "keys": torch.from_numpy(mt[1].astype(np.int64))},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``auto`` = this run dir's last.pt if present, else a path."""
    if resume in (None, "", "none", "false", "False", "never"):
        return None
    if resume == "auto":
        found = run_dir / "checkpoints" / LAST
        return found if found.is_file() else None
    path = Path(str(resume)).expanduser()
    for candidate in (path, path / "checkpoints" / LAST, path / LAST):
        if candidate.is_file():
            return candidate
    raise UserError(f"resume={resume}: no checkpoint at {path} (looked for {path}/checkpoints/"
                    f"{LAST}); give a run directory or a .pt file")
