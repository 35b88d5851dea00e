"""The run-level pieces of data parallelism: sharded data, DDP, SyncBatchNorm, masks, RNG.

Each function is a no-op (or the identity) for a single process, so the run calls them
unconditionally and never branches on the launch. What is synchronised, and how:

* weights and BatchNorm buffers: DDP broadcasts rank 0's at wrapping and buffers before every
  training forward; gradients are averaged over ranks in backward, so every optimizer step and
  every gradient-based mask decision (RigL/SRigL growth, GraNet, SNIP-style scores) sees the
  same numbers on every rank;
* masks: built on every rank from the same seed, then rank 0's are installed everywhere
  (:func:`sync_initial_masks`); every later mask update is checked (or re-broadcast, with
  ``distributed.mask_sync=broadcast``) by :func:`sync_after_update`;
* random regrowth (SET), random init, L0 gate samples: drawn from generators seeded by
  (seed, step, layer), never from a per-rank stream, so they agree without communication;
* data: every rank reads its slice of each global batch (data/shard.py); the global RNG is
  seeded per rank (dropout-like noise differs across ranks, as it would across a larger batch)
  and each rank's RNG state is saved in the checkpoint.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import nn

from ..outputs import checkpoint as ckpt
from . import comm as dist
from ..data import Data, mix_seed
from ..utils.errors import UserError


def shard_data(data: Data, d: dist.Dist, dataset: str) -> None:
    """Make both loaders serve this rank's shard."""
    if not d.enabled:
        return
    for loader in (data.train, data.test):
        if not hasattr(loader, "shard"):
            raise UserError(f"dataset={dataset} cannot be split over ranks (its loader has no "
                            "shard()); run it in one process")
        loader.shard(d.rank, d.world_size)


def seed_rank(seed: int, d: dist.Dist) -> None:
    """Per-rank global RNG streams (after the model is built: initial weights come from rank 0)."""
    if d.enabled:
        torch.manual_seed(mix_seed(seed, 0xD15, d.rank))


def sync_bn(model: nn.Module, enabled: bool, d: dist.Dist) -> nn.Module:
    """``trainer.sync_bn``: BatchNorm statistics over the global batch."""
    if not enabled:
        return model
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UserError("trainer.sync_bn=true but the model has no BatchNorm layer to "
                        "synchronise; set trainer.sync_bn=false")
    if d.enabled and d.device.type != "cuda":
        raise UserError("trainer.sync_bn=true needs GPUs (PyTorch's SyncBatchNorm does not run "
                        "on CPUs); set trainer.sync_bn=false on CPU ranks")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, d: dist.Dist, find_unused: bool = False) -> nn.Module:
    """The module the training forward runs: DDP over ``model`` (parameters are shared, so
    masks, optimizer and checkpoints keep using ``model`` itself)."""
    if not d.enabled:
        return model
    # one GPU per process: the module lives on it, and DDP must be told (device_ids) or it
    # treats the module as multi-device; CPU ranks take None for both
    index = d.device.index if d.device.type == "cuda" else None
    if d.device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    ids = None if index is None else [index]
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=index,
                                               find_unused_parameters=find_unused)


def no_sync(forward: Any) -> Callable[[], ContextManager[Any]]:
    """The context for every micro-batch but the last of a gradient accumulation: DDP's
    ``no_sync`` (gradients accumulate locally, one all-reduce per optimizer step instead of
    one per micro-batch) when ``forward`` is a DDP module, compiled or not; else a no-op."""
    module = getattr(forward, "_orig_mod", forward)   # torch.compile's OptimizedModule
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return module.no_sync
    return contextlib.nullcontext


def sync_initial_masks(method: Any, mode: str) -> list[str]:
    """After ``method.setup``: rank 0's masks everywhere (pruning at init scored on rank 0's
    batches decides for all); returns the per-rank hashes after the broadcast."""
    masks = getattr(method, "masks", None)
    if masks is None or not len(masks):
        return [""] * dist.current().world_size
    dist.broadcast_masks(masks)
    return dist.sync_masks(masks, mode, "after the initial masks were built")


def sync_after_update(method: Any, mode: str, step: int) -> list[str]:
    """After a mask update: hashes agree (``verify``) or rank 0's masks win (``broadcast``)."""
    return dist.sync_masks(getattr(method, "masks", None), mode,
                           f"after the mask update at step {step}")


def rank_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state (a collective: all ranks call it when a checkpoint is written)."""
    return dist.all_gather_objects(ckpt.rng_state())


def restore_rank_rng(payload: Mapping[str, Any]) -> None:
    """This rank's RNG state; a checkpoint of another number of ranks is refused (the global
    batch, and so every step's samples, would differ)."""
    d = dist.current()
    states = payload.get("rng_ranks") or [payload["rng"]]
    if len(states) != d.world_size:
        raise UserError(f"the checkpoint was written by {len(states)} process(es) and this run "
                        f"has {d.world_size}; resume with the same number (torchrun "
                        "--nproc_per_node) or choose a new out_dir")
    ckpt.set_rng_state(states[d.rank])


def summary_section(d: dist.Dist, batch_size: int, grad_accum: int,
                    hashes: list[str]) -> dict[str, Any]:
    """``summary.json["distributed"]``."""
    return {"world_size": d.world_size, "backend": d.backend,
            "global_batch": batch_size * grad_accum * d.world_size, "mask_hashes": list(hashes)}
