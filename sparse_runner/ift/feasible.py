"""When no sparsity makes a member Iso-FLOP: find the highest s the user can ask for.

FLOPs that sparsity cannot reduce (attention matmuls, depthwise convs, stem, head, embeddings,
Doped's dense factors) grow with s for Sparse Wide (the model widens) and can exceed the dense
baseline at high s. ``floor_at(s)`` is the member's forward FLOPs at s with its sparse layers
as sparse as they can be; it rises with s, so bisection on s finds the highest feasible one.
"""
from __future__ import annotations

from typing import Callable

from ..utils.errors import UserError
from ..flops.isoflop import IsoFlopResult, Refine, isoflop_sparsity


def highest_feasible(floor_at: Callable[[float], float], target: float, s: float,
                     iterations: int = 20) -> float:
    """The largest s' <= s (to ~1e-6 of s) whose member can still reach ``target`` FLOPs."""
    lo, hi = 0.0, s
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if floor_at(mid) <= target:
            lo = mid
        else:
            hi = mid
    return lo


def isoflop_or_explain(flops_at: Callable[[float], float], target: float, s: float, ift: str,
                       floor_at: Callable[[float], float],
                       refine: Refine | None = None) -> IsoFlopResult:
    """The Iso-FLOP search; if s is infeasible, one line that gives the highest feasible s."""
    try:
        return isoflop_sparsity(flops_at, target, refine=refine)
    except UserError:
        if floor_at(s) <= target:
            raise
        best = highest_feasible(floor_at, target, s)
        raise UserError(f"ift={ift} at s={s} cannot be Iso-FLOP: the FLOPs sparsity cannot reduce "
                        f"(attention, depthwise, stem/head, dense factors, a method's denser "
                        f"start) alone need {floor_at(s):.4g} > the dense baseline's "
                        f"{target:.4g}; the highest feasible s is {best:.4f}: use "
                        f"s<={best:.4f}") from None
