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

    from sparse_runner.distributed import comm as dist

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


TINY_DDP = ("model.base_width=8", "trainer.progress=false", "run.device=cpu",
            "trainer.batch_size=32", "trainer.log_every=5")


def torchrun(*args: str, nproc: int = 2, timeout: float = 240) -> "subprocess.CompletedProcess":
    """``torchrun --standalone --nproc_per_node=<nproc> <args>`` in a subprocess (CPU, gloo)."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
