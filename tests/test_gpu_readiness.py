"""Fixes of the GPU review that a CPU can show: launch geometry, empty inputs, the build's
cache key, no host reads per call on devices, autocast dtypes."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from sparse_runner.kernels import SparseLinear, build, cfi_linear, reference
from sparse_runner.kernels.gpu_grid import (MAX_GRID_X, Blocks, cdiv, sddmm_split, spmm_grid,
                                            spmm_tile)

ops = torch.ops.sparse_run


def test_grid_is_one_dimensional_and_fits_im2col_batches():
    """2,097,121 rows (CIFAR batch 2048 through im2col) overflowed grid.y's 65535 before."""
    b = Blocks()
    rows = 2_097_121
    (n,) = spmm_grid(n_rows=64, nb=rows, blocks=b)
    assert n == 2 * cdiv(rows, 32) and cdiv(rows, 32) > 65535 and n <= MAX_GRID_X
    with pytest.raises(ValueError, match="grid limit"):
        spmm_grid(n_rows=2**20, nb=2**31, blocks=Blocks(rows=1, batch=1))


@pytest.mark.parametrize("n_rows,nb", [(1, 1), (33, 17), (70, 100), (5, 64)])
def test_program_ids_cover_every_tile_exactly_once(n_rows, nb):
    b = Blocks(rows=16, batch=16)
    (n,) = spmm_grid(n_rows, nb, b)
    tiles = [spmm_tile(pid, n_rows, b) for pid in range(n)]
    want = {(r, c) for r in range(0, n_rows, 16) for c in range(0, nb, 16)}
    assert len(tiles) == len(want) and set(tiles) == want


@pytest.mark.parametrize("nnz,nb", [(64 * 64, 4096), (2048 * 205, 256), (37, 1), (640, 33)])
def test_weight_gradient_splits_the_batch_to_fill_the_device(nnz, nb):
    b, target = Blocks(), 4 * 132
    s = sddmm_split(nnz, nb, b, target)
    b_tiles = cdiv(nb, b.batch)
    assert s.chunk % b.batch == 0 and (s.splits - 1) * s.chunk < nb <= s.splits * s.chunk
    assert s.grid[0] >= min(target, s.entry_tiles * b_tiles)  # as full as the work allows
    if nnz == 64 * 64:  # one block per output row (old CUDA) gave 64 blocks for 132 SMs
        assert s.splits > 1 and s.grid[0] >= target


def test_empty_operands():
    """0 rows, batch 0: shapes, not errors (the CUDA transpose called min() on nothing)."""
    i0, v0 = torch.zeros(0, 3, dtype=torch.int32), torch.zeros(0, 3)
    assert reference.transpose_index(i0, 5).tolist() == [0] * 6
    build.ensure("cpu")
    assert ops.cfi_transpose_index(i0, 5).tolist() == [0] * 6
    x = torch.randn(4, 5)
    assert ops.cfi_forward(x, v0, i0, None).shape == (4, 0)
    assert ops.cfi_backward_input(torch.zeros(4, 0), v0, i0, 5).abs().sum() == 0
    i = torch.tensor([[0, 2], [1, 4]], dtype=torch.int32)
    assert ops.cfi_forward(torch.zeros(0, 5), torch.ones(2, 2), i, None).shape == (0, 2)
    assert ops.cfi_backward_weight(torch.zeros(0, 2), torch.zeros(0, 5), i).abs().sum() == 0


def test_cache_key_does_not_depend_on_the_machine(monkeypatch):
    """An ahead-of-time build must be found at run time: no arch list or device in the key."""
    key = build._ext_name(build._CFLAGS)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert build._ext_name(build._CFLAGS) == key


def test_reference_reads_no_data_per_call_on_a_device():
    """On meta tensors any host read (int(indices.min()), a sync on a GPU) would raise."""
    dev = "meta"
    idx = torch.zeros(6, 3, dtype=torch.int32, device=dev)
    v, x, g = (torch.empty(*s, device=dev) for s in ((6, 3), (4, 10), (4, 6)))
    t = torch.empty(10 + 1 + 2 * 18, dtype=torch.int32, device=dev)
    assert reference.forward(x, v, idx, None, t).shape == (4, 6)
    assert reference.backward_input(g, v, idx, 10, t).shape == (4, 10)
    assert reference.backward_weight(g, x, idx).shape == (6, 3)


AUTOCAST_SCRIPT = """
import torch
from sparse_runner.kernels import SparseLinear, build, cfi_linear
layer = SparseLinear(16, 8, 0.5)
x = torch.randn(3, 16)
with torch.autocast("cpu", dtype=torch.bfloat16):
    a = cfi_linear(x, layer.values, layer.indices, layer.bias)
    b = cfi_linear(x.bfloat16(), layer.values, layer.indices, layer.bias)  # mixed dtypes
    c = layer(x)
    d = torch.nn.functional.linear(x, layer.to_dense(), layer.bias)
print(build.ensure("cpu").split(":")[0], a.dtype, b.dtype, c.dtype, d.dtype)
"""


@pytest.mark.parametrize("no_ext", ["", "1"], ids=["compiled", "reference"])
def test_autocast_dtype_is_the_same_on_both_paths(no_ext):
    r = subprocess.run([sys.executable, "-c", AUTOCAST_SCRIPT], capture_output=True, text=True,
                       env={**os.environ, "SPARSE_RUN_NO_EXT": no_ext}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    status, *dtypes = r.stdout.split()
    assert status == ("reference" if no_ext else "extension")
    assert dtypes == ["torch.bfloat16"] * 4


def test_fp16_autocast_on_cpu_computes_in_float32():
    layer = SparseLinear(16, 8, 0.5)
    x = torch.randn(3, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        y = cfi_linear(x, layer.values, layer.indices, layer.bias)
    assert y.dtype == torch.float16
    y.float().sum().backward()
    assert x.grad is not None and layer.values.grad.dtype == torch.float32


def test_a_killed_builds_lock_does_not_force_rebuilds(tmp_path):
    lock = tmp_path / "lock"
    assert not build._build_in_progress(lock)
    lock.touch()
    assert build._build_in_progress(lock) and lock.exists()  # a build running now
    old = time.time() - build.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    assert not build._build_in_progress(lock) and not lock.exists()
