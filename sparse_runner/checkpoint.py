"""Atomic checkpoints and complete RNG capture, so a resumed CPU run is bit-identical.

Everything saved is a tensor, a number, a string or a container of those, so checkpoints load
with ``torch.load(..., weights_only=True)``. Files are written to a temporary name and renamed
into place: a crash mid-write never leaves a half-written ``last.pt``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .errors import UserError

LAST, BEST = "last.pt", "best.pt"


def atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=float) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(dict(payload), f))


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` a file with ``src``'s bytes: a hard link where the file system
    allows it (checkpoints are replaced, never modified, so the two names stay independent)."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise UserError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}; "
                        "point resume= at another run or checkpoint") from None


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
