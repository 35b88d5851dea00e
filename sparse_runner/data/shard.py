"""Sharding for data-parallel runs: every rank reads its slice of each global batch.

All ranks draw the same per-epoch permutation (seeded by (seed, epoch), never by the rank);
global batch ``b`` is positions ``[b*B*W, (b+1)*B*W)`` of it, and rank ``r`` reads the
``r``-th block of ``B`` positions. So W ranks with micro-batch B see, step by step, exactly the
samples one process with batch ``B*W`` sees, every sample once per epoch, and a mid-epoch
resume at global batch ``start`` is the same on every rank.
"""
from __future__ import annotations

from ..utils.errors import UserError


def check_shardable(n: int, batch_size: int, world: int, drop_last: bool, what: str) -> None:
    """One-line errors for a dataset too small for ``world`` ranks."""
    if world < 1:
        raise ValueError(f"world size {world} < 1")
    if world > n:
        raise UserError(f"{world} processes but the {what} set has only {n} samples, so some "
                        "ranks would get no data; launch fewer processes (torchrun "
                        "--nproc_per_node) or use a larger dataset")
    if drop_last and batch_size * world > n:
        raise UserError(f"one global batch of trainer.batch_size={batch_size} x {world} processes "
                        f"is larger than the {n} {what} samples; lower trainer.batch_size or "
                        "launch fewer processes")


def num_batches(n: int, batch_size: int, world: int, drop_last: bool) -> int:
    """Global batches per pass (each rank yields this many, or fewer at a ragged end)."""
    step = batch_size * world
    return n // step if drop_last else -(-n // step)


def rank_slice(batch: int, batch_size: int, rank: int, world: int, n: int) -> slice:
    """Positions of the permutation that rank ``rank`` reads for global batch ``batch``."""
    start = batch * batch_size * world + rank * batch_size
    return slice(min(start, n), min(start + batch_size, n))


def rank_key(rank: int, world: int) -> tuple[int, ...]:
    """Extra seed material for per-batch random draws: empty for one process (its streams stay
    those of a plain run), the rank otherwise (ranks augment independently)."""
    return (rank,) if world > 1 else ()
