"""L0 gates: differentiable expected L0, reparametrised samples, the controller reaching the
target density on a small model, and hard exact binary masks at the end."""
from __future__ import annotations

import pytest
import torch
from zoo_helpers import Driver, context, tiny_mlp

from sparse_runner.utils.errors import UserError
from sparse_runner.methods import build_method
from sparse_runner.sparsity.gates import BernoulliSTE, HardConcrete


def test_expected_l0_is_differentiable():
    gate = HardConcrete()
    a = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gate.p_open(x).sum(), (a,))
    # Bernoulli-STE's expected L0 (and the lecture's polarising term) too.
    ste = BernoulliSTE(polarize=0.3)
    assert torch.autograd.gradcheck(lambda x: ste.p_open(x).sum() + ste.extra_penalty(x), (a,))


def test_hard_concrete_sample_is_reparametrised_and_matches_p_open():
    gate = HardConcrete()
    u = torch.tensor([0.3, 0.5, 0.6], dtype=torch.float64)      # interior of the stretch
    a = torch.tensor([0.0, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gate.sample(x, u), (a,))
    a = torch.full((200_000,), 0.7)
    u = torch.rand(a.shape, generator=torch.Generator().manual_seed(0))
    z = gate.sample(a, u)
    assert ((z == 0) | (z == 1)).float().mean() > 0.2           # exact zeros and ones occur
    assert float((z > 0).float().mean()) == pytest.approx(float(gate.p_open(a[:1])), abs=0.005)
    assert gate.init_value(0.8) == pytest.approx(torch.logit(torch.tensor(0.8)).item() + gate.shift)
    assert float(gate.p_open(torch.tensor(gate.init_value(0.8)))) == pytest.approx(0.8)


@pytest.mark.parametrize("gate", ["hard_concrete", "bernoulli_ste"])
def test_controller_reaches_the_target_and_masks_end_hard(gate):
    model = tiny_mlp(width=64)
    steps = 300
    method = build_method({"name": "l0", "gate": gate, "t_end": 0.5, "harden_at": 0.8,
                           "report_every": 1})
    ctx = context(model, 0.9, steps)
    method.setup(model, ctx)
    drive = Driver(method, model)
    drive.run(int(0.5 * steps))
    reached = []
    drive.run(int(0.3 * steps) - 1, on_step=lambda step, ev: reached.append(method.density()))
    for density in reached[-30:]:                       # tracking the target before hardening
        assert sum(density.values()) / 3 == pytest.approx(0.1, abs=0.03)
    event = drive.run(1)[0]                             # the hardening step
    assert event["hardened"] and event["global_sparsity"] == pytest.approx(0.9, abs=1e-3)
    nnz = [int(m.sum()) for m in method.masks.masks]
    assert nnz == [ctx.table[n].numel - int(0.9 * ctx.table[n].numel) for n in ctx.sparse]
    drive.run(steps - drive.step)
    for p, m in zip(method.masks.params, method.masks.masks):
        assert m.dtype == torch.bool
        assert not p.detach()[~m].any()                 # pruned weights stay exactly zero
    assert list(method.density().values()) == [k / m.numel() for k, m in zip(nnz, method.masks.masks)]
    model.eval()
    x, y = drive.batches[0]
    assert (model(x).argmax(1) == y).float().mean() > 0.5


def test_eval_uses_deterministic_gates_and_training_the_sampled_ones():
    model = tiny_mlp(width=16)
    method = build_method({"name": "l0"})
    method.setup(model, context(model, 0.5, 20))
    x = torch.randn(4, 64)
    layer = method.masks.params[0]
    model.eval()
    model(x)
    det = method.shadow.dense[0] * method.gate.deterministic(method.alpha[0].detach())
    assert torch.equal(layer.detach(), det)
    model.train()
    model(x)
    assert not torch.equal(layer.detach(), det)
    assert method.density()[method.masks.names[0]] == pytest.approx(0.8, abs=0.01)


def test_bad_options_are_one_line_errors():
    with pytest.raises(UserError, match="gate="):
        build_method({"name": "l0", "gate": "gumbel"})
    with pytest.raises(UserError, match="t_end"):
        build_method({"name": "l0", "t_end": 0.9, "harden_at": 0.5})


def test_isoflop_planning_averages_the_reference_schedule():
    model = tiny_mlp(width=32)
    method = build_method({"name": "l0", "init_density": 0.8, "t_end": 0.5, "harden_at": 0.75})
    ctx = context(model, 0.9, 40)
    method.prepare(model, ctx)
    table = ctx.table
    final = {n: (table[n].numel - int(0.9 * table[n].numel)) / table[n].numel for n in ctx.sparse}
    per_step = []
    for t in range(40):
        p = min(1.0, t / 20)
        per_step.append({n: f + (0.8 - f) * (1 - p) ** 3 if t < 30 else f for n, f in final.items()})
    expected = sum(table.sparse_fwd(d) for d in per_step) / 40
    assert method.mean_fwd_flops(table, ctx.sparse, 0.9, ctx.distribution) == pytest.approx(expected)
