"""SRigL specifics: ablation, the last layer, the dense fan-in guard, and the two reference fixes."""
from __future__ import annotations

import math

import pytest
import torch

from sparse_helpers import make, step
from sparse_runner.sparsity.fanin import constant_fanin, row_counts
from sparse_runner.methods.srigl import srigl_layer

SHAPES = [(8, 6, 3, 3), (16, 40), (10, 16)]


def test_row_cap_drops_the_smallest_extras():
    """When k shrinks (neurons revived), each row keeps its k largest |w| (reference: arbitrary)."""
    w = torch.tensor([[5.0, 1.0, 4.0, 2.0, 3.0, 0.0],
                      [0.5, 6.0, 0.1, 7.0, 0.2, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    mask = w != 0
    grad = torch.zeros_like(w)
    grad[2, :3] = torch.tensor([1.0, 3.0, 2.0])
    new = srigl_layer(w, mask, grad, n_prune=0, budget=9, k0=3, gamma_sal=0.3, ablatable=False)
    assert new.tolist() == [[True, False, True, False, True, False],
                            [True, True, False, True, False, False],
                            [False, True, True, False, False, True]]  # row 2 grew by |grad|


def test_dead_neuron_is_ablated_and_fan_in_grows():
    w = torch.randn(6, 10).abs() + 0.1
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[:, :4] = True
    w = w * mask
    w[0] = 0.0                                   # neuron 0: no weight, no gradient -> not salient
    grad = torch.randn(6, 10)
    grad[0] = 0.0
    new = srigl_layer(w, mask, grad, n_prune=6, budget=24, k0=4, gamma_sal=0.5, ablatable=True)
    counts = row_counts(new)
    assert counts[0] == 0 and bool((counts[1:] == 24 // 5).all())
    assert constant_fanin(new) == 4  # 24 // 5
    kept = srigl_layer(w, mask, grad, n_prune=6, budget=24, k0=4, gamma_sal=0.5, ablatable=False)
    assert bool((row_counts(kept) == 4).all())


def test_fan_in_never_exceeds_the_dense_fan_in():
    """Even a threshold no neuron meets keeps budget // fan_in + 1 neurons alive."""
    w = torch.randn(8, 5)
    mask = torch.ones(8, 5, dtype=torch.bool)
    mask[:, 4] = False                                   # 32 nonzeros, k = 4 of 5
    new = srigl_layer(w * mask, mask, torch.randn(8, 5), n_prune=8, budget=32, k0=4,
                      gamma_sal=1e6, ablatable=True)
    counts = row_counts(new)
    assert int((counts > 0).sum()) >= 32 // 5 + 1 and int(counts.max()) <= 5
    assert constant_fanin(new) is not None


def test_last_layer_and_no_ablation_patterns_are_never_ablated():
    def grad(i, j, p):
        g = torch.randn(p.shape, generator=torch.Generator().manual_seed(i * 10 + j))
        g[: p.shape[0] // 2] = 0.0                       # half the neurons get no gradient
        return g

    for no_ablation, protected in (([], {2}), (["ws.0"], {0, 2})):
        model, m, opt = make("srigl", SHAPES, 0.8, total_steps=12, delta_t=2, t_end=1.0,
                             gamma_sal=1e6, no_ablation=no_ablation)
        with torch.no_grad():
            for p in model.ws:
                p[: p.shape[0] // 2] = 0.0
        for i in range(6):
            step(model, m, opt, i, grad=grad)
        ablated = {j for j, a in enumerate(m.ablated().values()) if a.any()}
        assert ablated and not ablated & protected


def test_sparse_init_is_kaiming_over_the_sparse_fan_in():
    model, m, _ = make("srigl", [(256, 64, 3, 3), (10, 256)], 0.9)
    w, mask = m.masks.params[0].detach(), m.masks.masks[0]
    k = constant_fanin(mask)
    assert w[mask].var().item() == pytest.approx(2.0 / k, rel=0.05)  # not (2/k)^2 as the reference
    plain, m2, _ = make("srigl", [(256, 64, 3, 3), (10, 256)], 0.9, sparse_init=False)
    assert plain.ws[0][m2.masks.masks[0]].var().item() == pytest.approx(1.0, rel=0.05)


def test_planned_density_is_what_setup_builds():
    model, m, _ = make("srigl", SHAPES, 0.85, distribution="erk")
    planned = m.planned_density(m.ctx.table, m.ctx.sparse, 0.85, {"name": "erk"})
    assert planned == pytest.approx(m.density(), abs=0)
    total = sum(math.prod(s) for s in SHAPES)
    assert 0 <= (total - math.floor(0.85 * total)) - sum(m.masks.nnz()) < max(s[0] for s in SHAPES)


def test_state_dict_records_ablation():
    model, m, opt = make("srigl", SHAPES, 0.8, total_steps=6, delta_t=2, gamma_sal=1e6)
    for i in range(4):
        step(model, m, opt, i)
    state = m.state_dict()
    assert set(state["ablated"]) == set(m.masks.names)
    assert all(a.dtype == torch.bool for a in state["ablated"].values())
