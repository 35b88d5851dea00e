"""SNIP / GraSP / FORCE on a tiny MLP: the chosen masks equal masks computed independently
(plain autograd, a full Hessian, an explicit loop over the ranking) with exact global counts."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo_helpers import context, digit_batches

from sparse_runner.methods import build_method
from sparse_runner.methods.force import keep_schedule
from sparse_runner.sparsity.distributions import keep_budget


def small_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 10))


BATCHES = digit_batches(n=3, size=40)
N = 64 * 6 + 6 * 5 + 5 * 10          # weights of small_net


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model if isinstance(m, nn.Linear)]


def top_k_by_loop(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Reference selection: visit every weight, sort (score, position) descending, take k."""
    entries = [(float(v), li, j) for li, sc in enumerate(scores)
               for j, v in enumerate(sc.detach().flatten())]
    entries.sort(key=lambda e: -e[0])
    masks = [torch.zeros(sc.numel(), dtype=torch.bool) for sc in scores]
    for _, li, j in entries[:k]:
        masks[li][j] = True
    return [m.view(sc.shape) for m, sc in zip(masks, scores)]


def build(model: nn.Module, name: str, s: float, **cfg) -> list[torch.Tensor]:
    """Masks the method builds on a copy of ``model`` (setup zeroes the pruned weights)."""
    model = copy.deepcopy(model)
    method = build_method({"name": name, **cfg})
    ctx = context(model, s, 10, batches=BATCHES)
    method.prepare(model, ctx)
    method.setup(model, ctx)
    return method.masks.masks


def plain_grads(model: nn.Module, batches, scale: float = 1.0) -> list[torch.Tensor]:
    model.zero_grad()
    for x, y in batches:
        (F.cross_entropy(model(x) / scale, y) / len(batches)).backward()
    grads = [w.grad.clone() for w in weights(model)]
    model.zero_grad()
    return grads


def assert_same(masks: list[torch.Tensor], expected: list[torch.Tensor], k: int) -> None:
    assert sum(int(m.sum()) for m in masks) == k
    for m, e in zip(masks, expected):
        assert torch.equal(m, e)


@pytest.mark.parametrize("s", [0.5, 0.9])
def test_snip_mask_is_the_global_top_k_of_w_times_grad(s):
    model = small_net()
    expected_scores = [(w * g).abs() for w, g in zip(weights(model), plain_grads(model, BATCHES[:2]))]
    masks = build(model, "snip", s, num_batches=2)
    k = keep_budget(context(model, s, 1).table, context(model, s, 1).sparse, s, 0)
    assert k == N - int(s * N)
    assert_same(masks, top_k_by_loop(expected_scores, k), k)


def test_snip_per_layer_allocation_uses_the_distribution_counts():
    model = small_net()
    scores = [(w * g).abs() for w, g in zip(weights(model), plain_grads(model, BATCHES[:1]))]
    masks = build(model, "snip", 0.8, allocation="per_layer")
    for m, sc in zip(masks, scores):
        k = sc.numel() - int(0.8 * sc.numel())
        assert int(m.sum()) == pytest.approx(k, abs=1)        # uniform split, exact total
        assert torch.equal(m, top_k_by_loop([sc], int(m.sum()))[0])
    assert sum(int(m.sum()) for m in masks) == N - int(0.8 * N)


def test_grasp_mask_removes_the_largest_minus_theta_hg():
    model = small_net()
    x, y = BATCHES[0]
    temp = 200.0
    params = weights(model)
    flat = torch.cat([w.detach().flatten() for w in params]).double().requires_grad_(True)
    sizes = [w.numel() for w in params]

    def loss_of(vec: torch.Tensor) -> torch.Tensor:
        ws = [v.view(w.shape) for v, w in zip(vec.split(sizes), params)]
        h = torch.tanh(x.double() @ ws[0].T + model[0].bias.double())
        h = torch.tanh(h @ ws[1].T + model[2].bias.double())
        return F.cross_entropy((h @ ws[2].T + model[4].bias.double()) / temp, y)

    g = torch.autograd.grad(loss_of(flat), flat)[0]
    hessian = torch.autograd.functional.hessian(loss_of, flat.detach())
    minus_score = -(flat.detach() * (hessian @ g))          # GraSP's S; remove the largest
    keep_scores = [-v.view(w.shape) for v, w in zip(minus_score.split(sizes), params)]
    masks = build(model, "grasp", 0.7, samples_per_class=100, chunk_size=1000, max_batches=1)
    # max_batches=1 with room for every class: the sample is exactly the first batch.
    k = N - int(0.7 * N)
    assert_same(masks, top_k_by_loop([s.float() for s in keep_scores], k), k)


