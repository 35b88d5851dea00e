"""Layer-wise sparsity distributions: how a global budget of nonzeros is split across layers.

All distributions share one solver (google-research/rigl ``sparse_utils``): layer l gets density
``eps * p_l`` with a layer score ``p_l`` (uniform: 1; ER: (n_in + n_out) / (n_in * n_out);
ERK: sum(shape) / prod(shape), raised to ``power_scale``); ``eps`` is solved so the budget is
met, and layers whose density would exceed 1 become dense and the rest is re-solved (the
overflow loop). Counts are exact integers: the real-valued targets are rounded by largest
remainder so the total equals the budget to the weight (never Bernoulli sampling).
"""
from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from ..utils.errors import UserError

if TYPE_CHECKING:
    from ..flops.tables import LayerTable

Shape = Sequence[int]

SCORES: dict[str, Callable[[Shape, float], float]] = {
    "uniform": lambda shape, power: 1.0,
    "er": lambda shape, power: ((shape[0] + shape[1]) / (shape[0] * shape[1])) ** power,
    "erk": lambda shape, power: (sum(shape) / math.prod(shape)) ** power,
}


def budget_nnz(numel: int, s: float) -> int:
    """Nonzeros allowed by sparsity s over ``numel`` weights: n - floor(s * n)."""
    return numel - math.floor(s * numel)


def keep_budget(table: "LayerTable", sparse: Sequence[str], s: float, extra_dense: int) -> int:
    """Nonzeros the sparse layers may hold at sparsity s (dense weights in the budget subtracted)."""
    total = sum(table[n].numel for n in sparse)
    return max(0, min(total, budget_nnz(total + extra_dense, s) - extra_dense))


def solve_densities(shapes: Mapping[str, Shape], budget: float,
                    score: Callable[[Shape], float]) -> dict[str, float]:
    """Densities eps * p_l (capped at 1 by the overflow loop) whose nonzeros sum to ``budget``."""
    numel = {n: math.prod(s) for n, s in shapes.items()}
    p = {n: score(s) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        divisor = sum(p[n] * numel[n] for n in free)
        rest = budget - sum(numel[n] for n in dense)
        eps = rest / divisor if divisor > 0 else 0.0
        over = [n for n in free if eps * p[n] > 1.0]
        if not over:
            break
        top = max(p[n] for n in over)
        dense |= {n for n in free if p[n] == top}
    return {n: 1.0 if n in dense else eps * p[n] for n in shapes}


def round_to_budget(real: Mapping[str, float], caps: Mapping[str, int], total: int) -> dict[str, int]:
    """Integer counts near ``real`` (floor or ceil), within ``caps``, summing exactly to ``total``."""
    counts = {n: min(caps[n], max(0, math.floor(v))) for n, v in real.items()}
    short = total - sum(counts.values())
    order = sorted(real, key=lambda n: (-(real[n] - math.floor(real[n])), n))
    while short > 0:
        progressed = False
        for n in order:
            if short == 0:
                break
            if counts[n] < caps[n]:
                counts[n] += 1
                short -= 1
                progressed = True
        if not progressed:
            raise ValueError("budget exceeds the capacity of the layers")
    return counts


def layer_nnz(
    distribution: str,
    shapes: Mapping[str, Shape],
    s: float,
    *,
    power_scale: float = 1.0,
    overrides: Mapping[str, float] | None = None,
    extra_dense: int = 0,
) -> dict[str, int]:
    """Exact nonzero count per sparse layer so the layers together have sparsity ``s``.

    ``overrides`` maps glob patterns to fixed densities for the matching layers; the others
    share what is left of the budget. ``extra_dense`` counts weights kept dense elsewhere (by the
    layer filter) that must come out of the same budget, so that the sparsity over *all* layers
    still meets ``s`` (``uniform`` with re-spreading).
    """
    if distribution not in SCORES:
        raise UserError(f"unknown distribution {distribution!r}; valid: {', '.join(sorted(SCORES))}")
    if not 0.0 <= s < 1.0:
        raise UserError(f"s={s} is outside [0, 1); pick a sparsity like s=0.9")
    if not shapes:
        return {}
    numel = {n: math.prod(sh) for n, sh in shapes.items()}
    total = budget_nnz(sum(numel.values()) + extra_dense, s) - extra_dense
    fixed: dict[str, int] = {}
    for pattern, density in (overrides or {}).items():
        if not 0.0 <= float(density) <= 1.0:
            raise UserError(f"density override {pattern}={density} must lie in [0, 1]")
        for n in shapes:
            if fnmatchcase(n, pattern) and n not in fixed:
                fixed[n] = round(float(density) * numel[n])
    free = {n: sh for n, sh in shapes.items() if n not in fixed}
    budget = total - sum(fixed.values())
    capacity = sum(numel[n] for n in free)
    if budget < 0:
        raise UserError(
            f"s={s} cannot be met: the weights kept dense (sparse.dense, overrides) already hold "
            "more nonzeros than the budget; lower s or keep fewer layers dense"
        )
    if budget > capacity:
        raise UserError(
            f"s={s} cannot be met: the density overrides leave more nonzeros than the other "
            "layers can hold; raise the override densities or s"
        )
    score = SCORES[distribution]
    real = solve_densities(free, budget, lambda sh: score(sh, power_scale))
    counts = round_to_budget({n: real[n] * numel[n] for n in free},
                             {n: numel[n] for n in free}, budget)
    return {n: fixed.get(n, counts.get(n, 0)) for n in shapes}


def layer_density(distribution: str, shapes: Mapping[str, Shape], s: float, **kw) -> dict[str, float]:
    """:func:`layer_nnz` as densities (nonzeros / weights) per layer."""
    nnz = layer_nnz(distribution, shapes, s, **kw)
    return {n: nnz[n] / math.prod(shapes[n]) for n in shapes}


def flop_rounding(steps: Mapping[str, tuple[float, int]], gap: float) -> dict[str, int]:
    """FLOP-aware rounding: integer steps per layer whose FLOPs add up to at most ``gap``.

    The Iso-FLOP search bisects on s, but nonzeros are integers, so FLOPs are a step function of
    s and the search stops one step below the target, a step being up to one weight of the most
    expensive layer (an early conv at full resolution). ``steps[n] = (cost, room)``: the FLOPs
    one step adds to layer n (one nonzero, or one neuron row for constant fan-in) and the steps
    that still fit in it. Greedy, most expensive layers first, each cost class spread round-robin
    over its layers (in name order) so that no layer moves by more than a few steps: what is left
    of the gap is below the cheapest cost, and the result never exceeds ``gap``. Deterministic.
    """
    out: dict[str, int] = {}
    by_cost: dict[float, list[str]] = {}
    for n in sorted(steps):
        cost, room = steps[n]
        if cost > 0 and room > 0:
            by_cost.setdefault(float(cost), []).append(n)
    for cost in sorted(by_cost, reverse=True):
        want = math.floor(gap / cost * (1 + 1e-12))
        while want > 0 and gap >= cost:
            progressed = False
            for n in by_cost[cost]:
                if want == 0 or gap < cost:
                    break
                if out.get(n, 0) < steps[n][1]:
                    out[n] = out.get(n, 0) + 1
                    want, gap, progressed = want - 1, gap - cost, True
            if not progressed:
                break
    return out
