"""ImageNet (or any ImageFolder tree), decoded by DataLoader workers.

Layout: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (torchvision's ImageFolder
layout, scanned with its rules; ``val`` must use class names from ``train``). ImageNet cannot
be downloaded automatically, so ``dataset.download=true`` explains how to obtain it.

Augmentation is torchvision's standard recipe (train: RandomResizedCrop + flip; val: resize to
``image_size / 0.875`` then centre crop). Workers return uint8 tensors; conversion to float and
normalisation happen on the training device (4x less host-to-device traffic). Every image's
augmentation is seeded by a number drawn per (seed, epoch, position), so a batch is the same
whichever worker decodes it and ``batches(epoch, start)`` resumes bit-identically without
decoding the skipped batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..utils.errors import UserError
from .base import Data, DataSpec, generator
from .options import data_root, int_option, subset_indices
from .shard import check_shardable, num_batches, rank_slice

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875  # val resize = image_size / 0.875: 256 for 224, as in torchvision's recipe

HOW_TO_GET = (
    "ImageNet cannot be downloaded automatically (its licence requires signing up at "
    "https://image-net.org): download the ILSVRC2012 train and val archives, lay them out as "
    "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (e.g. with the valprep.sh script "
    "for val), then run with dataset.root=<root> dataset.download=false")


def open_rgb(path: str) -> Any:
    """Decode an image as RGB, or raise a one-line UserError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or "
                        "replace the file") from None


