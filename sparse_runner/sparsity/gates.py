"""Stochastic weight gates for learned masks: hard-concrete (L0) and Bernoulli + straight-through.

Each gate has a free parameter ``a`` per weight; the forward uses ``W ⊙ z`` with ``z`` sampled
from noise ``u ~ U(0, 1)`` (supplied by the caller, so sampling is reproducible and resumable).

* :class:`HardConcrete` (Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks
  through L0 Regularization"): ``s = sigmoid((log u - log(1-u) + a) / β)``, stretched to
  ``(γ, ζ)`` and clamped to [0, 1]. ``P(z ≠ 0) = sigmoid(a - β log(-γ/ζ))`` is a smooth function
  of ``a``: the expected L0 norm is differentiable, and z is exactly 0 or 1 with finite
  probability, so the gradient reaches ``a`` by reparametrisation (no estimator needed).
  Test-time gate: ``clamp(sigmoid(a)(ζ-γ)+γ, 0, 1)``. β = 2/3, γ = -0.1, ζ = 1.1 (the paper's).
* :class:`BernoulliSTE` (the lecture's probabilistic gate, after Srinivas et al. 2017):
  ``p = sigmoid(a)``, ``m ~ Bernoulli(p)``, straight-through ``∂m/∂p = 1``; expected L0 = Σ p,
  and the optional ``polarize`` term ``Σ p(1-p)`` pushes p towards 0 or 1. Test-time gate:
  ``p > 0.5``. Its gradient needs dL/dW_eff at every position (dense weight gradient).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class HardConcrete:
    name = "hard_concrete"
    dense_grad = False     # z = 0 (clamped) gives a zero gradient: no dense weight gradient needed

    def __init__(self, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1) -> None:
        if not (gamma < 0.0 and zeta > 1.0 and beta > 0.0):
            raise ValueError("hard-concrete needs gamma < 0 < 1 < zeta and beta > 0")
        self.beta, self.gamma, self.zeta = beta, gamma, zeta
        self.shift = beta * math.log(-gamma / zeta)

    def init_value(self, density: float) -> float:
        """``a`` whose expected gate density P(z != 0) equals ``density``."""
        density = min(max(density, 1e-6), 1 - 1e-6)
        return math.log(density / (1 - density)) + self.shift

    def sample(self, a: Tensor, u: Tensor) -> Tensor:
        u = u.clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + a) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def p_open(self, a: Tensor) -> Tensor:
        """P(z != 0) per gate: the expected L0 norm is its sum (differentiable in ``a``)."""
        return torch.sigmoid(a - self.shift)

    def deterministic(self, a: Tensor) -> Tensor:
        return (torch.sigmoid(a) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def extra_penalty(self, a: Tensor) -> Tensor | float:
        return 0.0


class BernoulliSTE:
    name = "bernoulli_ste"
    dense_grad = True

    def __init__(self, polarize: float = 0.0) -> None:
        self.polarize = polarize

    def init_value(self, density: float) -> float:
        density = min(max(density, 1e-6), 1 - 1e-6)
        return math.log(density / (1 - density))

    def sample(self, a: Tensor, u: Tensor) -> Tensor:
        p = torch.sigmoid(a)
        m = (u < p).to(p.dtype)
        return m + p - p.detach()          # value m, gradient as if dm/dp = 1

    def p_open(self, a: Tensor) -> Tensor:
        return torch.sigmoid(a)

    def deterministic(self, a: Tensor) -> Tensor:
        return (torch.sigmoid(a) > 0.5).to(a.dtype)

    def extra_penalty(self, a: Tensor) -> Tensor | float:
        """The lecture's λ2 Σ p(1-p) (weight ``polarize``, not scaled by the controller)."""
        if not self.polarize:
            return 0.0
        p = torch.sigmoid(a)
        return self.polarize * (p * (1 - p)).sum()


def build_gate(name: str, beta: float = 2 / 3, gamma: float = -0.1, zeta: float = 1.1,
               polarize: float = 0.0) -> HardConcrete | BernoulliSTE:
    """The gate kind ``name`` (one of GATES) with its parameters."""
    if name == HardConcrete.name:
        return HardConcrete(float(beta), float(gamma), float(zeta))
    if name == BernoulliSTE.name:
        return BernoulliSTE(float(polarize))
    raise ValueError(name)


GATES = (HardConcrete.name, BernoulliSTE.name)
