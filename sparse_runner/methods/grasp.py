"""``method=grasp`` (Wang et al. 2020): keep the weights whose removal least reduces the gradient flow.

Reference: alecwangcq/GraSP ``pruner/GraSP.py``. On a class-balanced sample
(``samples_per_class`` x classes), with logits divided by the temperature T = 200:

1. g = dL/dθ over all Conv/Linear weights;
2. Hg by double back-propagation: the gradient of <stop_grad(g), dL/dθ>;
3. score S = -θ ⊙ Hg; the weights with the *largest* S are removed, i.e. we keep the largest
   θ ⊙ Hg (our keys are "higher = keep").

For a language model (a label per token) there is no class to balance: the sample is the
first training batch.

The reference splits the sample in two halves only to save GPU memory (GraSP issue #1); here the
sample is processed in chunks of ``chunk_size`` and both passes use the same chunks, so g and Hg
see the same examples (GraSP issue #3). The reference re-initialises the Linear layers of a copy
with xavier before scoring; we score the initialisation that actually trains.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..utils.errors import UserError
from ..sparsity.method import SetupContext, register
from ..sparsity.pruning import PruneAtInit, PruneAtInitOptions, batch_stream


def balanced_sample(stream: Iterator[tuple[Tensor, Tensor]], per_class: int, num_classes: int,
                    max_batches: int) -> tuple[Tensor, Tensor]:
    """Up to ``per_class`` examples of every class, taken in loader order."""
    xs, ys = [], []
    count = [0] * num_classes
    for b, (x, y) in enumerate(stream):
        for c in range(num_classes):
            room = per_class - count[c]
            if room > 0:
                idx = (y == c).nonzero().squeeze(1)[:room]
                if idx.numel():
                    xs.append(x[idx])
                    ys.append(y[idx])
                    count[c] += idx.numel()
        if min(count) >= per_class or b + 1 >= max_batches:
            break
    if not xs:
        raise UserError("GraSP found no labelled example to score on")
    return torch.cat(xs), torch.cat(ys)


@dataclass
class GraSPOptions(PruneAtInitOptions):
    samples_per_class: int = 10        # class-balanced scoring sample (reference CIFAR-10: 10)
    temperature: float = 200.0         # logits are divided by T before the loss (reference: 200)
    chunk_size: Optional[int] = None   # examples per forward pass (null: the training batch)
    max_batches: int = 200             # stop looking for rare classes after this many batches


@register("grasp")
class GraSP(PruneAtInit):
    """One-shot pruning at init by the Hessian-gradient product (keep the largest θ ⊙ Hg)."""

    Options = GraSPOptions

    def score(self, model: nn.Module, ctx: SetupContext) -> tuple[list[Tensor], float]:
        temp = float(self.opts.temperature)
        stream = batch_stream(ctx)
        first = next(stream)
        if first[1].dim() == 1:   # one class per example: the class-balanced sample
            with torch.no_grad():
                classes = int(model(first[0]).shape[1])
            x, y = balanced_sample(itertools.chain([first], stream),
                                   int(self.opts.samples_per_class), classes,
                                   int(self.opts.max_batches))
        else:   # a label per token (language model): no class to balance; the first batch
            x, y = first
        size = int(self.opts.chunk_size or first[0].shape[0])
        chunks = list(zip(x.split(size), y.split(size)))
        params = dict(model.named_parameters())
        leaves = {n: params[n].detach().clone().requires_grad_(True) for n in ctx.table.names}

        def loss(cx: Tensor, cy: Tensor) -> Tensor:
            return ctx.loss_fn(torch.func.functional_call(model, leaves, (cx,)) / temp, cy)

        # the fused attention kernels have no double backward: attention runs as matmuls here
        with sdpa_kernel(SDPBackend.MATH):
            g = [torch.zeros_like(w) for w in leaves.values()]
            for cx, cy in chunks:
                for acc, d in zip(g, torch.autograd.grad(loss(cx, cy), list(leaves.values()))):
                    acc += d
            hg = [torch.zeros_like(w) for w in leaves.values()]
            for cx, cy in chunks:
                grads = torch.autograd.grad(loss(cx, cy), list(leaves.values()), create_graph=True)
                z = sum((gi * di).sum() for gi, di in zip(g, grads))
                for acc, d in zip(hg, torch.autograd.grad(z, list(leaves.values()))):
                    acc += d
        by_name = dict(zip(leaves, hg))
        keys = [leaves[n].detach() * by_name[n] for n in ctx.sparse]
        # gradient pass: forward + backward; Hessian-gradient pass: about twice that; plus the
        # forward that read the number of classes.
        fwd = ctx.table.dense_fwd()
        read = fwd * int(first[1].numel()) if first[1].dim() == 1 else 0.0
        return keys, 9.0 * fwd * int(y.numel()) + read
