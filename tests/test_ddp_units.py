"""Single-process behaviour of the data-parallel helpers: identities, and the one-line errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_runner.distributed import ddp
from sparse_runner.distributed import comm as dist
from sparse_runner.utils.errors import UserError

TWO_CPU_RANKS = dist.Dist(world_size=2, rank=0, backend="gloo")


def test_sync_bn_without_batchnorm_is_one_line():
    with pytest.raises(UserError, match="the model has no BatchNorm layer") as info:
        ddp.sync_bn(nn.Sequential(nn.Linear(3, 3)), True, dist.SINGLE)
    assert "\n" not in str(info.value)


def test_sync_bn_on_cpu_ranks_is_one_line_and_one_process_converts():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(UserError, match="needs GPUs"):
        ddp.sync_bn(model, True, TWO_CPU_RANKS)
    weight = model[1].weight
    converted = ddp.sync_bn(model, True, dist.SINGLE)
    assert isinstance(converted[1], nn.SyncBatchNorm) and converted[1].weight is weight
    assert ddp.sync_bn(model, False, TWO_CPU_RANKS) is model


def test_one_process_is_untouched():
    model = nn.Linear(2, 2)
    assert ddp.wrap(model, dist.SINGLE) is model
    state = torch.get_rng_state()
    ddp.seed_rank(0, dist.SINGLE)
    assert torch.equal(torch.get_rng_state(), state)
    section = ddp.summary_section(dist.SINGLE, 64, 2, ["abc"])
    assert section == {"world_size": 1, "backend": "none", "global_batch": 128,
                       "mask_hashes": ["abc"]}


def test_rng_of_this_rank_is_restored():
    from sparse_runner.outputs import checkpoint as ckpt

    torch.manual_seed(5)
    saved = ddp.rank_rng_states()
    expected = torch.rand(3)
    torch.manual_seed(6)
    ddp.restore_rank_rng({"rng": ckpt.rng_state(), "rng_ranks": saved})
    assert torch.equal(torch.rand(3), expected)


def test_distributed_options_are_checked_before_anything_runs(tiny):
    with pytest.raises(UserError, match="distributed.mask_sync=sometimes; valid: verify, broadcast"):
        tiny("distributed.mask_sync=sometimes")
