"""Build (once, cached) and load the compiled constant fan-in kernels, or fall back.

The sources ship in the wheel as ``sparse_runner.csrc``. On first use per device type
(``ensure("cpu")`` / ``ensure("cuda")``, called by ``SparseLinear`` and ``cfi_linear``) they are
compiled with torch.utils.cpp_extension + ninja into the torch extensions cache and loaded
as a plain shared library that registers CPU/CUDA kernels for the ``sparse_run::`` operators.
The build directory name carries a hash of the sources, flags and torch version, so an
edit or an upgrade rebuilds and a cached build loads in milliseconds. If the build cannot
happen (no C++ compiler, no ninja, no nvcc, a compile error) or is switched off, the
operators keep their pure-PyTorch reference kernels and one warning per device type says
why: results are identical, only slower.

Environment:
  SPARSE_RUN_NO_EXT=1 | cpu | cuda   do not build/load (all, only CPU, only CUDA)
  SPARSE_RUN_BUILD_VERBOSE=1         show the compiler output
  TORCH_EXTENSIONS_DIR               cache root (default: torch's, under the temp dir)
  CXX, CUDA_HOME, MAX_JOBS, TORCH_CUDA_ARCH_LIST   as for torch.utils.cpp_extension

Ahead of time (e.g. in a Docker image, or before a job on a cluster):
  python -m sparse_runner.kernels            # CPU kernels
  python -m sparse_runner.kernels --cuda     # CPU and CUDA kernels
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import importlib.resources
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

# device type -> (translation units, headers they include): all of them are hashed
_SOURCES = {"cpu": (("cfi_cpu.cpp", "sconv_cpu.cpp"),
                    ("cfi_kernels.h", "cfi_packed.h", "cfi_checks.h", "cfi_cpu_util.h",
                     "cpu_vec.h", "cpu_isa.h", "sconv_kernels.h", "sconv_geom.h")),
            "cuda": (("cfi_cuda.cpp", "cfi_cuda.cu"), ("cfi_cuda.h", "cfi_checks.h"))}
_CFLAGS = ("-O3", "-fopenmp", "-Wno-psabi")
_CUDA_CFLAGS = ("-O3", "-std=c++17")

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


def _ext_name(device_type: str, flags: tuple[str, ...]) -> str:
    """Name unique to sources, flags, torch and (CUDA) target architectures."""
    h = hashlib.sha256(torch.__version__.encode() + repr(flags).encode())
    if device_type == "cuda":
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or repr(
            [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())])
        h.update(archs.encode())
    for name in sum(_SOURCES[device_type], ()):
        h.update(name.encode() + (source_dir() / name).read_bytes())
    return f"sparse_run_{device_type}_{h.hexdigest()[:12]}"


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


def _missing_tool(device_type: str) -> str | None:
    cpp_extension = _cpp_extension()

    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        return f"no C++ compiler found ({cxx!r} is not on PATH; set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    if device_type == "cuda" and _cuda_home() is None:
        return "nvcc was not found (install the CUDA toolkit or set CUDA_HOME)"
    return None


def _cuda_home() -> str | None:
    """A CUDA toolkit root with nvcc and headers; fixes torch's guess when it points at the
    parent of a wrapper script (e.g. /usr/local/bin/nvcc -> CUDA_HOME=/usr/local)."""
    cpp_extension = _cpp_extension()

    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  cpp_extension.CUDA_HOME, "/usr/local/cuda",
                  str(Path(os.path.realpath(nvcc)).parent.parent) if nvcc else None]
    for home in candidates:
        if home and (Path(home) / "bin" / "nvcc").exists() and \
                (Path(home) / "include" / "cuda_runtime.h").exists():
            cpp_extension.CUDA_HOME = home  # what cpp_extension builds with
            return home
    return None


def _first_error(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln.lower()]
    return (errors or lines or [type(exc).__name__])[0][:300]


def compile_extension(device_type: str, verbose: bool = False) -> Path:
    """Build (if not cached) and load the kernels for ``device_type``; return the library path.

    Raises on any failure; :func:`ensure` turns failures into the reference fallback.
    """
    cpp_extension = _cpp_extension()

    cuda = device_type == "cuda"
    sources = _SOURCES[device_type][0]
    name = _ext_name(device_type, _CFLAGS + (_CUDA_CFLAGS if cuda else ()))
    build_dir = _build_root() / name
    lib = build_dir / f"{name}.so"
    if lib.exists() and not (build_dir / "lock").exists():
        torch.ops.load_library(str(lib))
        return lib
    build_dir.mkdir(parents=True, exist_ok=True)
    src = source_dir()
    cpp_extension.load(
        name=name,
        sources=[str(src / s) for s in sources],
        extra_cflags=list(_CFLAGS),
        extra_cuda_cflags=list(_CUDA_CFLAGS) if cuda else None,
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[str(src)],
        build_directory=str(build_dir),
        with_cuda=cuda,
        is_python_module=False,
        verbose=verbose,
    )
    return lib


def ensure(device_type: str) -> str:
    """Load the compiled kernels for ``device_type`` once; return "extension" or "reference..."."""
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
                  else _missing_tool(device_type))
        if reason is None:
            try:
                compile_extension(device_type, os.environ.get("SPARSE_RUN_BUILD_VERBOSE") == "1")
                _status[device_type] = "extension"
                return "extension"
            except Exception as exc:  # noqa: BLE001 (any build failure means: fall back)
                reason = f"the build failed ({_first_error(exc)})"
        _status[device_type] = f"reference: {reason}"
        warnings.warn(
            f"sparse_run: the compiled constant fan-in kernels are not available on "
            f"{device_type} because {reason}; using the pure-PyTorch reference "
            f"implementation instead (same results, no speedup over dense). To build them: "
            f"python -m sparse_runner.kernels{' --cuda' if device_type == 'cuda' else ''}",
            RuntimeWarning, stacklevel=3)
        return _status[device_type]


def status() -> dict[str, str]:
    """What each device type uses so far, e.g. {"cpu": "extension (avx512)"}."""
    out = dict(_status)
    if out.get("cpu") == "extension":
        out["cpu"] = f"extension ({torch.ops.sparse_run_cpu.isa()})"
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m sparse_runner.kernels [--cuda] [--verbose]``: build ahead of time."""
    parser = argparse.ArgumentParser(prog="python -m sparse_runner.kernels",
                                     description="Build the sparse_run kernels into the cache.")
    parser.add_argument("--cuda", action="store_true", help="also build the CUDA kernels")
    parser.add_argument("--verbose", action="store_true", help="show compiler output")
    args = parser.parse_args(argv)
    from . import ops, sconv_ops  # noqa: F401  (define the schemas the library registers into)

    for device_type in ("cpu", "cuda") if args.cuda else ("cpu",):
        reason = _missing_tool(device_type)
        if reason:
            print(f"cannot build the {device_type} kernels: {reason}", file=sys.stderr)
            return 1
        print(f"{device_type}: {compile_extension(device_type, args.verbose)}")
    return 0
