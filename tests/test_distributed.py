"""Process-group plumbing, mask fingerprints and stop requests (2 gloo ranks where it matters)."""
from __future__ import annotations

import os
import signal
from datetime import datetime

import pytest
import torch

from dist_helpers import on_ranks
from sparse_runner.distributed import comm as dist
from sparse_runner.distributed import launch as launch_mod
from sparse_runner.utils.errors import UserError
from sparse_runner.sparsity.masks import MaskManager
from sparse_runner.distributed.stop import StopRequest, forward


def test_launch_env_reads_torchrun_variables():
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}
    assert dist.launch_env(env) == dist.Launch(4, 3, 1)
    assert not dist.launch_env({}).distributed


def test_mask_hash_sees_every_bit_and_shape():
    masks = [torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.5, torch.ones(3) > 0]
    h = dist.mask_hash(masks)
    assert h == dist.mask_hash([m.clone() for m in masks]) and len(h) == 16
    flipped = [masks[0].clone(), masks[1]]
    flipped[0][3, 5] ^= True
    assert dist.mask_hash(flipped) != h
    assert dist.mask_hash([masks[0].view(6, 4), masks[1]]) != h


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_nccl_without_gpus_is_one_line():
    with pytest.raises(UserError, match="distributed.backend=nccl needs CUDA GPUs") as info:
        dist.resolve_backend("nccl", torch.device("cpu"))
    assert "\n" not in str(info.value)
    assert dist.resolve_backend("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(UserError, match="valid: auto, gloo, nccl"):
        dist.resolve_backend("mpi", torch.device("cpu"))


def test_a_pinned_gpu_under_torchrun_is_one_line():
    with pytest.raises(UserError, match="run.device=cuda:1 pins one device"):
        dist.rank_device("cuda:1", dist.Launch(2, 0, 0))


def test_every_rank_resolves_rank_zeros_run_directory(monkeypatch):
    stamp = datetime(2026, 1, 2, 3, 4, 5, 678901)
    monkeypatch.setattr(dist, "shared_value", lambda key, value, launch: stamp.isoformat())
    follower = launch_mod.rank_overrides(["s=0.9", "out_dir=/x/${now:%H-%M-%S-%f}"],
                                         dist.Launch(2, 1, 1))
    assert follower[:2] == ["s=0.9", "out_dir=/x/03-04-05-678901"]
    assert follower[2:] == list(launch_mod.FOLLOWER_OVERRIDES)
    leader = launch_mod.rank_overrides(["s=0.9"], dist.Launch(2, 0, 0))
    assert leader == ["s=0.9", "out_dir=outputs/2026-01-02/03-04-05-678901"]
    assert launch_mod.rank_overrides(["s=0.9"], dist.Launch()) == ["s=0.9"]


def test_a_signal_stops_the_loop_and_is_handed_on_afterwards():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with StopRequest() as stop:
            assert not stop.due(0)
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.due(1) and stop.signum == signal.SIGUSR2
            assert seen == []  # ours, not the previous handler, ran during training
        forward(stop.signum)
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    forward(signal.SIGTERM)  # the default handler is never called by hand: we are still here


def _two_rank_checks(rank: int) -> dict:
    from sparse_runner.distributed.comm import MaskMismatch

    out: dict = {}
    model = torch.nn.Linear(8, 4, bias=False)
    torch.nn.init.ones_(model.weight)
    mm = MaskManager(model, ["weight"])
    gen = torch.Generator().manual_seed(rank)   # rank-dependent: the masks differ
    mm.set_masks({0: torch.rand(4, 8, generator=gen) > 0.5})
    try:
        dist.sync_masks(mm, "verify", "after the update at step 7")
    except MaskMismatch as exc:
        out["mismatch"] = str(exc)
    before = dist.sync_masks(mm, "broadcast", "at setup")
    out["before"] = before
    out["after"] = dist.sync_masks(mm, "verify", "after the broadcast")
    out["zeros_follow_mask"] = not bool(model.weight[~mm.masks[0]].any())  # pruned = zero
    with StopRequest(check_every=2) as stop:
        if rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        out["due"] = [stop.due(step) for step in (1, 2, 3)]
        out["signum"] = stop.signum
    t = torch.tensor([float(rank + 1)])
    out["sum"] = float(dist.all_reduce_(t)[0])
    return out


def test_two_ranks_verify_broadcast_and_stop_together(tmp_path):
    r0, r1 = on_ranks(_two_rank_checks, tmp_path)
    for r in (r0, r1):
        assert "ranks hold different masks after the update at step 7" in r["mismatch"]
        assert "rank 0:" in r["mismatch"] and "rank 1:" in r["mismatch"]
        assert r["before"][0] != r["before"][1]
        assert r["after"] == [r0["before"][0]] * 2       # rank 0's masks everywhere
        assert r["zeros_follow_mask"]
        assert r["due"] == [False, True, True]          # agreed on step 2, on both ranks
        assert r["signum"] == signal.SIGTERM and r["sum"] == 3.0
