"""The offline default dataset and the device-resident loader it shares with CIFAR."""
from __future__ import annotations

import torch

from sparse_runner.data import Augment, TensorLoader, build_data


def digits(batch=64, seed=0):
    return build_data({"name": "digits"}, batch_size=batch, eval_batch_size=128, seed=seed,
                      device=torch.device("cpu"))


def test_digits_spec_and_split():
    data = digits()
    assert (data.spec.in_channels, data.spec.num_classes, data.spec.image_size) == (1, 10, 8)
    assert (data.num_train, data.num_test) == (1437, 360)
    assert len(data.train) == 1437 // 64 and len(data.test) == 3
    x, y = next(data.train.batches(0))
    assert x.shape == (64, 1, 8, 8) and y.dtype == torch.long and int(y.max()) <= 9
    test_x = torch.cat([x for x, _ in data.test.batches(0)])
    assert abs(test_x.mean().item()) < 0.1, "normalised with the training statistics"
    # The split does not depend on the run seed, so accuracies across seeds are comparable.
    a = torch.cat([y for _, y in digits(seed=0).test.batches(0)])
    b = torch.cat([y for _, y in digits(seed=7).test.batches(0)])
    assert torch.equal(a, b)


def test_batches_are_reproducible_and_resumable():
    data = digits()
    first = list(data.train.batches(3))
    again = list(data.train.batches(3))
    tail = list(data.train.batches(3, start=5))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[5:], tail)) and len(tail) == len(first) - 5
    other = next(digits().train.batches(4))
    assert not torch.equal(other[1], first[0][1]), "each epoch has its own order"


def test_augment_shifts_and_flips_within_bounds():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = Augment(pad=1, flip=True)(x, gen)
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist()) | {0.0}
    same = Augment()(x, gen)
    assert torch.equal(same, x)


def test_tensor_loader_eval_keeps_every_sample():
    loader = TensorLoader(torch.rand(10, 1, 2, 2), torch.arange(10), batch_size=4, mean=[0.5],
                          std=[1.0], seed=0, shuffle=False, drop_last=False)
    ys = torch.cat([y for _, y in loader.batches(0)])
    assert len(loader) == 3 and torch.equal(ys, torch.arange(10))
