"""Sparse weight formats, one converter each: CSR (any mask) and condensed (constant fan-in).

A weight is viewed as ``[n_out, fan_in]`` (conv: fan_in = c_in * kh * kw). The structure comes
from the mask (an active weight that happens to be 0.0 is still stored). Every index array uses
the narrowest integer type that holds its range (int16 / int32 / int64).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

from ..sparsity.fanin import constant_fanin

def index_dtype(max_value: int) -> torch.dtype:
    """Narrowest signed integer dtype holding 0..max_value."""
    for dtype in (torch.int16, torch.int32):
        if max_value <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def _matrix(weight: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    rows = weight.shape[0]
    return weight.detach().reshape(rows, -1), mask.bool().reshape(rows, -1)


def to_csr(weight: Tensor, mask: Tensor) -> dict[str, Tensor]:
    w, m = _matrix(weight, mask)
    counts = m.sum(1)
    crow = torch.zeros(m.shape[0] + 1, dtype=torch.int64)
    crow[1:] = counts.cumsum(0)
    return {"crow_indices": crow.to(index_dtype(int(crow[-1]))),
            "col_indices": m.nonzero()[:, 1].to(index_dtype(m.shape[1] - 1)),
            "values": w[m].clone()}


def to_condensed(weight: Tensor, mask: Tensor) -> dict[str, Tensor] | None:
    """Condensed form, or None when the mask is not constant fan-in."""
    w, m = _matrix(weight, mask)
    k = constant_fanin(m)
    if k is None:
        return None
    rows = m.any(1).nonzero().squeeze(1)
    cols = m[rows].nonzero()[:, 1].view(len(rows), k)
    return {"values": w[rows].gather(1, cols).clone(),
            "indices": cols.to(index_dtype(m.shape[1] - 1)),
            "rows": rows.to(index_dtype(m.shape[0] - 1))}


def from_csr(csr: Mapping[str, Tensor], shape: tuple[int, ...]) -> Tensor:
    crow = csr["crow_indices"].long()
    rows = torch.repeat_interleave(torch.arange(len(crow) - 1), crow.diff())
    out = torch.zeros(shape[0], math.prod(shape[1:]), dtype=csr["values"].dtype)
    out[rows, csr["col_indices"].long()] = csr["values"]
    return out.view(shape)


def from_condensed(cond: Mapping[str, Tensor], shape: tuple[int, ...]) -> Tensor:
    out = torch.zeros(shape[0], math.prod(shape[1:]), dtype=cond["values"].dtype)
    out[cond["rows"].long()[:, None], cond["indices"].long()] = cond["values"]
    return out.view(shape)


