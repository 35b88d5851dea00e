"""gpu_check stage kernels: CUDA-event timings of our kernels vs cuBLAS and the masked path.

Each timed call gets its own inputs, rotated through enough copies that together exceed the
L2 cache twice over, so no call finds its operands in L2 from the previous one (a layer in a
network does not either). Medians of CUDA-event times. Also measured: the device's copy
bandwidth and bf16 matmul throughput, the ceilings the kernel numbers are read against.
The pure helpers (rotation count, medians, ratios) are tested on the CPU.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ._gpu_stage import Check

SPARSITIES = (0.9, 0.95, 0.99)
BATCHES = (1, 16, 256, 4096)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYER = (2048, 2048)  # (n_in, n_out): the training bench's layer


def rotations(bytes_per_set: int, l2_bytes: int, cap: int = 64) -> int:
    """Input copies to cycle through so that consecutive calls never share L2 contents."""
    if bytes_per_set <= 0:
        return 1
    return max(2, min(cap, -(-2 * l2_bytes // bytes_per_set) + 1))


def median_ms(times: Sequence[float]) -> float:
    if not times:
        raise ValueError("no timings")
    return float(statistics.median(times))


def cuda_time(fn: Callable[..., object], sets: Sequence[tuple], reps: int = 25,
              warmup: int = 3) -> float:
    """Median ms of ``fn(*sets[i % len(sets)])`` over ``reps`` calls, timed by CUDA events."""
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for i, (start, end) in enumerate(events):
        args = sets[(i + warmup) % len(sets)]
        start.record()
        fn(*args)
        end.record()
    torch.cuda.synchronize()
    return median_ms([s.elapsed_time(e) for s, e in events])


def _l2() -> int:
    return int(torch.cuda.get_device_properties(0).L2_cache_size)


def ceilings() -> Iterator[Check]:
    """Copy bandwidth (GB/s, read + write) and bf16 matmul throughput (TFLOP/s)."""
    n = 1 << 28  # 1 GiB of fp32
    a, b = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    ms = cuda_time(lambda: b.copy_(a), [()], reps=10)
    yield Check("kernels", "ceiling copy bandwidth", "info", round(2 * 4 * n / ms / 1e6, 1),
                " GB/s")
    del a, b
    m = 8192
    x, w = (torch.randn(m, m, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = cuda_time(lambda: x @ w, [()], reps=10)
    yield Check("kernels", "ceiling bf16 matmul", "info", round(2 * m**3 / ms / 1e9, 1),
                " TFLOP/s", f"{m}^3")


def make_sets(batch: int, s: float, dtype: torch.dtype, layer: tuple[int, int] = LAYER,
              device: str = "cuda", l2_bytes: int | None = None) -> list[tuple]:
    """Rotated (x, grad, W, mask, values, indices, t_index) sets for one configuration."""
    n_in, n_out = layer
    k = max(1, round((1 - s) * n_in))
    idx = torch.rand(n_out, n_in, device=device).argsort(1)[:, :k].sort(1).values.int()
    mask = torch.zeros(n_out, n_in, device=device, dtype=dtype).scatter_(1, idx.long(), 1)
    t = torch.ops.sparse_run.cfi_transpose_index(idx, n_in)
    elt = torch.finfo(dtype).bits // 8
    per_set = elt * (batch * (n_in + n_out) + n_out * n_in + n_out * k)
    out = []
    for _ in range(rotations(per_set, _l2() if l2_bytes is None else l2_bytes)):
        w = torch.randn(n_out, n_in, device=device, dtype=dtype) * mask
        out.append((torch.randn(batch, n_in, device=device, dtype=dtype),
                    torch.randn(batch, n_out, device=device, dtype=dtype), w, mask,
                    w.gather(1, idx.long()).contiguous(), idx, t))
    return out


def cases(n_in: int = LAYER[0]) -> dict[str, Callable[..., object]]:
    """The timed calls, each taking one set of :func:`make_sets`."""
    ops = torch.ops.sparse_run
    return {
        "dense fwd": lambda x, g, w, m, v, i, t: F.linear(x, w),
        "dense bwd_in": lambda x, g, w, m, v, i, t: g @ w,
        "dense bwd_w": lambda x, g, w, m, v, i, t: g.t() @ x,
        "masked fwd": lambda x, g, w, m, v, i, t: F.linear(x, w * m),
        "ours fwd": lambda x, g, w, m, v, i, t: ops.cfi_forward(x, v, i, None, t),
        "ours bwd_in": lambda x, g, w, m, v, i, t: ops.cfi_backward_input(g, v, i, n_in, t),
        "ours bwd_w": lambda x, g, w, m, v, i, t: ops.cfi_backward_weight(g, x, i),
    }


def ratio(ours_ms: float, dense_ms: float) -> float:
    """Time relative to cuBLAS (below 1: faster than dense)."""
    return round(ours_ms / dense_ms, 3) if dense_ms > 0 else float("inf")


def kernels(args: argparse.Namespace) -> Iterator[Check]:
    """Ceilings, then every (s, dtype, batch): 7 timings, ratios to the dense kernel."""
    from ..kernels import build as kbuild

    kbuild.ensure("cuda")
    yield from ceilings()
    calls = cases()
    for s in SPARSITIES:
        for dname, dtype in DTYPES.items():
            for batch in BATCHES:
                sets = make_sets(batch, s, dtype)
                ms = {name: cuda_time(fn, sets) for name, fn in calls.items()}
                label = f"s={s} {dname} b={batch}"
                for name in ("masked fwd", "ours fwd", "ours bwd_in", "ours bwd_w"):
                    dense = ms["dense " + name.split()[1]]
                    yield Check("kernels", f"{name} {label}", "info", round(ms[name], 4), " ms",
                                f"{ratio(ms[name], dense)}x cuBLAS ({dense:.4f} ms)",
                                {"ms": ms[name], "dense_ms": dense, "s": s, "dtype": dname,
                                 "batch": batch})
                del sets
