"""Shared data plumbing: the dataset spec, device-resident tensor loader, batched augmentation.

Small datasets (digits, CIFAR) live as one tensor on the training device and are augmented a
batch at a time, so the loader is never the bottleneck (airbench's approach). Every random
choice (epoch order, crop offsets, flips) comes from a generator seeded by (seed, epoch, batch),
so any batch can be regenerated exactly: that is what makes mid-epoch resume bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor

from .shard import check_shardable, num_batches, rank_key, rank_slice

MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64 chain); stable across processes."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & MASK64)) & MASK64
        h = (h + 0x9E3779B97F4A7C15) & MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(*values))


@dataclass(frozen=True)
class DataSpec:
    """What the model needs to know about the data."""

    name: str
    in_channels: int
    num_classes: int  # classes, or the vocabulary size of a text dataset
    image_size: int  # height == width for every image dataset we ship; 0 for text and signals
    kind: str = "image"  # "image" | "text" | "signal" (1-D, [C, L]): which models can take it
    seq_len: int = 0  # text: the window (block_size) each sample holds; signal: its length L
    task: str = "classification"  # the tasks/ registry name: loss, metrics, FLOP unit

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, as the FLOP trace feeds it."""
        if self.kind == "text":
            return (self.seq_len,)
        if self.kind == "signal":
            return (self.in_channels, self.seq_len)
        return (self.in_channels, self.image_size, self.image_size)


class Loader(Protocol):
    """Iterable over (x, y) batches on the training device, reproducible per (epoch, batch)."""

    batch_size: int

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]: ...

    def shard(self, rank: int, world: int) -> None:
        """Yield only rank ``rank``'s slice of each global batch from now on (data/shard.py)."""


@dataclass
class Data:
    spec: DataSpec
    train: Loader
    test: Loader
    num_train: int
    num_test: int
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Augment:
    """Batched augmentation: zero-pad + random crop and optional horizontal flip.

    The random choices are drawn on the CPU (:meth:`draw`, from the batch's generator) and
    applied on the data's device (:meth:`apply`); the loader draws a whole epoch at once and
    moves it in one copy, so a training step makes no host transfer and no sync.
    """

    pad: int = 0
    flip: bool = False

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        """int64 [3, n] rows (crop offset y, crop offset x, flip 0/1), in the historical order."""
        zeros = torch.zeros(n, dtype=torch.long)
        oy = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen) if self.pad else zeros
        ox = torch.randint(0, 2 * self.pad + 1, (n,), generator=gen) if self.pad else zeros
        flip = (torch.rand(n, generator=gen) < 0.5).long() if self.flip else zeros
        return torch.stack([oy, ox, flip])

    def apply(self, x: Tensor, params: Tensor) -> Tensor:
        """Crop/flip ``x`` [n, c, h, w] by ``params`` [3, n] (on x's device)."""
        n, _, h, w = x.shape
        if self.pad:
            p = self.pad
            xp = torch.nn.functional.pad(x, (p, p, p, p))
            rows = (params[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (params[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            batch = torch.arange(n, device=x.device)[:, None, None, None]
            chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = xp[batch, chans, rows, cols]
        if self.flip:
            x = torch.where(params[2].bool()[:, None, None, None], x.flip(3), x)
        return x

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        return self.apply(x, self.draw(x.shape[0], gen).to(x.device))


class TensorLoader:
    """Device-resident dataset; scales to [0, 1], augments and normalises per batch.

    ``images`` may be uint8 (0..255, kept as uint8 on the device: 4x less memory than floats,
    full CIFAR is 150 MB) or floats already in [0, 1]. ``drop_last`` applies to training so
    every optimizer step sees a full batch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        shuffle: bool,
        drop_last: bool,
        augment: Augment | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.scale = 1.0 / 255 if images.dtype == torch.uint8 else 1.0
        self.images = images.to(device) if self.scale != 1.0 else images.to(device, torch.float32)
        self.labels = labels.to(device, torch.long)
        self.batch_size = int(batch_size)
        per_channel = (1, -1, *[1] * (images.dim() - 2))   # [1, C, 1, 1] images, [1, C, 1] signals
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(per_channel)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(per_channel)
        self.seed, self.shuffle, self.drop_last, self.augment = seed, shuffle, drop_last, augment
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> None:
        """Serve rank ``rank``'s slice of every global batch of ``world`` ranks (data/shard.py)."""
        check_shardable(self.images.shape[0], self.batch_size, world, self.drop_last,
                        "training" if self.drop_last else "test")
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return num_batches(self.images.shape[0], self.batch_size, self.world, self.drop_last)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.images.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=generator(self.seed, epoch)).to(self.images.device)
        else:
            order = torch.arange(n, device=self.images.device)
        params = self._epoch_params(epoch, start)
        p0 = 0
        for b in range(start, len(self)):
            idx = order[rank_slice(b, self.batch_size, self.rank, self.world, n)]
            if idx.numel() == 0:  # a ragged last test batch may leave a rank nothing
                break
            x = self.images.index_select(0, idx).float()
            if self.scale != 1.0:
                x.mul_(self.scale)
            if self.augment is not None:
                x = self.augment.apply(x, params[:, p0 : p0 + idx.shape[0]])
            p0 += idx.shape[0]
            yield (x - self.mean) / self.std, self.labels.index_select(0, idx)

    def _epoch_params(self, epoch: int, start: int) -> Tensor:
        """The augmentation draws of batches ``start..`` of an epoch, in one host-to-device
        copy (pinned, asynchronous on a GPU): the same values as drawing per batch."""
        if self.augment is None:
            return torch.zeros(3, 0, dtype=torch.long)
        n = self.images.shape[0]
        rows = [rank_slice(b, self.batch_size, self.rank, self.world, n)
                for b in range(start, len(self))]
        key = rank_key(self.rank, self.world)   # () for one process: its draws are unchanged
        draws = [self.augment.draw(r.stop - r.start, generator(self.seed, epoch, b, 1, *key))
                 for b, r in zip(range(start, len(self)), rows)]
        flat = torch.cat(draws, 1) if draws else torch.zeros(3, 0, dtype=torch.long)
        cuda = self.images.device.type == "cuda"
        return (flat.pin_memory() if cuda else flat).to(self.images.device, non_blocking=cuda)
