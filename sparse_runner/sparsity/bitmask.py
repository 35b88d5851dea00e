"""Bool masks packed 8 to a byte: state that only needs set bits (ITOP's union of every mask
seen) costs an eighth of a bool mask. Little-endian bit order within a byte."""
from __future__ import annotations

import torch
from torch import Tensor

_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_POP = torch.tensor([bin(v).count("1") for v in range(256)], dtype=torch.int64)


def pack(mask: Tensor) -> Tensor:
    """``mask`` (bool, any shape) as uint8 [ceil(numel / 8)]."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BITS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack(packed: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The bool mask of ``shape`` that :func:`pack` packed."""
    n = 1
    for d in shape:
        n *= d
    bits = packed.unsqueeze(1).bitwise_and(_BITS.to(packed.device)).ne(0)
    return bits.reshape(-1)[:n].view(shape)


def popcount(packed: Tensor) -> Tensor:
    """Set bits of a packed mask, as a 0-dim tensor on its device (no host read)."""
    return _POP.to(packed.device)[packed.long()].sum()


def count(packed: Tensor) -> int:
    """Set bits of a packed mask (a host read)."""
    return int(popcount(packed))
