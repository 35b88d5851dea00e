"""Run a function on W local gloo ranks (spawned processes), as torchrun would start them."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn: Callable[..., Any], world: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch

    from sparse_runner import distributed as dist

    torch.set_num_threads(1)
    dist.init("gloo", "cpu")
    try:
        result = fn(rank, *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.shutdown()


def on_ranks(fn: Callable[..., Any], tmp_path: Path, world: int = 2, *args: Any) -> list[Any]:
    """``[fn(rank, *args) for each rank]``, each computed in its own rank process."""
    import torch

    mp.start_processes(_worker, args=(fn, world, free_port(), str(tmp_path), args), nprocs=world,
                       start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
