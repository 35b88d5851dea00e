"""Packed bool masks (sparsity/bitmask.py): lossless, counts and unions as bool masks do."""
from __future__ import annotations

import pytest
import torch

from sparse_runner.sparsity import bitmask


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5, 3, 3), (17, 33)])
def test_pack_round_trips_counts_and_ors(shape):
    g = torch.Generator().manual_seed(sum(shape))
    a, b = (torch.rand(shape, generator=g) < 0.3 for _ in range(2))
    pa, pb = bitmask.pack(a), bitmask.pack(b)
    assert pa.dtype == torch.uint8 and pa.numel() == -(-a.numel() // 8)
    assert torch.equal(bitmask.unpack(pa, shape), a)
    assert bitmask.count(pa) == int(a.sum())
    assert torch.equal(bitmask.unpack(pa | pb, shape), a | b)
    assert bitmask.count(bitmask.pack(torch.ones(shape, dtype=torch.bool))) == a.numel()
