"""Synthetic images of any square shape, for benchmarks: no files, no download.

Everything is drawn from ``dataset.data_seed`` (fixed, independent of the run seed, so every
run sees the same data). Each class has a random 4x4 colour template; an image is its class's
template, scaled up to H x W, blended half and half with uniform noise. The classes are thus
separable, so a smoke run shows accuracy rising above chance within an epoch, even for a CNN
with global pooling (a random linear teacher over pixels is not: pooling discards position).
Data is generated on the CPU (identical on every device) and then held on the training device
in a ``TensorLoader``, without augmentation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Mapping

import torch

from ..utils.errors import UserError
from .base import Data, DataSpec, TensorLoader, generator
from .options import int_option


def _shape(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """``dataset.shape`` as (C, H, W) with H == W: the models take square images."""
    value = cfg.get("shape", [3, 32, 32])
    dims = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    if not (len(dims) == 3 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                   for d in dims) and dims[1] == dims[2]):
        shown = list(value) if dims else value
        raise UserError(f"dataset.shape={shown} is invalid; use [C, H, W] with positive "
                        "integers and H == W (the models take square images), e.g. [3,32,32]")
    return dims[0], dims[1], dims[2]


def make_synthetic(shape: tuple[int, int, int], num_classes: int, n: int, data_seed: int,
                   split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images in [0, 1] and their labels; ``split`` picks an independent stream."""
    templates = torch.rand(num_classes, shape[0], 4, 4, generator=generator(data_seed, 0))
    gen = generator(data_seed, split)
    y = torch.randint(num_classes, (n,), generator=gen)
    base = torch.nn.functional.interpolate(templates, size=shape[1:], mode="nearest")
    return 0.5 * base[y] + 0.5 * torch.rand(n, *shape, generator=gen), y


def build_synthetic(cfg: Mapping[str, Any], *, batch_size: int, eval_batch_size: int, seed: int,
                    device: torch.device) -> Data:
    """Random-tensor train/test loaders of ``dataset.shape`` with ``dataset.num_classes``."""
    shape = _shape(cfg)
    num_classes = int_option(cfg, "num_classes", 10, minimum=2) or 10
    n_train = int_option(cfg, "num_samples", 1024) or 1024
    n_test = int_option(cfg, "num_test_samples", 256) or 256
    data_seed = int_option(cfg, "data_seed", 0, minimum=0) or 0
    # x = (t + u) / 2 with t, u ~ U[0, 1] independent: mean 1/2, variance 2 / 12 / 4 = 1 / 24
    stats = dict(mean=[0.5] * shape[0], std=[math.sqrt(1 / 24)] * shape[0])
    common = dict(seed=seed, device=device, **stats)
    train = TensorLoader(*make_synthetic(shape, num_classes, n_train, data_seed, 1),
                         batch_size=batch_size, shuffle=True, drop_last=True, **common)
    test = TensorLoader(*make_synthetic(shape, num_classes, n_test, data_seed, 2),
                        batch_size=eval_batch_size, shuffle=False, drop_last=False, **common)
    spec = DataSpec("synthetic", in_channels=shape[0], num_classes=num_classes,
                    image_size=shape[1])
    return Data(spec, train, test, num_train=n_train, num_test=n_test)
