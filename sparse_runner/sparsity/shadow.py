"""Dense shadow weights for methods whose forward uses ``f(W)`` while the optimizer updates W.

N:M with a straight-through estimator (forward ``W ⊙ m``, gradient applied to the dense W) and
L0 gates (forward ``W ⊙ z``) both need the dense W to survive between steps while the model's
parameter holds what the forward must see. Rather than reparametrising the model (which renames
parameters and breaks the checkpoint/mask naming contract), the parameter itself alternates:

* during forward/backward it holds the *shown* weights ``f(W)``, so ``p.grad = dL/df(W)``;
* around ``optimizer.step()`` it holds the dense W (``restore``) and afterwards the new W is
  copied back into the shadow (``capture``).

Checkpoints therefore store the shown weights in ``model`` (what evaluation and export use)
and the dense W in the method's state.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn


class Shadow:
    """Dense copies of ``params`` (one per sparse weight, same order)."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.dense = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def show(self, values: Sequence[Tensor]) -> None:
        """Put the weights the forward should use into the parameters."""
        torch._foreach_copy_(self.params, list(values))

    @torch.no_grad()
    def restore(self) -> None:
        """Parameters <- dense W (before the optimizer step)."""
        torch._foreach_copy_(self.params, self.dense)

    @torch.no_grad()
    def capture(self) -> None:
        """Dense W <- parameters (after the optimizer step)."""
        torch._foreach_copy_(self.dense, [p.detach() for p in self.params])

    def state_dict(self, names: Sequence[str]) -> dict[str, Tensor]:
        return {n: w.detach().cpu().clone() for n, w in zip(names, self.dense)}

    @torch.no_grad()
    def load_state_dict(self, names: Sequence[str], state: Mapping[str, Tensor]) -> None:
        for n, w in zip(names, self.dense):
            w.copy_(state[n])
