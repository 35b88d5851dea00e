"""Sharded loaders: W ranks of micro-batch B together read what one process of batch B*W reads."""
from __future__ import annotations

import pytest
import torch

from fixtures_data import build, dataset_config
from sparse_runner.data import TensorLoader, write_fake_imagenet
from sparse_runner.utils.errors import UserError


def _loader(n: int, batch: int, drop_last: bool = True, augment=None) -> TensorLoader:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return TensorLoader(images, torch.arange(n), batch_size=batch, mean=[0.0], std=[1.0], seed=3,
                        shuffle=True, drop_last=drop_last, augment=augment)


def _rank_batches(make, world: int, epoch: int, start: int = 0) -> list[list[torch.Tensor]]:
    per_rank = []
    for rank in range(world):
        loader = make()
        loader.shard(rank, world)
        per_rank.append([y for _, y in loader.batches(epoch, start)])
    return per_rank


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_together_read_the_global_batch_of_one_process(world):
    n, batch = 50, 4
    single = _loader(n, batch * world)
    per_rank = _rank_batches(lambda: _loader(n, batch), world, epoch=2)
    expected = [y for _, y in single.batches(2)]
    assert all(len(r) == len(expected) == n // (batch * world) for r in per_rank)
    for b, y in enumerate(expected):  # global batch b = the ranks' slices in rank order
        assert torch.equal(torch.cat([r[b] for r in per_rank]), y)
    seen = torch.cat([torch.cat(r) for r in per_rank])
    assert seen.unique().numel() == seen.numel()  # every sample at most once per epoch


def test_mid_epoch_start_is_the_same_global_batch_on_every_rank():
    full = _rank_batches(lambda: _loader(40, 5), 2, epoch=1)
    resumed = _rank_batches(lambda: _loader(40, 5), 2, epoch=1, start=2)
    assert all(torch.equal(a, b) for f, r in zip(full, resumed) for a, b in zip(f[2:], r))


def test_ragged_test_set_is_covered_exactly_once():
    per_rank = _rank_batches(lambda: _loader(23, 4, drop_last=False), 3, epoch=0)
    seen = torch.cat([torch.cat(r) for r in per_rank])
    assert sorted(seen.tolist()) == list(range(23))


def test_ranks_augment_independently_and_one_process_is_unchanged():
    from sparse_runner.data import Augment

    aug = Augment(pad=1)
    plain = [x for x, _ in _loader(16, 4, augment=aug).batches(0)]
    sharded = _loader(16, 4, augment=aug)
    sharded.shard(0, 1)
    assert all(torch.equal(a, b) for a, b in zip(plain, (x for x, _ in sharded.batches(0))))
    a, b = _loader(16, 4, augment=aug), _loader(16, 4, augment=aug)
    a.shard(0, 2)
    b.shard(1, 2)
    # the same image position under both ranks' streams: different crops
    xa, xb = next(a.batches(0))[0], next(b.batches(0))[0]
    assert not torch.equal(xa - xa.mean(), xb - xb.mean())


def test_world_larger_than_the_data_is_one_line():
    with pytest.raises(UserError, match="3 processes but the test set has only 2 samples"):
        _loader(2, 1, drop_last=False).shard(0, 3)
    with pytest.raises(UserError, match="trainer.batch_size=8 x 2 processes") as info:
        _loader(10, 8).shard(1, 2)
    assert "\n" not in str(info.value)


def test_imagefolder_loader_shards_with_per_image_augmentation(tmp_path):
    root = write_fake_imagenet(tmp_path / "inet", classes=2, per_class=6, val_per_class=3, size=16)
    cfg = dataset_config("imagenet", root=str(root), image_size=8)

    def train():
        return build(cfg, batch_size=2, num_workers=0).train

    single = build(cfg, batch_size=4, num_workers=0).train
    per_rank = [[], []]
    for rank in range(2):
        loader = train()
        loader.shard(rank, 2)
        per_rank[rank] = list(loader.batches(1))
        assert len(loader) == len(single) == 3
    for b, (x, y) in enumerate(single.batches(1)):
        assert torch.equal(torch.cat([per_rank[0][b][1], per_rank[1][b][1]]), y)
        assert torch.equal(torch.cat([per_rank[0][b][0], per_rank[1][b][0]]), x)
    with pytest.raises(UserError, match="13 processes but the training set has only 12"):
        train().shard(0, 13)
