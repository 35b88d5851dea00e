"""Dataset registry. ``build_data(cfg.dataset, ...)`` returns loaders plus the spec the model needs."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..utils.registry import Registry
from .base import Augment, Data, DataSpec, Loader, TensorLoader, mix_seed
from .cifar import build_cifar10, build_cifar100
from .digits import build_digits
from .fake import write_fake_cifar, write_fake_imagenet
from .imagenet import build_imagenet
from .mnist1d import build_mnist1d
from .synthetic import build_synthetic
from .text import block_size_of, build_shakespeare, build_text, dataset_with_model_defaults

DATASETS: Registry[Callable[..., Data]] = Registry("dataset")
DATASETS.register("digits")(build_digits)
DATASETS.register("cifar10")(build_cifar10)
DATASETS.register("cifar100")(build_cifar100)
DATASETS.register("imagenet")(build_imagenet)
DATASETS.register("synthetic")(build_synthetic)
DATASETS.register("mnist1d")(build_mnist1d)
DATASETS.register("shakespeare")(build_shakespeare)
DATASETS.register("text")(build_text)


def build_data(cfg: Mapping[str, Any], *, batch_size: int, eval_batch_size: int, seed: int,
               device: torch.device, num_workers: int = 0) -> Data:
    """Build train/test loaders for the dataset named by ``cfg['name']``."""
    factory = DATASETS.get(str(cfg["name"]))
    kwargs: dict[str, Any] = dict(batch_size=batch_size, eval_batch_size=eval_batch_size,
                                  seed=seed, device=device)
    if getattr(factory, "uses_workers", False):
        kwargs["num_workers"] = num_workers
    return factory(cfg, **kwargs)


__all__ = ["Augment", "DATASETS", "Data", "DataSpec", "Loader", "TensorLoader", "block_size_of", "build_data", "dataset_with_model_defaults",
           "mix_seed", "write_fake_cifar", "write_fake_imagenet"]
