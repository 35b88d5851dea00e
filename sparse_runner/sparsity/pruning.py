"""Pruning at initialisation (SNIP, GraSP, FORCE): score once on the dense init, keep the top.

A method (``sparse_runner/methods/``) only computes per-weight *keys* (higher = keep) in
:meth:`PruneAtInit.score`; this module does the rest, identically for all of them:

* ``prepare`` (before the Iso-FLOP search, at the requested s) scores the model on training
  batches. The model is left exactly as it was: gradients are taken with
  ``torch.func.functional_call`` on detached copies of the weights, and BatchNorm running
  statistics (which the scoring forwards update in train mode) are restored afterwards.
  Zero-initialised residual BN scales are scored as 1 (see :func:`untouched`).
* ``allocation: global`` (SNIP/GraSP/FORCE papers): one ranking over all sparse weights,
  sorted once, so the Iso-FLOP search only re-counts a prefix per trial sparsity and the mask
  built by ``setup`` at the searched s is exactly the prefix the search priced (same stable
  order). ``per_layer`` (google-research/rigl's SNIP): each layer keeps its top keys with the
  counts of the configured ``distribution``.
* Counts are exact: the budget of nonzeros at sparsity s is the one every method uses
  (``n - floor(s*n)`` over the sparse weights plus ``extra_dense``).
* Scoring costs forward+backward passes on the dense model; ``extra_flops`` charges them once,
  at step 0, so the run's training FLOPs include the method's overhead.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..utils.errors import UserError
from ..flops.tables import LayerTable
from .distributions import keep_budget
from .masks import MaskManager
from .method import SetupContext, SparsityMethod, nonzero_steps, planned_nnz
from .options import MethodOptions, check_choice
from .topk import GlobalRanking, top_per_layer

ALLOCATIONS = ("global", "per_layer")
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Scoring passes in train mode; afterwards buffers (BN statistics), mode and grads are back.

    Normalisation scales initialised to exactly zero (``zero_init_residual``) are set to 1 while
    scoring: with them at 0 every weight of a residual branch has exactly zero gradient at init,
    so all saliencies there tie at 0 and the ranking degenerates (whole blocks pruned)."""
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    revived = [m.weight for m in model.modules()
               if isinstance(m, NORMS) and getattr(m, "weight", None) is not None
               and not bool(m.weight.detach().any())]
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            for w in revived:
                w.fill_(1.0)
        yield
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])
            for w in revived:
                w.zero_()
        model.train(was_training)
        model.zero_grad(set_to_none=True)


def batch_stream(ctx: SetupContext) -> Iterator[tuple[Tensor, Tensor]]:
    """Training batches without end: re-opens ``ctx.batches()`` whenever it runs out."""
    if ctx.batches is None or ctx.loss_fn is None:
        raise RuntimeError("pruning at initialisation needs ctx.batches and ctx.loss_fn")
    while True:
        empty = True
        for batch in ctx.batches():
            empty = False
            yield batch
        if empty:
            raise UserError("the training set yields no batch to score the weights on")


def mean_grads(model: nn.Module, weights: Mapping[str, Tensor], batches: Sequence[tuple[Tensor, Tensor]],
               loss_fn) -> dict[str, Tensor]:
    """Gradient of the mean loss over ``batches`` w.r.t. ``weights`` (name -> value used in the
    forward; the model's own parameters are neither read for those names nor modified)."""
    leaves = {n: w.detach().clone().requires_grad_(True) for n, w in weights.items()}
    total = {n: torch.zeros_like(w) for n, w in leaves.items()}
    for x, y in batches:
        loss = loss_fn(torch.func.functional_call(model, leaves, (x,)), y)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        for n, g in zip(leaves, grads):
            total[n] += g / len(batches)
    return total


def take(stream: Iterator[tuple[Tensor, Tensor]], n: int) -> list[tuple[Tensor, Tensor]]:
    return list(itertools.islice(stream, n))


def samples(batches: Sequence[tuple[Tensor, Tensor]]) -> int:
    return sum(int(y.shape[0]) for _, y in batches)


@dataclass
class PruneAtInitOptions(MethodOptions):
    """Keys every pruning-at-init method shares."""

    allocation: str = "global"   # global: one ranking over all sparse weights (papers) |
                                 # per_layer: the counts of `distribution`, best keys per layer


class PruneAtInit(SparsityMethod):
    """Shared pruning-at-init method; subclasses implement :meth:`score`."""

    Options: ClassVar[type] = PruneAtInitOptions

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        self.allocation = self.opts.allocation
        self.keys: list[Tensor] | None = None
        self.major: list[Tensor] | None = None
        self.ranking: GlobalRanking | None = None
        self.scoring_flops = 0.0
        self._names: list[str] = []

    def check_options(self) -> None:
        check_choice(self.name, "allocation", self.opts.allocation, ALLOCATIONS)

    def score(self, model: nn.Module, ctx: SetupContext) -> tuple[list[Tensor], float]:
        """Keys per sparse weight (ctx.sparse order; higher = keep) and the FLOPs spent."""
        raise NotImplementedError

    # ---- lifecycle ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: SetupContext) -> None:
        self.ctx = ctx
        self._names = list(ctx.sparse)
        with untouched(model):
            keys, self.scoring_flops = self.score(model, ctx)
        self.keys = [k.detach() for k in keys]
        if self.allocation == "global":
            self.ranking = GlobalRanking(self.keys, self.major)

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        if self.keys is None or self._names != list(ctx.sparse):
            self.prepare(model, ctx)
        self.ctx = ctx
        self.masks = MaskManager(model, ctx.sparse)
        shapes = [p.shape for p in self.masks.params]
        if self.ranking is not None:
            k = keep_budget(ctx.table, ctx.sparse, ctx.s, ctx.extra_dense)
            new = self.ranking.masks(k, shapes)
        else:
            nnz = ctx.nnz()
            new = top_per_layer(self.keys, [nnz[n] for n in ctx.sparse], self.major)
        self.masks.set_masks({i: m.to(p.device) for i, (m, p) in
                              enumerate(zip(new, self.masks.params))})
        self.ranking = None       # the order is only needed for planning; free its memory
        self.keys = self.major = None

    def extra_flops(self, step: int, batch_size: int) -> float:
        return self.scoring_flops if step == 0 else 0.0

    # ---- planning ----------------------------------------------------------------------------
    def planned_density(self, table: LayerTable, sparse: list[str], s: float,
                        distribution: Mapping[str, Any], extra_dense: int = 0) -> dict[str, float]:
        if self.ranking is None or list(sparse) != self._names:
            return super().planned_density(table, sparse, s, distribution, extra_dense)
        counts = self.ranking.counts(keep_budget(table, sparse, s, extra_dense))
        return {n: c / table[n].numel for n, c in zip(sparse, counts)}

    def rounding_steps(self, table: LayerTable, sparse: list[str], s: float,
                       distribution: Mapping[str, Any], extra_dense: int = 0
                       ) -> dict[str, tuple[float, int]]:
        """One nonzero per step for per-layer counts; none for a global ranking (its scores,
        not a distribution, decide which layer the next weight goes to)."""
        if self.ranking is None or list(sparse) != self._names:
            return nonzero_steps(table, sparse, planned_nnz(table, sparse, s, distribution,
                                                            extra_dense))
        return {}
