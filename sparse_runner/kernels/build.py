"""Build (once, cached) and load the compiled constant fan-in kernels, or fall back.

CPU: the C++ sources ship in the wheel as ``sparse_runner.csrc``. On first use
(``ensure("cpu")``, called by ``SparseLinear`` and ``cfi_linear``) they are compiled with
torch.utils.cpp_extension + ninja into the torch extensions cache and loaded as a plain shared
library that registers CPU kernels for the ``sparse_run::`` operators. The build directory name
carries a hash of the sources, flags and torch version only (nothing of the machine it runs
on, so an ahead-of-time build is found at run time); a cached build loads in milliseconds.

CUDA: the kernels are Triton (triton_cfi.py), JIT-compiled by Triton for the GPU at hand on
first call (its own cache, ~/.triton); ``ensure("cuda")`` registers them. No nvcc is needed.

If a build cannot happen (no C++ compiler, no ninja, no triton, a compile error) or is
switched off, the operators keep their pure-PyTorch fallback (fallback.py) and one warning per
device type says why: results are identical, only slower.

Environment:
  SPARSE_RUN_NO_EXT=1 | cpu | cuda   do not build/load (all, only CPU, only CUDA)
  SPARSE_RUN_BUILD_VERBOSE=1         show the compiler output
  TORCH_EXTENSIONS_DIR               cache root (default: torch's, under the temp dir)
  CXX, MAX_JOBS                      as for torch.utils.cpp_extension

Ahead of time (e.g. in a Docker image, or before a job on a cluster):
  python -m sparse_runner.kernels            # CPU kernels
  python -m sparse_runner.kernels --cuda     # and check that the Triton kernels compile
                                             # for sm_80/sm_90 (works without a GPU)
"""
from __future__ import annotations

import hashlib
import logging
import importlib.resources
import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

# (translation units, headers they include): all of them are hashed
_SOURCES = (("cfi_cpu.cpp", "sconv_cpu.cpp"),
            ("cfi_kernels.h", "cfi_packed.h", "cfi_checks.h", "cfi_cpu_util.h", "cpu_vec.h",
             "cpu_isa.h", "cpu_transpose.h", "sconv_kernels.h", "sconv_geom.h",
             "sconv_layout.h"))
_CFLAGS = ("-O3", "-fopenmp", "-Wno-psabi")

_lock = threading.Lock()
_status: dict[str, str] = {}  # device type -> "extension" | "reference: <why>"


def source_dir() -> Path:
    """Directory of the C++/CUDA sources: the ``sparse_runner.csrc`` package of a wheel or an
    editable install, else ``csrc/`` of a source checkout that was never installed."""
    try:
        return Path(str(importlib.resources.files("sparse_runner.csrc")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "csrc"


def _disabled(device_type: str) -> bool:
    flag = os.environ.get("SPARSE_RUN_NO_EXT", "").strip().lower()
    return flag in ("1", "true", "yes", "all") or flag == device_type


def _ext_name(flags: tuple[str, ...]) -> str:
    """Name unique to sources, flags and torch: the same at build time and at run time (no
    device, architecture or environment variable enters it)."""
    h = hashlib.sha256(torch.__version__.encode() + repr(flags).encode())
    for name in sum(_SOURCES, ()):
        h.update(name.encode() + (source_dir() / name).read_bytes())
    return f"sparse_run_cpu_{h.hexdigest()[:12]}"


def _cpp_extension() -> Any:
    """torch.utils.cpp_extension, imported without its "No CUDA runtime is found" log line:
    expected on CPU-only machines, where the CUDA build reports its own reason to fall back."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def _build_root() -> Path:
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR")
                or _cpp_extension().get_default_build_root()) / "sparse_run"


def missing_tool(device_type: str) -> str | None:
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed (pip install triton)"
        return None
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler found ({cxx!r} is not on PATH; set CXX)"
    if not _cpp_extension().is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def _first_error(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    return (errors or lines or [type(exc).__name__])[0][:300]


STALE_LOCK_S = 600.0  # no build of the CPU kernels takes this long: a killed build's lock


def _build_in_progress(lock: Path) -> bool:
    """Whether another process is building now; a lock left by a killed build (older than
    STALE_LOCK_S) is removed, else every later process would wait on it and rebuild."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < STALE_LOCK_S:
        return True
    lock.unlink(missing_ok=True)
    return False


def compile_extension(verbose: bool = False) -> Path:
    """Build (if not cached) and load the CPU kernels; return the library path.

    Raises on any failure; :func:`ensure` turns failures into the reference fallback.
    """
    cpp_extension = _cpp_extension()
    name = _ext_name(_CFLAGS)
    build_dir = _build_root() / name
    lib = build_dir / f"{name}.so"
    if lib.exists() and not _build_in_progress(build_dir / "lock"):
        torch.ops.load_library(str(lib))
        return lib
    build_dir.mkdir(parents=True, exist_ok=True)
    src = source_dir()
    cpp_extension.load(
        name=name,
        sources=[str(src / s) for s in _SOURCES[0]],
        extra_cflags=list(_CFLAGS),
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(src)],
        build_directory=str(build_dir),
        with_cuda=False,
        is_python_module=False,
        verbose=verbose,
    )
    return lib


_LOADERS: dict[str, Callable[[], None]] = {}  # device type -> registers its compiled kernels


def register_loader(device_type: str, load: Callable[[], None]) -> None:
    """Let the module that defines the operators say how their kernels for ``device_type``
    are registered (ops.py does it for CUDA), so this module never imports the operators."""
    _LOADERS[device_type] = load


def _load(device_type: str) -> str:
    """Build/load the kernels of ``device_type``; return its status ("extension", "triton")."""
    if device_type == "cuda":
        _LOADERS["cuda"]()
        return "triton"
    compile_extension(os.environ.get("SPARSE_RUN_BUILD_VERBOSE") == "1")
    return "extension"


def ensure(device_type: str) -> str:
    """Load the kernels for ``device_type`` once; "extension" (CPU), "triton" (CUDA) or
    "reference: <why>"."""
    status = _status.get(device_type)
    if status is not None:
        return status
    with _lock:
        if device_type in _status:
            return _status[device_type]
        if device_type not in ("cpu", "cuda"):
            _status[device_type] = "reference: no compiled kernels for this device type"
            return _status[device_type]
        reason = ("SPARSE_RUN_NO_EXT is set" if _disabled(device_type)
                  else missing_tool(device_type))
        if reason is None:
            try:
                _status[device_type] = _load(device_type)
                return _status[device_type]
            except Exception as exc:  # noqa: BLE001 (any build failure means: fall back)
                reason = f"the build failed ({_first_error(exc)})"
        _status[device_type] = f"reference: {reason}"
        warnings.warn(
            f"sparse_run: the compiled constant fan-in kernels are not available on "
            f"{device_type} because {reason}; using the pure-PyTorch fallback "
            f"instead (gathers at the nonzeros: same results, no speedup over dense). To build them: "
            f"python -m sparse_runner.kernels{' --cuda' if device_type == 'cuda' else ''}",
            RuntimeWarning, stacklevel=3)
        return _status[device_type]


def status() -> dict[str, str]:
    """What each device type uses so far, e.g. {"cpu": "extension (avx512)"}."""
    out = dict(_status)
    if out.get("cpu") == "extension":
        out["cpu"] = f"extension ({torch.ops.sparse_run_cpu.isa()})"
    return out
