"""The Iso-FLOP search (Sparse-IFT appendix A.2) as a pure function.

Given ``flops_at(s)`` -- the average forward FLOPs per sample of the transformed model when its
sparse layers have sparsity s -- find the s whose FLOPs equal the dense baseline's. It works on
layer shapes and the distribution only (no model copies), so it takes milliseconds.
``flops_at`` is non-increasing in s but a step function (nonzeros are integers), so bisection
keeps a bracket [lo, hi] with flops(lo) >= target >= flops(hi) and returns its better end.

Unless it meets ``rtol`` on the way, the bracket collapses with its ends one step apart: up to
one nonzero of the most expensive sparse layer (1.7e-5 relative on MobileNetV2 at 32x32).
``refine`` closes that step: given the lower end's s and the FLOPs still missing there, it
returns extra nonzeros per layer (FLOP-aware rounding,
:func:`~sparse_runner.sparsity.distributions.flop_rounding`) and the FLOPs they add; the result
carries them as ``trim`` for the method's setup, and it never exceeds the target. That result
is taken when it is within ``BELOW_RTOL`` (1e-6) or closer than either end of the bracket.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..utils.errors import UserError

S_MAX = 1.0 - 1e-9
BELOW_RTOL = 1e-6  # a refined result under the target is preferred when this close


@dataclass(frozen=True)
class IsoFlopResult:
    sparsity: float      # sparsity of the sparse layers that matches the target
    flops: float         # forward FLOPs per sample at that sparsity
    target: float        # the dense baseline's forward FLOPs per sample
    iterations: int
    trim: Mapping[str, int] = field(default_factory=dict)  # FLOP-aware rounding per layer

    @property
    def rel_error(self) -> float:
        return abs(self.flops - self.target) / self.target


Refine = Callable[[float, float], tuple[Mapping[str, int], float]]


def isoflop_sparsity(flops_at: Callable[[float], float], target: float, *, rtol: float = 1e-7,
                     max_iter: int = 200, refine: Refine | None = None) -> IsoFlopResult:
    """Bisection for s in [0, 1) with ``flops_at(s) == target`` (to ``rtol`` or the step size),
    then ``refine`` from below (see the module docstring)."""
    lo, hi = 0.0, S_MAX
    f_lo, f_hi = flops_at(lo), flops_at(hi)
    if f_lo < target * (1 - rtol):
        raise UserError(
            f"the transformed model needs only {f_lo:.4g} forward FLOPs even when dense, below "
            f"the dense baseline's {target:.4g}: no sparsity makes it Iso-FLOP; use ift=none"
        )
    if f_hi > target * (1 + rtol):
        raise UserError(
            f"the transformed model needs {f_hi:.4g} forward FLOPs even at sparsity ~1 (its dense "
            f"layers alone exceed the baseline's {target:.4g}); use a smaller s or keep fewer "
            "layers dense (sparse.dense)"
        )
    it = 0
    for it in range(1, max_iter + 1):
        # with refine, only the lower end may stop the bisection early (the result stays <= target)
        met_lo = f_lo == target or (refine is None and abs(f_lo - target) <= rtol * target)
        if met_lo or abs(f_hi - target) <= rtol * target:
            break
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        f_mid = flops_at(mid)
        if f_mid >= target:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    best = (IsoFlopResult(lo, f_lo, target, it) if abs(f_lo - target) <= abs(f_hi - target)
            else IsoFlopResult(hi, f_hi, target, it))
    if refine is None or best.flops == target or f_hi > target:
        return best
    trim, added = refine(hi, target - f_hi)  # the gap is below one step or rtol: a few weights
    below = IsoFlopResult(hi, f_hi + added, target, it, dict(trim))
    # from below wins when it meets the 1e-6, or is simply closer
    return below if below.rel_error <= max(best.rel_error, BELOW_RTOL) else best