class _Images(Dataset):
    """Decodes one image per key ``(index, seed)``; the seed fixes its random augmentation.

    An unreadable image comes back as a blank image with label ``-1 - index`` and the main
    process raises the error: an exception raised in a worker would reach the user wrapped in
    the worker's traceback instead of as one line.
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Any], Tensor],
                 size: int) -> None:
        self.samples, self.transform = samples, transform
        self.blank = torch.zeros(3, size, size, dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        index, seed = key
        path, target = self.samples[index]
        try:
            rgb = open_rgb(path)
        except UserError:
            return self.blank, -1 - index
        with torch.random.fork_rng(devices=[]):  # never disturb the caller's RNG
            torch.manual_seed(seed)
            return self.transform(rgb), target

    def raise_unreadable(self, labels: Tensor) -> None:
        """Raise the UserError of the first unreadable image flagged in ``labels``."""
        path = self.samples[-1 - int(labels.min())][0]
        open_rgb(path)
        raise UserError(f"cannot read image {path} in a DataLoader worker; remove or replace "
                        "the file")  # it decoded here: a transient I/O error


@dataclass(frozen=True)
class _EpochPlan:
    """DataLoader batch sampler: the ``[(index, seed), ...]`` batches of one pass, from batch
    ``start`` to ``stop``, built lazily in the main process; with several ranks, this rank's
    slice of each global batch (data/shard.py)."""

    order: Tensor
    seeds: Tensor
    batch_size: int
    start: int
    stop: int
    rank: int = 0
    world: int = 1

    def _parts(self) -> Iterator[slice]:
        n = self.order.numel()
        for b in range(self.start, self.stop):
            part = rank_slice(b, self.batch_size, self.rank, self.world, n)
            if part.stop > part.start:
                yield part

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for part in self._parts():
            yield list(zip(self.order[part].tolist(), self.seeds[part].tolist()))

    def __len__(self) -> int:
        return sum(1 for _ in self._parts())


class FolderLoader:
    """Worker-decoded image batches with the ``Loader`` protocol of ``TensorLoader``.

    Each pass gets its own DataLoader (workers start per pass, negligible next to an ImageNet
    epoch) and shuts its workers down as soon as the pass ends, is abandoned or fails. Workers
    left to the garbage collector, e.g. when an error's traceback holds this frame, stall for
    seconds on shutdown.
    """

    def __init__(self, dataset: _Images, *, batch_size: int, seed: int, shuffle: bool,
                 drop_last: bool, device: torch.device, num_workers: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), seed
        self.shuffle, self.drop_last, self.device = shuffle, drop_last, torch.device(device)
        self.num_workers = num_workers
        self.rank, self.world = 0, 1
        # normalise uint8 directly: (x - 255 mean) / (255 std)
        self.mean = torch.tensor(MEAN, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(STD, device=self.device).view(1, -1, 1, 1) * 255

    def shard(self, rank: int, world: int) -> None:
        """Serve rank ``rank``'s slice of every global batch of ``world`` ranks (data/shard.py);
        each image keeps the augmentation seed of its position, whichever rank decodes it."""
        check_shardable(len(self.dataset), self.batch_size, world, self.drop_last,
                        "training" if self.drop_last else "validation")
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return num_batches(len(self.dataset), self.batch_size, self.world, self.drop_last)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.dataset)
        gen = generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2**62, (n,), generator=gen)
        plan = _EpochPlan(order, seeds, self.batch_size, start, len(self), self.rank, self.world)
        # a private generator: DataLoader draws worker seeds from it (unused: every image has
        # its own seed) instead of from the global RNG, which training and resume depend on
        loader = iter(DataLoader(self.dataset, batch_sampler=plan, num_workers=self.num_workers,
                                 pin_memory=self.device.type == "cuda",
                                 generator=torch.Generator().manual_seed(self.seed)))
        try:
            for x, y in loader:
                if y.min() < 0:
                    self.dataset.raise_unreadable(y)
                x = x.to(self.device, non_blocking=True).float()
                yield (x - self.mean) / self.std, y.to(self.device, non_blocking=True)
        finally:
            del loader  # the last reference: its workers shut down here


def _scan(root: Path, split: str, class_to_idx: dict[str, int] | None
          ) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Samples of ``root/split`` by ImageFolder's rules; ``class_to_idx`` pins val to train's
    labels (ImageFolder alone would renumber a val split that lacks some classes)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    folder = root / split
    if not folder.is_dir():
        raise UserError(
            f"ImageNet not found: no directory {folder} (dataset.root={root}); point "
            "dataset.root at a directory with train/<class>/ and val/<class>/ image folders "
            "(ImageNet must be downloaded by hand from https://image-net.org), or use "
            "dataset=digits")
    try:
        classes, found = find_classes(str(folder))
        class_to_idx = found if class_to_idx is None else class_to_idx
        unknown = [c for c in classes if c not in class_to_idx]
        if unknown:
            raise UserError(f"{folder} has class folders missing from train/ "
                            f"({', '.join(unknown[:3])}); val must use train's class names")
        samples = make_dataset(str(folder), {c: class_to_idx[c] for c in classes},
                               extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:  # no class folders, or a class folder without images
        raise UserError(f"bad ImageFolder tree {folder}: {str(exc).rstrip('. ')}; every class "
                        "folder needs at least one image: remove empty folders or fix "
                        "dataset.root") from None
    return samples, class_to_idx


def _transforms(size: int) -> tuple[Callable[[Any], Tensor], Callable[[Any], Tensor]]:
    from torchvision import transforms as T

    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()])
    val = T.Compose([T.Resize(round(size / CROP_FRACTION)), T.CenterCrop(size), T.PILToTensor()])
    return train, val


def build_imagenet(cfg: Mapping[str, Any], *, batch_size: int, eval_batch_size: int, seed: int,
                   device: torch.device, num_workers: int = 0) -> Data:
    """ImageFolder train/val loaders with torchvision's standard augmentation."""
    if cfg.get("download", False):
        raise UserError(HOW_TO_GET)
    size = int_option(cfg, "image_size", 224, minimum=8) or 224
    train_size, test_size = (int_option(cfg, key, None) for key in ("train_subset", "test_subset"))
    root = data_root(cfg, "./data/imagenet")
    train_samples, class_to_idx = _scan(root, "train", None)
    val_samples, _ = _scan(root, "val", class_to_idx)
    for key, subset, samples in (("train_subset", train_size, train_samples),
                                 ("test_subset", test_size, val_samples)):
        idx = subset_indices(subset, len(samples), key)
        if idx is not None:
            samples[:] = [samples[i] for i in idx.tolist()]
    train_tf, val_tf = _transforms(size)
    common = dict(seed=seed, device=device, num_workers=int(num_workers))
    train = FolderLoader(_Images(train_samples, train_tf, size), batch_size=batch_size,
                         shuffle=True, drop_last=True, **common)
    test = FolderLoader(_Images(val_samples, val_tf, size), batch_size=eval_batch_size,
                        shuffle=False, drop_last=False, **common)
    spec = DataSpec("imagenet", in_channels=3, num_classes=len(class_to_idx), image_size=size)
    return Data(spec, train, test, num_train=len(train_samples), num_test=len(val_samples))


build_imagenet.uses_workers = True  # type: ignore[attr-defined]
