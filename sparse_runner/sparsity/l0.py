"""Learned masks: stochastic gates with an expected-L0 penalty whose weight a controller tunes.

Louizos et al. 2018 (hard-concrete gates, default) or the lecture's Bernoulli gates with a
straight-through estimator (``gate: bernoulli_ste``); see :mod:`.gates`. The loss is
``L(W ⊙ z) + Σ_l λ_l E[‖z_l‖₀]``; nothing in the training loop changes:

* the model's parameter holds ``W ⊙ z`` during forward/backward and the dense W between steps
  (:class:`~.shadow.Shadow`); a forward pre-hook shows the sampled gates in train mode and the
  deterministic test-time gates in eval mode. The gate gradient is then exact by the chain rule:
  ``dL/da = Σ dL/dW_eff ⊙ W ⊙ dz/da`` (one small autograd pass over the gates per step) and
  ``dL/dW = dL/dW_eff ⊙ z``. Gates train with their own Adam (``gate_lr``), saved for resume.
* Controller: every layer follows a reference density that falls on the Zhu & Gupta cubic from
  ``init_density`` to its final density (the configured ``distribution`` at s) by ``t_end`` of
  training. After each step, λ_l moves by a PI law on the relative error of the expected
  density ``mean P(z≠0)``: too dense -> λ grows, too sparse -> it shrinks, below 0 if needed
  (the density is an equality constraint, so its multiplier may also open gates). λ is in
  units of the data gradient: the penalty's gradient on the gates is rescaled to the RMS of
  the data gradient of that layer, so λ = 1 balances the two whatever the model's scale.
* At ``harden_at`` of training the masks become hard and exact: each layer keeps its
  ``planned_nnz`` gates with the largest ``a`` (the largest P(z≠0)), the test-time gate values
  are folded into the kept weights, and the rest of training fine-tunes a fixed sparse network,
  which FLOPs, export and summary.json treat like any other mask.

Iso-FLOP and FLOPs: the Iso-FLOP search matches the *planned* average forward FLOPs (reference
schedule, then the exact final density), as for other dense-to-sparse methods (Sparse-IFT
A.2); the true average depends on how closely the controller tracks, which training FLOPs
measure (``density()`` is the expected gate density, refreshed every ``report_every`` steps).
Hard-concrete adds no matmul FLOPs (zero gates get zero gradient); Bernoulli-STE needs the
dense weight gradient every step, charged as ``f_D - f_S`` per sample, as RigL's dense steps.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..data.base import mix_seed
from ..errors import UserError
from ..flops import LayerTable
from .base import SetupContext, SparsityMethod, planned_nnz, register
from .gates import GATES, build_gate
from .granet import cubic_ramp
from .masks import MaskManager
from .pai import top_per_layer
from .shadow import Shadow


@register("l0")
class L0(SparsityMethod):
    """Hard-concrete (or Bernoulli-STE) gates, PI-controlled L0 penalty, hard exact masks."""

    condensed_unsupported = "gates the weights in its own forward hook (masks change every step)"

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        c = self.cfg
        name = str(c.get("gate", "hard_concrete"))
        if name not in GATES:
            raise UserError(f"method=l0: gate={name!r}; valid: {', '.join(GATES)}")
        self.gate = build_gate(name, c)
        self.init_density = float(c.get("init_density", 0.8))
        self.t_end = float(c.get("t_end", 0.6))
        self.harden_at = float(c.get("harden_at", 0.8))
        self.ki, self.kp = float(c.get("ki", 0.05)), float(c.get("kp", 2.0))
        self.report_every = max(1, int(c.get("report_every", 20)))
        if not 0.0 < self.init_density <= 1.0:
            raise UserError(f"method=l0: init_density={self.init_density} must be in (0, 1]")
        if not 0.0 < self.t_end <= self.harden_at <= 1.0:
            raise UserError(f"method=l0: need 0 < t_end={self.t_end} <= harden_at="
                            f"{self.harden_at} <= 1 (fractions of training)")
        self.hardened = False
        self.alpha: list[Tensor] = []
        self.shadow: Shadow | None = None
        self.gate_opt: torch.optim.Optimizer | None = None
        self._final: list[int] = []
        self._start: list[float] = []
        self._lam = self._err = torch.zeros(0)
        self._noise: list[Tensor] | None = None
        self._shown: str | None = None
        self._step = 0
        self._reported: dict[str, float] = {}
        self._hook: Any = None

    # ---- planning ----------------------------------------------------------------------------
    def _start_densities(self, final: list[float]) -> list[float]:
        return [max(self.init_density, d) for d in final]

    def _reference(self, start: float, final: float, t: int, total: int) -> float:
        end = max(1, round(self.t_end * total))
        return cubic_ramp(start, final, min(1.0, t / end))

    def _harden_step(self, total: int) -> int:
        return min(max(1, round(self.harden_at * total)), max(1, total))

    def mean_fwd_flops(self, table: LayerTable, sparse: list[str], s: float,
                       distribution: Mapping[str, Any], extra_dense: int = 0) -> float:
        final = self.planned_density(table, sparse, s, distribution, extra_dense)
        total = self.ctx.total_steps if self.ctx is not None else 1000
        # Reference density f + (d0 - f) r(t) until hardening, then exactly f:
        # the mean over steps is f + (d0 - f) * sum_{t < hard} r(t) / total.
        ramp = sum(self._reference(1.0, 0.0, t, total) for t in range(self._harden_step(total)))
        start = self._start_densities([final[n] for n in sparse])
        return table.sparse_fwd({n: final[n] + (d0 - final[n]) * ramp / total
                                 for n, d0 in zip(sparse, start)})

    # ---- lifecycle ---------------------------------------------------------------------------
    def prepare(self, model: nn.Module, ctx: SetupContext) -> None:
        self.ctx = ctx

    def setup(self, model: nn.Module, ctx: SetupContext) -> None:
        self.ctx = ctx
        self.masks = MaskManager(model, ctx.sparse)
        nnz = planned_nnz(ctx.table, ctx.sparse, ctx.s, ctx.distribution, ctx.extra_dense)
        self._final = [nnz[n] for n in ctx.sparse]
        self._start = self._start_densities([k / p.numel()
                                             for k, p in zip(self._final, self.masks.params)])
        self.alpha = []
        for i, (p, d0) in enumerate(zip(self.masks.params, self._start)):
            noise = torch.randn(p.shape, generator=self.rng(-1, i)).to(p.device)
            self.alpha.append((self.gate.init_value(d0) + 0.01 * noise).requires_grad_(True))
        self.gate_opt = torch.optim.Adam(self.alpha, lr=float(self.cfg.get("gate_lr", 0.2)))
        self._lam = torch.full((len(self.alpha),), float(self.cfg.get("lambda_init", 0.0)))
        self._err = torch.zeros(len(self.alpha))
        self.shadow = Shadow(self.masks.params)
        self._step, self._shown, self._noise = 0, None, None
        self._reported = self._expected()
        if self._hook is not None:
            self._hook.remove()
        self._hook = model.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, module: nn.Module, args: Any) -> None:
        if self.hardened:
            return
        want = "train" if module.training else "eval"
        if self._shown == want:
            return
        if want == "train":
            self._noise = [self._uniform(self._step, i, p) for i, p in enumerate(self.masks.params)]
            gates = [self.gate.sample(a.detach(), u) for a, u in zip(self.alpha, self._noise)]
        else:
            gates = [self.gate.deterministic(a.detach()) for a in self.alpha]
        self.shadow.show([w * z for w, z in zip(self.shadow.dense, gates)])
        self._shown = want

    def _uniform(self, step: int, layer: int, p: Tensor) -> Tensor:
        """Gate noise for (step, layer) from a stateless generator on the weight's device."""
        gen = torch.Generator(device=p.device).manual_seed(mix_seed(self.ctx.seed, 0x10, step, layer))
        return torch.rand(p.shape, generator=gen, device=p.device, dtype=p.dtype)

    def before_optimizer_step(self, step: int) -> bool:
        if self.hardened:
            return super().before_optimizer_step(step)
        if self._shown != "train":      # no training forward since the last step (cannot happen
            return False                # in the loop; keeps the chain rule below well defined)
        data = 0.0
        zs = []
        for a, u, w, p in zip(self.alpha, self._noise, self.shadow.dense, self.masks.params):
            z = self.gate.sample(a, u)
            zs.append(z.detach())
            if p.grad is not None:
                data = data + (p.grad.detach() * w * z).sum()
            data = data + self.gate.extra_penalty(a)
        grads = torch.autograd.grad(data, self.alpha, allow_unused=True)
        with torch.no_grad():
            for a, g, lam in zip(self.alpha, grads, self._lam.tolist()):
                g = torch.zeros_like(a) if g is None else g
                p = self.gate.p_open(a)
                slope = p * (1 - p)                   # d P(z != 0) / da for both gate kinds
                scale = g.square().mean().sqrt() / slope.square().mean().sqrt().clamp_min(1e-12)
                a.grad = g + lam * scale * slope
        self.gate_opt.step()
        self.gate_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, z in zip(self.masks.params, zs):
                if p.grad is not None:
                    p.grad.mul_(z)
        self.shadow.restore()
        self._shown = "dense"
        return True

    def after_optimizer_step(self, step: int) -> dict[str, Any] | None:
        if self.hardened:
            return None
        if self._shown == "dense":          # the optimizer stepped the dense W: keep it
            self.shadow.capture()
        self._step = step + 1
        self._shown = None
        self._control(step + 1)
        if step + 1 >= self._harden_step(self.ctx.total_steps):
            return self._harden()
        if (step + 1) % self.report_every == 0:
            self._reported = self._expected()
            return {"expected_density": self._expected_global(), "lambda": self._lam.mean().item()}
        return None

    @torch.no_grad()
    def _control(self, t: int) -> None:
        """PI law on λ_l with the relative density error of each layer (λ may turn negative:
        the density is an equality constraint, so its multiplier can also open gates)."""
        total = self.ctx.total_steps
        err = torch.tensor([
            (self._density(a) - ref) / ref for a, ref in
            ((a, self._reference(d0, k / a.numel(), t, total))
             for a, d0, k in zip(self.alpha, self._start, self._final))])
        self._lam += self.ki * err + self.kp * (err - self._err)
        self._err = err

    def _density(self, a: Tensor) -> float:
        return float(self.gate.p_open(a.detach()).mean())

    def _expected(self) -> dict[str, float]:
        return {n: self._density(a) for n, a in zip(self.masks.names, self.alpha)}

    def _expected_global(self) -> float:
        total = sum(a.numel() for a in self.alpha)
        return sum(self._density(a) * a.numel() for a in self.alpha) / total

    @torch.no_grad()
    def _harden(self) -> dict[str, Any]:
        """Exact per-layer counts by gate parameter; test-time gate values folded into W."""
        keep = top_per_layer([a.detach() for a in self.alpha], self._final)
        folded = [w * self.gate.deterministic(a.detach()) for w, a in zip(self.shadow.dense, self.alpha)]
        self.shadow.show(folded)
        expected = self._expected_global()
        self.masks.set_masks({i: k for i, k in enumerate(keep)})
        self.hardened = True
        self.alpha, self.shadow, self.gate_opt, self._noise = [], None, None, None
        nnz = sum(self.masks.nnz())
        return {"hardened": True, "expected_density_before": expected,
                "global_sparsity": 1.0 - nnz / sum(m.numel() for m in self.masks.masks)}

    def extra_flops(self, step: int, batch_size: int) -> float:
        if self.hardened or not self.gate.dense_grad:
            return 0.0
        table = self.ctx.table
        return batch_size * sum(table[n].fwd_flops * (1.0 - d) for n, d in self.density().items())

    # ---- reporting / checkpoint --------------------------------------------------------------
    def density(self) -> dict[str, float]:
        """Hard masks once hardened; before, the expected gate density as of the last report
        (what the loop's FLOP accounting used since then, so a resume counts the same)."""
        if self.hardened or not self.alpha:
            return super().density()
        return dict(self._reported)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self._step, "hardened": self.hardened}
        if not self.hardened:
            names = self.masks.names
            state.update(alpha={n: a.detach().cpu().clone() for n, a in zip(names, self.alpha)},
                         dense=self.shadow.state_dict(names), gate_opt=self.gate_opt.state_dict(),
                         lam=self._lam.clone(), err=self._err.clone(), reported=dict(self._reported))
        return state

    def load_state_dict(self, state: Mapping[str, Any], masks: Mapping[str, Tensor]) -> None:
        super().load_state_dict(state, masks)
        self._step, self._shown, self._noise = int(state["step"]), None, None
        if state["hardened"]:
            self.hardened = True
            self.alpha, self.shadow, self.gate_opt = [], None, None
            return
        names = self.masks.names
        with torch.no_grad():
            for n, a in zip(names, self.alpha):
                a.copy_(state["alpha"][n])
        self.shadow.load_state_dict(names, state["dense"])
        self.gate_opt.load_state_dict(state["gate_opt"])
        self._lam = state["lam"].clone()
        self._err = state["err"].clone()
        self._reported = dict(state["reported"])
