"""MaskManager on the GPU's hot paths: scale layouts follow the weights (channels_last), and
the density costs no count (no host sync) between mask changes."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sparse_runner.sparsity.masks import MaskManager


class Counts(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4))


def test_scales_take_the_channels_last_layout_of_their_weights():
    model = _model().to(memory_format=torch.channels_last)
    mm = MaskManager(model, ["0.weight", "1.weight"])
    mask = torch.rand(8, 8, 3, 3) < 0.3  # contiguous, as methods build them
    mm.set_masks({1: mask})
    p = mm.params[1]
    assert mm._scale_of(1).stride() == p.stride() and p.is_contiguous(memory_format=torch.channels_last)
    model(torch.randn(2, 3, 5, 5).to(memory_format=torch.channels_last)).sum().backward()
    assert p.grad.stride() == p.stride()
    want = p.grad * mask
    mm.mask_grads()
    assert torch.equal(p.grad, want) and (p[~mask] == 0).all()


def test_density_is_counted_once_per_mask_change():
    mm = MaskManager(_model(), ["0.weight", "1.weight", "3.weight"])
    mm.set_masks({0: torch.rand(8, 3, 3, 3) < 0.5})
    first = mm.density()
    with Counts() as c:
        assert mm.density() == first
    assert "count_nonzero" not in " ".join(c.ops)  # nothing recounted: no host read
    new = torch.zeros(8, 8, 3, 3, dtype=torch.bool)
    new[0, 0, 0, 0] = True
    mm.set_masks({1: new})
    with Counts() as c:
        d = mm.density()
    assert sum("count_nonzero" in op for op in c.ops) == 1 and d["1.weight"] == 1 / new.numel()
    mm.masks[2][0].fill_(False)  # an in-place change bumps the version: recounted
    assert mm.density()["3.weight"] == 1 - 8 / 32
