"""The device-resident loader makes no host transfer per step (one per epoch), and its
epoch-at-once augmentation draws equal the per-batch ones (resume stays bit-identical)."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sparse_runner.data.base import Augment, TensorLoader, generator


def _loader(device: str, n: int = 70) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TensorLoader(images, labels, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, seed=3,
                        shuffle=True, drop_last=False, augment=Augment(pad=2, flip=True),
                        device=device)


class HostOps(TorchDispatchMode):
    """Records every op that touches a CPU tensor while the data lives on another device."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = tree_leaves((args, kwargs, out))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in leaves):
            self.seen.append(str(func))
        return out


def test_steps_touch_no_host_tensor():
    """On the meta device any per-step CPU draw (and its copy to the device) shows up."""
    loader = _loader("meta", n=100)
    batches = loader.batches(epoch=1, start=1)
    next(batches)  # the epoch's setup: one draw of all augmentation parameters, one copy
    with HostOps() as mode:
        for _ in range(3):
            x, y = next(batches)
    assert x.device.type == "meta" and x.shape == (16, 3, 8, 8)
    assert mode.seen == [], mode.seen


def test_epoch_draws_equal_per_batch_draws():
    loader = _loader("cpu")
    order = torch.randperm(70, generator=generator(3, 2))
    for b, (x, _) in enumerate(loader.batches(epoch=2, start=0)):
        idx = order[b * 16: (b + 1) * 16]
        raw = loader.images.index_select(0, idx).float().mul_(loader.scale)
        want = loader.augment(raw, generator(3, 2, b, 1))
        assert torch.equal(x, (want - loader.mean) / loader.std)
    tail = list(loader.batches(epoch=2, start=3))
    assert len(tail) == 2 and torch.equal(tail[0][0], list(loader.batches(2))[3][0])
