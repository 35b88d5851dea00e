"""gpu_check stages env, build and correct (see gpu_check.py).

``correct`` runs the ``sparse_run::cfi_*`` operators on the GPU (the Triton kernels) against
the float64 reference on the CPU, for every kernel, dtype and the shapes that broke or could
break a kernel: batch 0/1/15/16/17/33 (both layouts, partial tiles), rows not a multiple of
32, k = 1 and k = n_in, and a 2.1M-row batch (a convolution through im2col) that overflowed
the old CUDA grid. :func:`compare` is the same bound the CPU tests use.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import shutil
import subprocess
import time
from typing import Iterator

import torch

from ._gpu_stage import Check, compare

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
SMALL_SHAPES = [(0, 20, 7, 3), (1, 37, 19, 5), (15, 24, 33, 24), (16, 40, 45, 1),
                (17, 30, 70, 9), (33, 50, 37, 50)]
LARGE_SHAPES = [(256, 2048, 2048, 205), (4096, 512, 256, 64), (1024, 3072, 768, 307)]
IM2COL = (2_097_153, 32, 16, 8)  # > 65535 * 32 rows: the old grid.y limit


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except Exception:  # noqa: BLE001 (absent or broken: reported as such)
        return None


def _tool_version(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    lines = [ln for ln in (r.stdout or r.stderr).splitlines() if ln.strip()]
    return lines[-1].strip()[:120] if lines else None


def env(args: argparse.Namespace) -> Iterator[Check]:
    """Device, driver and versions (info rows become results.json's environment)."""
    p = torch.cuda.get_device_properties(0)
    yield Check("env", "device", "info", torch.cuda.get_device_name(0))
    yield Check("env", "capability", "info", "sm_%d%d" % torch.cuda.get_device_capability(0))
    yield Check("env", "sm_count", "info", p.multi_processor_count)
    yield Check("env", "memory_gib", "info", round(p.total_memory / 2**30, 1))
    yield Check("env", "l2_mib", "info", round(p.L2_cache_size / 2**20, 1))
    yield Check("env", "driver", "info", _tool_version(
        ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    yield Check("env", "torch", "info", torch.__version__)
    yield Check("env", "cuda", "info", torch.version.cuda)
    yield Check("env", "python", "info", platform.python_version())
    yield Check("env", "nvcc", "info", _tool_version(["nvcc", "--version"]) or "absent")
    yield Check("env", "compute_sanitizer", "info",
                _tool_version(["compute-sanitizer", "--version"]) or "absent")
    for module, needed in (("triton", True), ("hydra", True), ("omegaconf", True),
                           ("wandb", False)):
        v = _version(module)
        yield Check("env", module, "info" if v or not needed else "fail", v or "absent",
                    detail="" if v else "install it from .whl/ (README, GPU section)")


def _sync_time(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def build(args: argparse.Namespace) -> Iterator[Check]:
    """CPU extension build time; Triton registration and JIT compile time per dtype."""
    from ..kernels import build as kbuild

    t0 = time.perf_counter()
    cpu = kbuild.ensure("cpu")
    yield Check("build", "cpu_extension", "ok" if cpu == "extension" else "skip",
                round(time.perf_counter() - t0, 1), " s", cpu if cpu != "extension" else "")
    cuda = kbuild.ensure("cuda")
    yield Check("build", "cuda_backend", "ok" if cuda == "triton" else "fail", cuda)
    ops = torch.ops.sparse_run
    for name, dtype in {**DTYPES, "fp16": torch.float16}.items():
        seconds = 0.0
        # both layouts and odd/aligned sizes: Triton specialises on strides and divisibility
        for shape in ((64, 96, 80, 12), (8, 37, 19, 5), (33, 50, 37, 50)):
            x, v, idx, gy, t = _problem(shape, dtype, "cuda")
            seconds += _sync_time(lambda: (ops.cfi_forward(x, v, idx, None),
                                           ops.cfi_backward_input(gy, v, idx, shape[1], t),
                                           ops.cfi_backward_weight(gy, x, idx)))
        yield Check("build", f"triton_jit_{name}", "ok", round(seconds, 2), " s",
                    "first calls of the 3 kernels, 3 shapes (compile + run)")


def _problem(shape, dtype, device, seed: int = 0):
    """x, values, indices, grad_out, t_index (inputs rounded to dtype)."""
    nb, n_in, n_out, k = shape
    g = torch.Generator().manual_seed(seed + nb % 1000)
    idx = torch.rand(n_out, n_in, generator=g).argsort(1)[:, :k].sort(1).values.int()
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    x, v, gy = r(nb, n_in), r(n_out, k), r(nb, n_out)
    idx = idx.to(device)
    t = torch.ops.sparse_run.cfi_transpose_index(idx, n_in)
    return x.to(device), v.to(device), idx, gy.to(device), t


def kernel_checks(shape, dtype_name: str, kernels=("forward", "backward_input",
                                                   "backward_weight"),
                  device: str = "cuda") -> Iterator[Check]:
    """One check per kernel of ``shape`` (batch, n_in, n_out, k) in ``dtype_name``."""
    from ..kernels import reference

    dtype = DTYPES[dtype_name]
    x, v, idx, gy, t = _problem(shape, dtype, device)
    ops = torch.ops.sparse_run
    d = lambda a: a.double().cpu()  # noqa: E731
    ci = idx.cpu()
    cases = {
        "forward": (lambda: ops.cfi_forward(x, v, idx, None, t),
                    lambda: reference.forward(d(x), d(v), ci, None), shape[3]),
        "backward_input": (lambda: ops.cfi_backward_input(gy, v, idx, shape[1], t),
                           lambda: reference.backward_input(d(gy), d(v), ci, shape[1]), shape[2]),
        "backward_weight": (lambda: ops.cfi_backward_weight(gy, x, idx),
                            lambda: reference.backward_weight(d(gy), d(x), ci), shape[0]),
    }
    label = "b{}_in{}_out{}_k{}".format(*shape)
    for name in kernels:
        run, oracle, terms = cases[name]
        ok, err = compare(run(), oracle(), dtype, terms)
        yield Check("correct", f"{name} {dtype_name} {label}", "ok" if ok else "fail", err,
                    detail="max abs error vs float64")


def correct(args: argparse.Namespace) -> Iterator[Check]:
    """Every kernel x dtype x shape against float64; the layer's autograd; the 2.1M-row grid."""
    from ..kernels import build as kbuild

    kbuild.ensure("cuda")
    shapes = SMALL_SHAPES if args.small else SMALL_SHAPES + LARGE_SHAPES
    for dtype_name in (("fp32", "bf16") if args.small else DTYPES):
        for shape in shapes:
            yield from kernel_checks(shape, dtype_name)
    if args.small:  # under compute-sanitizer: the sparse convolutions too (fp32, 4 shapes)
        from . import _gpu_sconv

        for case in _gpu_sconv.SMALL[1:5]:
            yield from _gpu_sconv.op_checks(case, "fp32", stage="correct")
        return
    yield from kernel_checks(IM2COL, "fp32", ("forward", "backward_weight"))
    yield layer_check()


def layer_check(device: str = "cuda") -> Check:
    """SparseLinear forward + backward on the GPU equals the dense float64 layer's."""
    from ..kernels import SparseLinear

    layer = SparseLinear(300, 70, 0.9, generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(33, 300, dtype=torch.float64, requires_grad=True)
    dense = torch.nn.functional.linear(x, layer.to_dense(), layer.bias)
    gx_want, gv_want = torch.autograd.grad(dense.square().sum(), (x, layer.values))
    gpu = layer.to(device)
    xg = x.detach().to(device).requires_grad_()
    y = gpu(xg)
    gx, gv = torch.autograd.grad(y.square().sum(), (xg, gpu.values))
    oks = [compare(a, b, torch.float64, 300)[0] for a, b in
           ((y, dense.detach()), (gx, gx_want), (gv, gv_want))]
    return Check("correct", "SparseLinear autograd fp64", "ok" if all(oks) else "fail",
                 detail="output, dx, dvalues vs dense float64")
