"""``method=l0``: learned masks, stochastic gates with an expected-L0 penalty (Louizos et al.
2018, hard-concrete; or Bernoulli gates with a straight-through estimator).

The parameter holds ``W * z`` during forward/backward and the dense W between steps (a
:class:`~sparse_runner.sparsity.shadow.Shadow`); gates train with their own Adam. A PI
controller tunes each layer's penalty weight so its expected density follows a cubic ramp to
its final density; at ``harden_at`` the masks become hard with exact per-layer counts and the
rest of training fine-tunes a fixed sparse network. Details: docs/methods.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..data.base import mix_seed
from ..flops.tables import LayerTable, dense_grad_extra
from ..sparsity import host
from ..sparsity.gates import GATES, build_gate
from ..sparsity.masks import MaskManager
from ..sparsity.method import SetupContext, SparsityMethod, register
from ..sparsity.options import MethodOptions, check, check_choice
from ..sparsity.schedules import cubic_ramp, ramp_progress
from ..sparsity.shadow import Shadow
from ..sparsity.topk import top_per_layer


@dataclass
class L0Options(MethodOptions):
    gate: str = "hard_concrete"   # hard_concrete (Louizos et al.) | bernoulli_ste (straight-through)
    beta: float = 2 / 3           # hard-concrete temperature β (paper: 2/3)
    gamma: float = -0.1           # hard-concrete stretch interval (γ, ζ) (paper: -0.1, 1.1)
    zeta: float = 1.1
    polarize: float = 0.0         # bernoulli_ste: weight of Σ p(1-p), pushes probabilities to 0/1
    init_density: float = 0.8     # expected gate density P(z != 0) at init
    gate_lr: float = 0.2          # Adam learning rate of the gate parameters (tuned on digits)
    lambda_init: float = 0.0      # initial penalty weight λ (units of the data gradient's RMS)
    ki: float = 0.05              # PI controller: λ += ki * e + kp * (e - e_prev)
    kp: float = 2.0
    t_end: float = 0.6            # the reference density reaches its final value here
    harden_at: float = 0.8        # masks become hard (exact per-layer counts) here
    report_every: int = 20        # steps between density events (they refresh FLOP accounting)


@register("l0")
class L0(SparsityMethod):
    """Hard-concrete (or Bernoulli-STE) gates, PI-controlled L0 penalty, hard exact masks."""

    Options = L0Options
    condensed_unsupported = "gates the weights in its own forward hook (masks change every step)"

    def check_options(self) -> None:
        o = self.opts
        check_choice(self.name, "gate", o.gate, tuple(GATES))
        check(0.0 < o.init_density <= 1.0, self.name, f"init_density={o.init_density} must be "
              "in (0, 1]")
        check(0.0 < o.t_end <= o.harden_at <= 1.0, self.name, f"need 0 < t_end={o.t_end} <= "
              f"harden_at={o.harden_at} <= 1 (fractions of training)")

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        o = self.opts
        self.gate = build_gate(o.gate, beta=o.beta, gamma=o.gamma, zeta=o.zeta, polarize=o.polarize)
        self.init_density, self.t_end, self.harden_at = o.init_density, o.t_end, o.harden_at
        self.ki, self.kp = float(o.ki), float(o.kp)
        self.report_every = max(1, int(o.report_every))
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
        return cubic_ramp(start, final, ramp_progress(t, round(self.t_end * total)))

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
        nnz = ctx.nnz()
        self._final = [nnz[n] for n in ctx.sparse]
        self._start = self._start_densities([k / p.numel()
                                             for k, p in zip(self._final, self.masks.params)])
        self.alpha = []
        for i, (p, d0) in enumerate(zip(self.masks.params, self._start)):
            noise = torch.randn(p.shape, generator=self.rng(-1, i)).to(p.device)
            self.alpha.append((self.gate.init_value(d0) + 0.01 * noise).requires_grad_(True))
        # fused (as optim.py's): the unfused Adam reads its step count on the host per tensor
        fused = all(a.device.type in ("cpu", "cuda") for a in self.alpha) or None
        self.gate_opt = torch.optim.Adam(self.alpha, lr=float(self.opts.gate_lr), fused=fused)
        dev = self.alpha[0].device if self.alpha else None   # λ lives with the gates: no sync
        self._lam = torch.full((len(self.alpha),), float(self.opts.lambda_init), device=dev)
        self._err = torch.zeros(len(self.alpha), device=dev)
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
        if p.is_meta:   # no data and no generator there (tests/test_meta_step.py)
            return torch.empty_like(p)
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
            for a, g, lam in zip(self.alpha, grads, self._lam.unbind()):
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
            lam = host.read(self._lam.mean(), "L0 density event: mean penalty weight")
            return {"expected_density": self._expected_global(), "lambda": lam}
        return None

    @torch.no_grad()
    def _control(self, t: int) -> None:
        """PI law on λ_l with the relative density error of each layer (λ may turn negative:
        the density is an equality constraint, so its multiplier can also open gates)."""
        total = self.ctx.total_steps
        dens = self._gate_densities()
        ref = torch.tensor([self._reference(d0, k / a.numel(), t, total)
                            for a, d0, k in zip(self.alpha, self._start, self._final)],
                           dtype=dens.dtype, device=dens.device)
        err = (dens - ref) / ref        # on the device: the controller costs no host read
        self._lam += self.ki * err + self.kp * (err - self._err)
        self._err = err

    def _gate_densities(self) -> Tensor:
        """P(z != 0) per layer, a device tensor."""
        return torch.stack([self.gate.p_open(a.detach()).float().mean() for a in self.alpha])

    def _densities(self) -> list[float]:
        return host.read(self._gate_densities(), "L0 density event: expected gate densities")

    def _expected(self) -> dict[str, float]:
        return dict(zip(self.masks.names, self._densities()))

    def _expected_global(self) -> float:
        total = sum(a.numel() for a in self.alpha)
        return sum(d * a.numel() for d, a in zip(self._densities(), self.alpha)) / total

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
        return batch_size * dense_grad_extra(self.ctx.table, self.density())

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
                         lam=self._lam.cpu().clone(), err=self._err.cpu().clone(),
                         reported=dict(self._reported))
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
        self._lam = state["lam"].to(self._lam.device).clone()
        self._err = state["err"].to(self._err.device).clone()
        self._reported = dict(state["reported"])
