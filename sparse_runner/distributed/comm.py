"""Data-parallel runs: one process per device under ``torchrun`` or as SLURM/submitit tasks.

Launch::

    torchrun --standalone --nproc_per_node=8 -m sparse_runner method=rigl s=0.9
    sparse-run -m hydra/launcher=slurm hydra.launcher.gpus_per_node=8 method=rigl s=0.9

A process is one rank of a data-parallel run when torchrun's variables (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``) are set, or when it is one of several tasks of a submitit job (whose
SLURM variables are translated into torchrun's). :func:`init` then joins the process group:
gloo on CPUs, nccl on GPUs (``distributed.backend``).

Masks must be identical on every rank, always: a rank that trained on other masks would
silently train another network. :func:`mask_hash` fingerprints all masks; :func:`check_masks`
compares the fingerprints of all ranks and raises :class:`MaskMismatch` when they differ;
:func:`broadcast_masks` installs rank 0's masks everywhere.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor

from ..utils.errors import TrainingFailed, UserError

BACKENDS = ("auto", "gloo", "nccl")
MASK_SYNC = ("verify", "broadcast")
_TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class MaskMismatch(TrainingFailed):
    """The ranks hold different masks: training on would train different networks."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in the launch (from the launcher's environment)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class Dist:
    """The joined process group (or a single process): ``world_size == 1`` means no collectives."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = "none"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()
_current: Dist = SINGLE
_store: Any = None  # the rendezvous store, kept from early_rendezvous() for init()


def launch_env(environ: dict[str, str] | None = None) -> Launch:
    """World size and ranks from torchrun's variables or, inside a submitit job with several
    tasks, from the job environment (exported as torchrun's variables for ``env://``)."""
    env = os.environ if environ is None else environ
    if all(k in env for k in _TORCHRUN_VARS):
        return Launch(int(env["WORLD_SIZE"]), int(env["RANK"]), int(env["LOCAL_RANK"]))
    if environ is None and "SUBMITIT_FOLDER" in env:
        return _submitit_launch()
    return Launch()


def _submitit_launch() -> Launch:
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks < 2:
        return Launch()
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False,
                                                    overwrite=True)
    return Launch(job.num_tasks, job.global_rank, job.local_rank)


def current() -> Dist:
    """The process group this process joined (``SINGLE`` before :func:`init` or without one)."""
    return _current


def early_rendezvous(launch: Launch) -> Any:
    """Connect to the launcher's store before Hydra starts (the CLI needs it to agree on one
    run directory); :func:`init` reuses the connection."""
    global _store
    if _store is None and launch.distributed:
        _store, _, _ = next(tdist.rendezvous("env://", launch.rank, launch.world_size,
                                            timeout=timedelta(minutes=10)))
    return _store


def shared_value(key: str, value: str, launch: Launch) -> str:
    """Rank 0's ``value`` for ``key`` on every rank (through the rendezvous store)."""
    store = early_rendezvous(launch)
    if store is None:
        return value
    key = f"sparse_run/{key}"
    if launch.rank == 0:
        store.set(key, value)
    return store.get(key).decode()


def check_options(backend: str, mask_sync: str) -> None:
    """``distributed.*`` values, checked before anything runs (also in one process)."""
    for key, value, valid in (("backend", backend, BACKENDS), ("mask_sync", mask_sync, MASK_SYNC)):
        if value not in valid:
            raise UserError(f"distributed.{key}={value}; valid: {', '.join(valid)}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> nccl on CUDA devices, gloo otherwise; nccl without a GPU is a user error."""
    if backend not in BACKENDS:
        raise UserError(f"distributed.backend={backend}; valid: {', '.join(BACKENDS)}")
    if backend == "nccl" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise UserError("distributed.backend=nccl needs CUDA GPUs and this rank has none; use "
                        "distributed.backend=gloo (or auto) on CPUs")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend


def rank_device(name: str, launch: Launch) -> torch.device:
    """The device of this rank: ``cuda:<LOCAL_RANK>`` (modulo the visible GPUs) or the CPU."""
    cuda = torch.cuda.is_available()
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"run.device={name} pins one device, but each rank of a data-parallel run "
                        "uses cuda:<LOCAL_RANK>; use run.device=auto, cuda or cpu")
    if name == "cuda" and not cuda:
        raise UserError("run.device=cuda but no CUDA device is available; use run.device=cpu")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    index = launch.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init(backend: str, device_name: str, launch: Launch | None = None) -> Dist:
    """Join the process group of this launch (no-op for a single process)."""
    global _current
    launch = launch_env() if launch is None else launch
    if not launch.distributed:
        return SINGLE
    if tdist.is_initialized():
        return _current
    device = rank_device(device_name, launch)
    name = resolve_backend(backend, device)
    store = early_rendezvous(launch)
    tdist.init_process_group(name, store=store, rank=launch.rank, world_size=launch.world_size,
                             timeout=timedelta(minutes=30))
    _current = Dist(launch.world_size, launch.rank, launch.local_rank, name, device)
    return _current