def test_force_two_steps_by_hand():
    model = small_net()
    s, steps = 0.9, 2
    k1, k2 = keep_schedule(N, N - int(s * N), steps, "exp")
    assert k2 == 47 and k1 == round(N * (47 / N) ** 0.5)
    theta = [w.detach().clone() for w in weights(model)]
    sal1 = [(t * g).abs() for t, g in zip(theta, plain_grads(model, BATCHES[:1]))]
    m1 = top_k_by_loop(sal1, k1)
    with torch.no_grad():                                   # evaluate at θ0 ⊙ m1 (no hooks)
        for w, t, m in zip(weights(model), theta, m1):
            w.copy_(t * m)
    g2 = plain_grads(model, BATCHES[1:2])
    with torch.no_grad():
        for w, t in zip(weights(model), theta):
            w.copy_(t)
    force = [(t * g).abs() for t, g in zip(theta, g2)]
    assert_same(build(model, "force", s, num_steps=steps), top_k_by_loop(force, k2), k2)
    # Iter-SNIP: saliency on the survivors only, pruned weights never return.
    iter_snip = [torch.where(m, (t * m * g).abs(), torch.tensor(-1.0)) for t, m, g in zip(theta, m1, g2)]
    masks = build(model, "force", s, num_steps=steps, variant="iter_snip")
    assert_same(masks, top_k_by_loop(iter_snip, k2), k2)
    assert all(not (m & ~prev).any() for m, prev in zip(masks, m1))


def test_keep_schedules_are_monotone_and_end_at_the_budget():
    exp = keep_schedule(1000, 100, 60, "exp")
    lin = keep_schedule(1000, 100, 4, "linear")
    assert exp[-1] == 100 and all(a >= b for a, b in zip(exp, exp[1:]))
    assert exp[29] == round(1000 * 0.1 ** 0.5)
    assert lin == [775, 550, 325, 100]


@pytest.mark.parametrize("name,cfg", [("snip", {}), ("grasp", {}), ("force", {"num_steps": 3}),
                                      ("force", {"num_steps": 3, "variant": "iter_snip"})])
def test_planning_prices_exactly_the_masks_setup_builds(name, cfg):
    """The Iso-FLOP search re-thresholds the stored ranking; setup at the searched s must
    produce exactly the per-layer counts it priced, and scoring leaves the model untouched."""
    model = nn.Sequential(nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = build_method({"name": name, **cfg})
    ctx = context(model, 0.8, 10, batches=BATCHES)
    method.prepare(model, ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    planned = {s: method.planned_density(ctx.table, ctx.sparse, s, ctx.distribution)
               for s in (0.5, 0.73, 0.95)}
    fwd = [method.mean_fwd_flops(ctx.table, ctx.sparse, s, ctx.distribution) for s in (0.5, 0.73, 0.95)]
    assert fwd[0] > fwd[1] > fwd[2]
    ctx.s = 0.73
    method.setup(model, ctx)
    got = method.density()
    assert got == pytest.approx(planned[0.73], abs=0)
    total = sum(ctx.table[n].numel for n in ctx.sparse)
    assert sum(method.masks.nnz()) == total - int(0.73 * total)
    assert method.extra_flops(0, 64) > 0 and method.extra_flops(1, 64) == 0


def test_zero_initialised_residual_scales_do_not_zero_the_scores():
    """With zero_init_residual the branch gradients vanish at init; scoring revives the scale."""
    model = nn.Sequential(nn.Linear(64, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10))
    nn.init.zeros_(model[1].weight)
    method = build_method({"name": "snip"})
    ctx = context(model, 0.5, 10, batches=BATCHES)
    method.prepare(model, ctx)
    assert float(method.keys[0].gt(0).float().mean()) > 0.7      # 0 everywhere without revival
    assert not bool(model[1].weight.any())
