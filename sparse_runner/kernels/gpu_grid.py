"""Launch geometry of the GPU (Triton) kernels, as pure functions testable without a GPU.

Every kernel runs on a one-dimensional grid: CUDA allows 2**31 - 1 blocks on ``grid.x`` but
only 65535 on ``grid.y``/``grid.z``, and a batch put on ``grid.y`` overflows from ~2.1M rows
(a convolution through im2col at CIFAR batch 2048). A program id is decoded into (row tile,
batch tile) with the row tiles varying fastest, so neighbouring programs read the same batch
tile of the dense operand while it is in L2.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_GRID_X = 2**31 - 1
MIN_TRANSPOSED_BATCH = 16  # below this the natural layout beats a transposed copy of x


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative a, positive b."""
    return -(-a // b)


@dataclass(frozen=True)
class Blocks:
    """Tile sizes (powers of two). Tests shrink them so small shapes cover many tiles."""

    rows: int = 32     # output rows per program (spmm)
    batch: int = 32    # batch entries per program and per inner step
    k: int = 2         # nonzeros of a row per inner step (spmm); 4 needs ~230 registers on
                       # sm_90 (8 spilled), 2 needs ~126 (4 blocks per SM): tests check it
    entries: int = 64  # (row, nonzero) entries per program (weight gradient)

    def __post_init__(self) -> None:
        for name in ("rows", "batch", "k", "entries"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"Blocks.{name} must be a power of two, got {v}")


def spmm_grid(n_rows: int, nb: int, blocks: Blocks) -> tuple[int]:
    """Programs of the forward/input-gradient kernel: one per (row tile, batch tile)."""
    n = cdiv(n_rows, blocks.rows) * cdiv(nb, blocks.batch)
    if n > MAX_GRID_X:
        raise ValueError(f"sparse_run: {n} programs exceed the grid limit {MAX_GRID_X}; "
                         "split the batch")
    return (n,)


def spmm_tile(pid: int, n_rows: int, blocks: Blocks) -> tuple[int, int]:
    """(first row, first batch entry) of program ``pid``: the decode the kernel performs."""
    n_rt = cdiv(n_rows, blocks.rows)
    return (pid % n_rt) * blocks.rows, (pid // n_rt) * blocks.batch


@dataclass(frozen=True)
class Split:
    """Weight gradient: entries cut in tiles, the batch cut in ``splits`` chunks of ``chunk``."""

    entry_tiles: int
    splits: int
    chunk: int

    @property
    def grid(self) -> tuple[int]:
        return (self.entry_tiles * self.splits,)


def sddmm_split(nnz: int, nb: int, blocks: Blocks, target_programs: int) -> Split:
    """Split the batch so that about ``target_programs`` programs run (fp32 partial sums).

    One program per output row (the old CUDA design) gave 64-256 blocks on 132 SMs; here the
    batch is cut into chunks (multiples of the batch block) until the grid fills the device.
    """
    tiles = cdiv(nnz, blocks.entries)
    b_tiles = cdiv(nb, blocks.batch)
    if tiles == 0 or b_tiles == 0:
        return Split(tiles, 0, blocks.batch)
    want = max(1, min(b_tiles, cdiv(target_programs, tiles)))
    chunk = cdiv(b_tiles, want) * blocks.batch
    split = Split(tiles, cdiv(nb, chunk), chunk)
    if split.grid[0] > MAX_GRID_X:
        raise ValueError(f"sparse_run: {split.grid[0]} programs exceed the grid limit")
    return split


def use_transposed(nb: int) -> bool:
    """Whether the dense operand is copied batch-contiguous (coalesced gathers) first."""
    return nb >= MIN_TRANSPOSED_BATCH