_finished = 0


def finish_together(label: str, timeout_s: float = 300.0) -> None:
    """Rank 0 has written ``label``'s outputs when this returns on any rank: the other ranks wait
    (through the store, not a collective, so a rank that failed alone cannot deadlock it)."""
    global _finished
    if not _current.enabled or _store is None:
        return
    _finished += 1
    key = f"sparse_run/finished/{_finished}/{label}"
    if _current.rank == 0:
        _store.set(key, "1")
        return
    try:
        _store.wait([key], timedelta(seconds=timeout_s))
    except Exception:  # rank 0 is gone or stuck: nothing left to wait for
        pass


def shutdown() -> None:
    """Leave the process group (after a final barrier, so no rank exits while rank 0 writes)."""
    global _current, _store
    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
    _current, _store = SINGLE, None


# ---- collectives (no-ops for a single process) ------------------------------------------------
def barrier() -> None:
    if _current.enabled:
        tdist.barrier()


def all_reduce_(tensor: Tensor, op: str = "sum") -> Tensor:
    """In-place sum / max / min over ranks; ``tensor`` must live on the rank's device."""
    if _current.enabled:
        tdist.all_reduce(tensor, op=getattr(tdist.ReduceOp, op.upper()))
    return tensor


def broadcast_(tensors: Sequence[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` with rank ``src``'s values (bool tensors travel as uint8)."""
    if not _current.enabled:
        return
    for t in tensors:
        if t.dtype == torch.bool:
            wire = t.to(torch.uint8)
            tdist.broadcast(wire, src)
            t.copy_(wire.bool())
        else:
            tdist.broadcast(t, src)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not _current.enabled:
        return [obj]
    out: list[Any] = [None] * _current.world_size
    tdist.all_gather_object(out, obj)
    return out


# ---- masks ----------------------------------------------------------------------------------
def mask_hash(masks: Sequence[Tensor]) -> str:
    """16 hex digits fingerprinting every mask's shape and bits (order matters)."""
    h = hashlib.blake2b(digest_size=8)
    for m in masks:
        h.update(repr(tuple(m.shape)).encode())
        h.update(np.packbits(m.detach().bool().cpu().numpy().ravel()).tobytes())
    return h.hexdigest()


def check_masks(masks: Sequence[Tensor], when: str) -> list[str]:
    """All ranks' mask hashes; raises :class:`MaskMismatch` if they differ."""
    hashes = all_gather_objects(mask_hash(masks))
    if len(set(hashes)) > 1:
        listed = ", ".join(f"rank {r}: {h}" for r, h in enumerate(hashes))
        raise MaskMismatch(f"the ranks hold different masks {when} ({listed}): a mask decision "
                           "was not synchronised; please report it, or set distributed.mask_sync="
                           "broadcast to train on rank 0's masks")
    return hashes


def broadcast_masks(manager: Any) -> None:
    """Install rank 0's masks on every rank (``MaskManager.set_masks`` zeroes what they drop)."""
    if not _current.enabled or manager is None or not len(manager):
        return
    wires = [m.to(torch.uint8) for m in manager.masks]
    for w in wires:
        tdist.broadcast(w, 0)
    manager.set_masks({i: w.bool() for i, w in enumerate(wires)})


def sync_masks(manager: Any, mode: str, when: str) -> list[str]:
    """After a mask decision: ``verify`` (hashes must agree) or ``broadcast`` (rank 0's masks win;
    the hashes returned are those before the broadcast). Returns one hash per rank."""
    if mode not in MASK_SYNC:
        raise UserError(f"distributed.mask_sync={mode}; valid: {', '.join(MASK_SYNC)}")
    if manager is None or not len(manager):
        return [""] * _current.world_size
    if mode == "verify":
        return check_masks(manager.masks, when)
    hashes = all_gather_objects(mask_hash(manager.masks))
    broadcast_masks(manager)
    return hashes
