"""The packed small-batch inference layout of a condensed weight (CPU, batch <= 4).

Memory gathers (one random load per nonzero) bound the batch-1 kernel. The packed layout
replaces them by in-register permutes: output rows go in groups of 16 (one vector lane each)
and input columns in blocks of 32 (two vectors of x); for every (group, block) there are
``counts[g, b]`` slots, a slot holding for each lane a column within the block (uint8) and its
value, zero padded to the longest lane. The kernel keeps one x block in registers and uses
``vpermt2ps`` to fetch the 16 inputs of a slot (~3x fewer cycles than gathers at s=0.9).

``pack(values, indices, n_in)`` builds it with vectorised torch ops (a few ms; ``SparseLinear``
caches it until its weights change), ``unpack`` inverts it (the reference kernel uses it).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

GROUP, BLOCK = 16, 32


class Packed(NamedTuple):
    pvals: torch.Tensor   # [slots, 16], the values' dtype
    pidx: torch.Tensor    # [slots, 16] uint8, column within the block
    counts: torch.Tensor  # [ceil(n_out / 16), ceil(n_in / 32)] int32, slots per (group, block)


def pack(values: torch.Tensor, indices: torch.Tensor, n_in: int) -> Packed:
    """Packed layout of (values, indices) with indices ascending within each row."""
    n_out, k = values.shape
    groups, blocks = -(-n_out // GROUP), -(-n_in // BLOCK)
    dev = values.device
    idx = indices.long()
    row = torch.arange(n_out, device=dev).unsqueeze(1).expand(n_out, k)
    blk = idx // BLOCK
    cell = (row // GROUP) * blocks + blk                      # (group, block) of each entry
    # Rank of each entry among its row's entries in the same block (indices are sorted).
    first = torch.searchsorted(blk.contiguous(), blk.contiguous(), right=False)
    rank = torch.arange(k, device=dev).unsqueeze(0) - first
    per_lane = torch.zeros(n_out * blocks, dtype=torch.long, device=dev)
    per_lane.scatter_add_(0, (row * blocks + blk).flatten(), torch.ones_like(idx).flatten())
    counts = torch.zeros(groups * blocks, dtype=torch.long, device=dev)
    lane_cell = (torch.arange(n_out, device=dev).unsqueeze(1) // GROUP) * blocks + \
        torch.arange(blocks, device=dev).unsqueeze(0)
    counts.scatter_reduce_(0, lane_cell.flatten(), per_lane, reduce="amax")
    start = torch.cumsum(counts, 0) - counts                   # first slot of each cell
    slot = (start[cell] + rank).flatten() * GROUP + (row % GROUP).flatten()
    slots = int(counts.sum())
    pvals = values.new_zeros(slots * GROUP).index_put_((slot,), values.flatten())
    pidx = torch.zeros(slots * GROUP, dtype=torch.uint8, device=dev).index_put_(
        (slot,), (idx % BLOCK).to(torch.uint8).flatten())
    return Packed(pvals.view(slots, GROUP), pidx.view(slots, GROUP),
                  counts.view(groups, blocks).to(torch.int32))


def unpack(packed: Packed, n_out: int, n_in: int) -> torch.Tensor:
    """The dense [n_out, n_in] weight a packed layout stands for."""
    pvals, pidx, counts = packed
    groups, blocks = counts.shape
    dev = pvals.device
    cell = torch.repeat_interleave(torch.arange(groups * blocks, device=dev),
                                   counts.flatten().clamp(min=0).long(),
                                   output_size=pvals.shape[0])
    rows = (cell // blocks).unsqueeze(1) * GROUP + torch.arange(GROUP, device=dev)
    cols = (cell % blocks).unsqueeze(1) * BLOCK + pidx.long()
    keep = (rows < n_out) & (cols < n_in)
    dense = pvals.new_zeros(groups * GROUP, blocks * BLOCK)
    dense.index_put_((rows[keep], cols[keep]), pvals[keep], accumulate=True)
    return dense[:n_out, :n_in]
