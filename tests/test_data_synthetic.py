"""Synthetic tensors: shapes, determinism, learnable labels, bad shapes."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from fixtures_data import build, check_resume_and_order, dataset_config, run_epoch, user_error


def synthetic(**extra: Any) -> dict[str, Any]:
    cfg = {"name": "synthetic", "shape": [3, 8, 8], "num_classes": 10, "num_samples": 512,
           "num_test_samples": 256}
    return {**cfg, **extra}


def test_spec_and_shapes() -> None:
    cfg = dataset_config("synthetic", shape=[1, 12, 12], num_classes=7, num_samples=40)
    data = build(cfg, batch_size=8)
    assert (data.spec.name, data.spec.in_channels, data.spec.num_classes,
            data.spec.image_size) == ("synthetic", 1, 7, 12)
    assert (data.num_train, data.num_test, len(data.train)) == (40, 256, 5)
    x, y = run_epoch(data.train, 0)
    assert x.shape == (40, 1, 12, 12) and 0 <= y.min() and y.max() < 7


def test_data_depends_on_the_data_seed_only() -> None:
    a, b = build(synthetic(), seed=0), build(synthetic(), seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    other = build(synthetic(data_seed=1))
    assert not torch.equal(a.train.images, other.train.images)
    check_resume_and_order(a.train)


def test_inputs_are_standardised() -> None:
    x, _ = run_epoch(build(synthetic()).test, 0)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_classes_are_learnable() -> None:
    """A least-squares linear classifier fitted on train beats chance on test by far."""
    data = build(synthetic(num_samples=1024))

    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.flatten(1), torch.ones(len(x), 1)], 1)

    x, y = features(data.train.images), data.train.labels
    w = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1]),
                           x.T @ torch.nn.functional.one_hot(y, 10).float())
    accuracy = (features(data.test.images) @ w).argmax(1).eq(data.test.labels).float().mean()
    assert accuracy > 0.5  # chance is 0.10
    assert torch.bincount(y, minlength=10).min() > 0


@pytest.mark.parametrize("shape", [[3, 32, 16], [32, 32], [3, 0, 0], [3, 32.5, 32.5], 32,
                                   "3,32,32", [True, 8, 8]])
def test_bad_shape(shape: Any) -> None:
    user_error(synthetic(shape=shape), "dataset.shape=", "[C, H, W]", "H == W")


@pytest.mark.parametrize("key, value", [("num_classes", 1), ("num_samples", 0),
                                        ("num_test_samples", -2), ("num_samples", "many")])
def test_bad_sizes(key: str, value: Any) -> None:
    user_error(synthetic(**{key: value}), f"dataset.{key}=")
