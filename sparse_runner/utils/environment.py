"""What ran the numbers: the device's name and the software versions (summary.json and every
benchmark JSON record them the same way)."""
from __future__ import annotations

import platform
from pathlib import Path

import torch

from .. import __version__
from .memphase import PHASES


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "sparse_runner": __version__, "cuda": str(torch.version.cuda)}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{cpu_model()} x{torch.get_num_threads()} threads"


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory of this process so far: resident set (MB), per phase of the run where
    Linux reports it (memphase.py), and, on CUDA, allocated tensors."""
    out: dict[str, float] = {}
    try:
        import resource

        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):  # not on every platform
        pass
    phases = PHASES.summary()   # per phase: setup, steady_step, update_step, between_steps
    if phases:
        out["peak_rss_mb"] = round(max(out.get("peak_rss_mb", 0.0), PHASES.overall), 1)
        out["phases"] = {k: {"peak_rss_mb": v} for k, v in phases.items()}
    if device.type == "cuda" and torch.cuda.is_available():
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
