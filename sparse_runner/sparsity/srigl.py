"""SRigL (Lasby et al. 2024): RigL under constant fan-in, with dynamic neuron ablation (§9).

Every active output neuron (row of ``W.view(n_out, -1)``) has exactly k nonzero weights. At each
update, per layer (as calgaryml/condensed-sparsity ``rigl_constant_fan.py``):

1. ``n_prune = int(nnz * f_t)``, ``n_keep = nnz - n_prune``.
2. Ablation: salient = top-``n_keep`` |w| of the active weights, union top-``n_prune`` |grad| over
   the whole layer; a neuron with fewer than ``gamma = max(1, int(gamma_sal * k0))`` salient
   weights is ablated (k0 = fan-in before ablation; ``gamma_sal >= 1`` is an absolute count).
   gamma is lowered so that at least ``B // fan_in + 1`` neurons stay active (k never exceeds the
   dense fan-in). The last sparse layer and ``no_ablation`` patterns are never ablated.
3. ``k = B // n_active`` with B = the layer's budget ``k0 * n_out``. k0 is the floor or ceiling
   of (distribution's nonzeros / n_out), chosen across layers so the sparse layers together meet
   s to within one neuron row (fanin.fanin_counts); the reference floors every layer.
4. Drop: keep the top-``n_keep`` |w| among the active weights of non-ablated neurons, then cap
   each row at k by dropping its *smallest-magnitude* extras (the reference sorts the boolean
   mask there, so which extras go is arbitrary: fixed here).
5. Grow: each non-ablated row gets ``k - kept`` positions with the largest |dense grad| outside
   its kept set (just-dropped positions eligible, as in RigL).

Initialisation: constant fan-in random masks, then (``sparse_init``) weights drawn per neuron
with variance 2 / k (std sqrt(2 / k)) -- the reference passes 2 / k as the std, a bug (see
fanin.sparse_init_).
"""
from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..flops import LayerTable
from .base import SetupContext, register
from .fanin import fanin_density, fanin_plan, install_constant_fanin, row_top, rows_cols, sparse_init_
from .dst import topk_indices
from .rigl import RigL


@register("srigl")
class SRigL(RigL):
    """Constant fan-in RigL; its ablation state is the set of all-zero rows of each mask."""

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        c = self.cfg
        self.gamma_sal = c.get("gamma_sal", 0.3)
        self.ablation = c.get("ablation", True)
        self.no_ablation = [str(p) for p in (c.get("no_ablation") or [])]
        self.sparse_init = c.get("sparse_init", True)
        if (not isinstance(self.gamma_sal, (int, float)) or isinstance(self.gamma_sal, bool)
                or self.gamma_sal < 0):
            raise UserError(f"method=srigl: gamma_sal={self.gamma_sal} must be >= 0 (a fraction "
                            "of the fan-in below 1, an absolute count from 1), e.g. 0.3")
        for key in ("ablation", "sparse_init"):
            if not isinstance(getattr(self, key), bool):
                raise UserError(f"method=srigl: {key} must be true or false")
        self._k0: list[int] = []
        self._budget: list[int] = []
        self._ablatable: list[bool] = []

    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        return fanin_density(table, fanin_plan(table, sparse, s, distribution, extra_dense,
                                               strict=False))

    def init_masks(self, model: nn.Module, ctx: SetupContext) -> None:
        k = install_constant_fanin(self, model, ctx)
        names = self.masks.names
        self._k0 = [k[n] for n in names]
        self._budget = [k[n] * p.shape[0] for n, p in zip(names, self.masks.params)]
        self._ablatable = [self.ablation and i != len(names) - 1
                           and not any(fnmatchcase(n, pat) for pat in self.no_ablation)
                           for i, n in enumerate(names)]
        if self.sparse_init:
            for i, (p, m) in enumerate(zip(self.masks.params, self.masks.masks)):
                sparse_init_(p, m, self.rng(-2, i))

    def new_masks(self, step: int, fraction: float) -> dict[int, Tensor]:
        out = {}
        for i, (p, m) in enumerate(zip(self.masks.params, self.masks.masks)):
            out[i] = srigl_layer(p.detach(), m, self.dense_grad(i), int(self._nnz[i] * fraction),
                                 self._budget[i], self._k0[i], self.gamma_sal, self._ablatable[i])
        return out

    def ablated(self) -> dict[str, Tensor]:
        """Per sparse layer, a bool per output neuron: True = ablated (row all zero)."""
        return {n: ~m.reshape(m.shape[0], -1).any(1) for n, m in zip(self.masks.names,
                                                                      self.masks.masks)}

    def event_extra(self) -> dict[str, Any]:
        return {"ablated_neurons": sum(int(a.sum()) for a in self.ablated().values())}

    def state_dict(self) -> dict[str, Any]:
        """Adds the ablated neurons for inspection; on load they follow from the masks."""
        return {**super().state_dict(), "ablated": {n: a.cpu() for n, a in self.ablated().items()}}


def top_flat(score: Tensor, n: int) -> Tensor:
    """Bool mask (score's shape) of the ``n`` highest scores over the whole tensor."""
    out = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    out[topk_indices(score.flatten(), n)] = True
    return out.view_as(score)


def neurons_to_ablate(kept: Tensor, g: Tensor, n_prune: int, budget: int, k0: int,
                      gamma_sal: float) -> Tensor:
    """Bool per row: neurons with too few salient weights (step 2 of the module docstring);
    ``kept`` is the top-``n_keep`` |w| of the active weights."""
    rows, cols = kept.shape
    counts = (kept | top_flat(g, n_prune)).sum(1)
    gamma = int(gamma_sal) if gamma_sal >= 1 else max(1, int(gamma_sal * k0))
    rank = min(budget // cols, rows - 1)
    gamma = min(gamma, int(counts.sort(descending=True).values[rank]))
    return counts < gamma


@torch.no_grad()
def srigl_layer(w: Tensor, mask: Tensor, grad: Tensor, n_prune: int, budget: int, k0: int,
                gamma_sal: float, ablatable: bool) -> Tensor:
    """One SRigL update of one layer; returns the new mask (constant fan-in, ablated rows 0)."""
    rows, cols = rows_cols(w.shape)
    m = mask.reshape(rows, cols)
    a = w.reshape(rows, cols).abs().float()
    g = grad.reshape(rows, cols).abs().float()
    n_keep = int(torch.count_nonzero(m)) - n_prune
    keep = top_flat(a.masked_fill(~m, -math.inf), n_keep)
    ablated = torch.zeros(rows, dtype=torch.bool, device=m.device)
    if ablatable:
        ablated = neurons_to_ablate(keep, g, n_prune, budget, k0, gamma_sal)
    k = budget // (rows - int(ablated.sum()))
    if bool(ablated.any()):  # re-pick the kept set among the surviving neurons only
        live = m & ~ablated[:, None]
        keep = top_flat(a.masked_fill(~live, -math.inf), min(n_keep, int(torch.count_nonzero(live))))
    keep &= row_top(a.masked_fill(~keep, -math.inf), k, k)
    need = (k - keep.sum(1)) * (~ablated)
    new = keep | row_top(g.masked_fill(keep, -math.inf), need, k)
    return new.view_as(mask)
