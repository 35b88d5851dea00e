"""``method=srigl`` (Lasby et al. 2024): RigL under constant fan-in, with dynamic neuron ablation.

Every active output neuron (row of ``W.view(n_out, -1)``) keeps exactly k nonzero weights. At
each update, per layer: neurons with fewer than ``gamma_sal * k0`` salient weights (top |w| of
the kept set union top |grad|) are ablated (never the last sparse layer); k is re-derived from
the layer's budget over the surviving neurons; the kept set is capped at k per row by
magnitude and each row regrows to k by |dense gradient|. Sparse init draws weights per neuron
from N(0, 2/k) (the reference passes 2/k as the std: a bug). Details: docs/methods.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..flops.tables import LayerTable
from ..sparsity import host
from ..sparsity.dst import DSTOptions, DynamicSparse
from ..sparsity.fanin import (fanin_density, fanin_plan, fanin_rounding_steps,
                              install_constant_fanin, row_top, rows_cols, sparse_init_)
from ..sparsity.method import SetupContext, register
from ..sparsity.options import check, check_bool, is_num
from ..sparsity.topk import top_flat


@dataclass
class SRigLOptions(DSTOptions):
    gamma_sal: float = 0.3      # a neuron with fewer than γ_sal·k salient weights is ablated (>= 1: a count)
    ablation: bool = True       # dynamic neuron ablation (false: SRigL without ablation)
    no_ablation: list[str] = field(default_factory=list)  # weight globs never ablated
    sparse_init: bool = True    # re-initialise sparse weights per neuron from N(0, 2/k)
    init_std: str = "paper"     # paper: std sqrt(2/k) (He init over the sparse fan-in) |
                                # official: std 2/k, what the reference code passes


@register("srigl")
class SRigL(DynamicSparse):
    """Constant fan-in RigL; its ablation state is the set of all-zero rows of each mask."""

    Options = SRigLOptions

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        o = self.opts
        self.gamma_sal, self.ablation, self.sparse_init = o.gamma_sal, o.ablation, o.sparse_init
        self.no_ablation = [str(p) for p in o.no_ablation]
        self._k0: list[int] = []
        self._budget: list[int] = []
        self._ablatable: list[bool] = []

    def check_options(self) -> None:
        super().check_options()
        g = self.opts.gamma_sal
        check(is_num(g) and g >= 0, self.name, f"gamma_sal={g} must be >= 0 (a fraction of the "
              "fan-in below 1, an absolute count from 1), e.g. 0.3")
        check_bool(self.name, "ablation", self.opts.ablation)
        check_bool(self.name, "sparse_init", self.opts.sparse_init)
        check(self.opts.init_std in ("paper", "official"), self.name,
              f"init_std={self.opts.init_std!r}; valid: paper, official")

    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        return fanin_density(table, fanin_plan(table, sparse, s, distribution, extra_dense,
                                               strict=False))

    def rounding_steps(self, table: LayerTable, sparse: list[str], s: float,
                       distribution: Mapping[str, Any], extra_dense: int = 0
                       ) -> dict[str, tuple[float, int]]:
        return fanin_rounding_steps(table, sparse, s, distribution, extra_dense)

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
                sparse_init_(p, m, self.rng(-2, i), official=self.opts.init_std == "official")

    def new_masks(self, step: int, fraction: float) -> dict[int, Tensor]:
        out = {}
        for i, (p, m) in enumerate(zip(self.masks.params, self.masks.masks)):
            out[i] = srigl_layer(p.detach(), m, self.dense_grad(i), int(self._nnz[i] * fraction),
                                 self._budget[i], self._k0[i], self.gamma_sal, self._ablatable[i],
                                 self._nnz[i])
        return out

    def ablated(self) -> dict[str, Tensor]:
        """Per sparse layer, a bool per output neuron: True = ablated (row all zero)."""
        return {n: ~m.reshape(m.shape[0], -1).any(1) for n, m in zip(self.masks.names,
                                                                      self.masks.masks)}

    def event_extra(self) -> dict[str, Any]:
        counts = torch.stack([a.sum() for a in self.ablated().values()])
        return {"ablated_neurons": sum(host.read(counts, "mask-update event: ablated neurons"))}

    def state_dict(self) -> dict[str, Any]:
        """Adds the ablated neurons for inspection; on load they follow from the masks."""
        return {**super().state_dict(), "ablated": {n: a.cpu() for n, a in self.ablated().items()}}


def neurons_to_ablate(kept: Tensor, g: Tensor, n_prune: int, budget: int, k0: int,
                      gamma_sal: float) -> Tensor:
    """Bool per row: neurons with too few salient weights (step 2 of the module docstring);
    ``kept`` is the top-``n_keep`` |w| of the active weights."""
    rows, cols = kept.shape
    counts = (kept | top_flat(g, n_prune)).sum(1)
    gamma = int(gamma_sal) if gamma_sal >= 1 else max(1, int(gamma_sal * k0))
    rank = min(budget // cols, rows - 1)
    gamma = min(gamma, host.read(counts.sort(descending=True).values[rank],
                                 "SRigL: salient-weight count of the neuron at the budget rank"))
    return counts < gamma


@torch.no_grad()
def srigl_layer(w: Tensor, mask: Tensor, grad: Tensor, n_prune: int, budget: int, k0: int,
                gamma_sal: float, ablatable: bool, nnz: int | None = None) -> Tensor:
    """One SRigL update of one layer (``nnz``: the mask's nonzeros, counted if not given);
    returns the new mask (constant fan-in, ablated rows 0)."""
    rows, cols = rows_cols(w.shape)
    m = mask.reshape(rows, cols)
    a = w.reshape(rows, cols).abs().float()
    g = grad.reshape(rows, cols).abs().float()
    if nnz is None:
        nnz = host.read(torch.count_nonzero(mask), "SRigL: nonzeros of the layer")
    n_keep = nnz - n_prune
    keep = top_flat(a.masked_fill(~m, -math.inf), n_keep)
    ablated = torch.zeros(rows, dtype=torch.bool, device=m.device)
    n_ablated = 0
    if ablatable:
        ablated = neurons_to_ablate(keep, g, n_prune, budget, k0, gamma_sal)
        live = m & ~ablated[:, None]
        n_ablated, n_live = host.read(torch.stack([ablated.sum(), torch.count_nonzero(live)]),
                                      "SRigL: ablated neurons and the weights they leave")
    k = budget // (rows - n_ablated)
    if n_ablated:  # re-pick the kept set among the surviving neurons only
        keep = top_flat(a.masked_fill(~live, -math.inf), min(n_keep, n_live))
    keep &= row_top(a.masked_fill(~keep, -math.inf), k, k)
    need = (k - keep.sum(1)) * (~ablated)
    new = keep | row_top(g.masked_fill(keep, -math.inf), need, k)
    return new.view_as(mask)
