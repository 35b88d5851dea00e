"""fp16 with a real GradScaler (CPU): RigL's growth scores read unscaled gradients, and an
overflow step gives finite scores (and no optimizer step) instead of inf."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from meta_helpers import Config, batch, build
from sparse_runner.step import TrainStep


def _dense_grads_at_update(cfg: Config, scaling: bool, init_scale: float = 2.0 ** 16):
    """Run steps 0 and 1 (step 1 updates the masks); the dense gradients the update read."""
    model, method, opt = build(cfg)
    precision = cfg.precision_object()
    if scaling:
        precision.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    else:   # the same fp16 autocast, no loss scaling: the true gradient of this tiny model
        precision.scaler = torch.amp.GradScaler("cpu", enabled=False)
    seen = []
    new_masks = method.new_masks

    def spy(step, fraction):
        seen.extend(method.dense_grad(i).clone() for i in range(len(method.masks)))
        return new_masks(step, fraction)

    method.new_masks = spy
    step = TrainStep(model, method, opt, nn.functional.cross_entropy, precision=precision)
    data = (batch(i) for i in range(2))
    events = [step(i, data).event for i in range(2)]
    assert events[0] is None and events[1] is not None
    return seen, method, precision


@pytest.mark.parametrize("backend", ["masked", "condensed"])
def test_growth_scores_read_unscaled_gradients(backend):
    cfg = Config("rigl", backend, precision="fp16")
    scaled, _, precision = _dense_grads_at_update(cfg, scaling=True)
    true, _, _ = _dense_grads_at_update(cfg, scaling=False)
    assert precision.scaler.get_scale() == 2.0 ** 16   # scaling was on, no overflow
    for s, t in zip(scaled, true):
        assert torch.allclose(s, t, rtol=2e-2, atol=1e-3 * t.abs().max()), (s - t).abs().max()  # fp16 rounding


@pytest.mark.parametrize("backend", ["masked", "condensed"])
def test_an_overflow_step_gives_finite_growth_scores(backend):
    cfg = Config("rigl", backend, precision="fp16")
    seen, method, precision = _dense_grads_at_update(cfg, scaling=True, init_scale=1e30)
    assert precision.scaler.get_scale() < 1e30   # both steps overflowed: the scale backed off
    assert all(torch.isfinite(g).all() for g in seen)
    assert sum(method.masks.nnz()) == sum(method.ctx.nnz().values())   # exact counts kept
