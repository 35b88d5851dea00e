"""The precision policy: autocast dtype per setting, GradScaler under fp16 only."""
from __future__ import annotations

import pytest
import torch

from sparse_runner.utils.errors import UserError
from sparse_runner.precision import Precision, amp_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_dtype_per_setting_and_device():
    assert amp_dtype("auto", CPU) is None and amp_dtype("auto", CUDA) == torch.bfloat16
    assert amp_dtype("bf16", CPU) == torch.bfloat16 and amp_dtype("fp32", CUDA) is None
    assert amp_dtype("fp16", CUDA) == torch.float16
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        amp_dtype("fp16", CPU)
    with pytest.raises(UserError, match="valid: auto, fp32, bf16, fp16"):
        amp_dtype("fp8", CPU)


def _model() -> tuple[torch.nn.Linear, torch.optim.SGD]:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_fp32_and_bf16_are_plain_steps(dtype):
    p = Precision("cpu", dtype)
    assert not p.scaling and p.state_dict() == {}
    model, opt = _model()
    x = torch.randn(5, 8)
    with p.autocast():
        out = model(x)
    assert out.dtype == (dtype or torch.float32)
    p.backward(out.float().sum())
    want = model.weight.detach() - 0.1 * model.weight.grad
    p.step(opt)
    torch.testing.assert_close(model.weight.detach(), want, rtol=0, atol=1e-7)


def test_fp16_scaling_keeps_small_gradients_that_underflow_without_it():
    x = torch.randn(5, 8)
    grads = {}
    for scaled in (False, True):
        model, opt = _model()
        p = Precision("cpu", torch.float16) if scaled else Precision("cpu", None)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().sum() * 1e-9  # 1e-9: below fp16's smallest subnormal
        if scaled:
            p.backward(loss)
            assert p.scaling and model.weight.grad.abs().max() > 0
            p.unscale_(opt)
        else:
            loss.backward()
        grads[scaled] = model.weight.grad.clone()
    assert grads[False].abs().max() == 0
    want = x.sum(0).expand(4, 8) * 1e-9
    torch.testing.assert_close(grads[True], want, rtol=2e-2, atol=1e-12)


def test_fp16_overflow_skips_the_step_and_halves_the_scale():
    model, opt = _model()
    p = Precision("cpu", torch.float16)
    before = model.weight.detach().clone()
    scale = p.scaler.get_scale()
    with p.autocast():
        loss = model(torch.full((2, 8), 1e4)).float().sum() * float("inf")
    p.backward(loss)
    p.step(opt)
    assert torch.equal(model.weight.detach(), before) and p.scaler.get_scale() == scale / 2
    state = p.state_dict()
    q = Precision("cpu", torch.float16)
    q.load_state_dict(state)
    assert q.scaler.get_scale() == scale / 2


def test_training_step_scales_under_fp16_and_skips_an_overflowing_step():
    """TrainStep with precision=: scaled backward, GradScaler step, skipped on inf."""
    from sparse_runner.methods import build_method
    from sparse_runner.step import TrainStep

    model, opt = _model()
    p = Precision("cpu", torch.float16)
    step = TrainStep(model, build_method({"name": "dense"}), opt, torch.nn.functional.mse_loss,
                     precision=p)
    x, y = torch.randn(6, 8), torch.randn(6, 4)
    before = model.weight.detach().clone()
    r = step(0, iter([(x, y)]))
    assert bool(r.finite) and not torch.equal(model.weight.detach(), before)
    scale = p.scaler.get_scale()
    before = model.weight.detach().clone()
    r = step(1, iter([(x, torch.full_like(y, float("inf")))]))
    assert not bool(r.finite) and torch.equal(model.weight.detach(), before)
    assert p.scaler.get_scale() == scale / 2
