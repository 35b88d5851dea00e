"""DDP runs: gradient accumulation all-reduces once per optimizer step (``no_sync`` on every
micro-batch but the last; same weights as without it), and the wrapping sets what a GPU run
needs (device_ids/output_device on the rank's GPU, SyncBatchNorm)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from dist_helpers import on_ranks
from sparse_runner.distributed import ddp
from sparse_runner.distributed.comm import Dist

STEPS, MICRO = 3, 2


def _train(rank: int, use_no_sync: bool) -> dict:
    from meta_helpers import Config, batch, build
    from sparse_runner.step import TrainStep

    model, method, opt = build(Config("rigl"))
    forward = nn.parallel.DistributedDataParallel(model)
    calls = []

    def hook(state, bucket):
        calls.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    forward.register_comm_hook(None, hook)
    step = TrainStep(model, method, opt, nn.functional.cross_entropy, grad_accum=MICRO,
                     forward=forward)
    if not use_no_sync:
        step.no_sync = ddp.no_sync(model)   # a no-op: one all-reduce per micro-batch
    data = (batch(10 * rank + i) for i in range(STEPS * MICRO))
    events = [step(i, data).event is not None for i in range(STEPS)]
    return {"allreduces": len(calls), "events": events,
            "params": [p.detach().clone() for p in model.parameters()]}


def _both(rank: int) -> tuple[dict, dict]:
    return _train(rank, True), _train(rank, False)


@pytest.mark.slow   # two spawned gloo ranks (~10 s of imports each)
def test_no_sync_all_reduces_once_per_optimizer_step(tmp_path):
    runs = on_ranks(_both, tmp_path, 2)
    with_, without = [r[0] for r in runs], [r[1] for r in runs]
    assert with_[0]["events"] == [False, True, False]   # a mask update in between
    for a, b in zip(with_, without):
        assert b["allreduces"] == MICRO * a["allreduces"] and a["allreduces"] >= STEPS
        for p, q in zip(a["params"], b["params"]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, q in zip(with_[0]["params"], with_[1]["params"]):   # ranks agree
        assert torch.equal(p, q)


def test_wrap_puts_ddp_on_the_ranks_gpu(monkeypatch):
    seen = {}

    class FakeDDP:
        def __init__(self, module, **kwargs):
            seen.update(kwargs, module=module)

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", FakeDDP)
    model = nn.Linear(2, 2)
    ddp.wrap(model, Dist(world_size=2, rank=1, local_rank=1, backend="nccl",
                         device=torch.device("cuda", 1)))
    assert seen["device_ids"] == [1] and seen["output_device"] == 1 and seen["module"] is model
    ddp.wrap(model, Dist(world_size=2, backend="gloo"))
    assert seen["device_ids"] is None and seen["output_device"] is None


def test_sync_bn_converts_every_batchnorm_for_gpu_ranks():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    out = ddp.sync_bn(model, True, Dist(world_size=2, backend="nccl",
                                        device=torch.device("cuda", 0)))
    norms = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 2 and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
