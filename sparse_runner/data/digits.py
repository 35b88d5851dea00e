"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes): real data, offline.

The default dataset: it needs no download, so the first command works on any laptop and in CI.
The train/test split is fixed (stratified, 20% test, independent of the run seed) so accuracies
from different seeds are comparable.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .base import Augment, Data, DataSpec, TensorLoader


def build_digits(cfg: Mapping[str, Any], *, batch_size: int, eval_batch_size: int, seed: int,
                 device: torch.device) -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    labels = bunch.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=float(cfg.get("test_fraction", 0.2)), stratify=labels,
        random_state=0,
    )
    mean, std = [float(tr_x.mean())], [float(tr_x.std())]
    augment = Augment(pad=int(cfg.get("pad", 1)), flip=False) if cfg.get("augment", True) else None
    common = dict(mean=mean, std=std, seed=seed, device=device)
    train = TensorLoader(torch.from_numpy(tr_x), torch.from_numpy(tr_y), batch_size=batch_size,
                         shuffle=True, drop_last=True, augment=augment, **common)
    test = TensorLoader(torch.from_numpy(te_x), torch.from_numpy(te_y), batch_size=eval_batch_size,
                        shuffle=False, drop_last=False, **common)
    spec = DataSpec("digits", in_channels=1, num_classes=10, image_size=8)
    return Data(spec, train, test, num_train=len(tr_y), num_test=len(te_y))
