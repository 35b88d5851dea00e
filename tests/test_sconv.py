"""The direct sparse Conv2d operators (sparse_run::sconv_*) against dense F.conv2d in float64.

Every instruction set this CPU supports, every dtype, strides 1/2/3, padding, kernel sizes
1..5 (non-square), odd shapes, batches that are not a multiple of the 64-byte chunk, the
empty batch, source channels cut in several bands (and one band per channel); padded ELL slots never contribute and never get a gradient; gradcheck,
opcheck and torch.compile.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad

from sparse_runner.kernels import build, sconv2d
from sparse_runner.kernels.sconv_ops import dense_conv_weight, ell_from_mask

ops = torch.ops.sparse_run
HAS_EXT = build.ensure("cpu") == "extension"
ISAS = ("base", "avx2", "avx512")


def _isas() -> list[str]:
    if not HAS_EXT:
        return []
    best = torch.ops.sparse_run_cpu.isa()
    return [i for i in ISAS if ISAS.index(i) <= ISAS.index(best)]


@pytest.fixture(params=_isas() or [None])
def isa(request):
    if request.param is None:
        pytest.skip("compiled CPU kernels unavailable")
    best = torch.ops.sparse_run_cpu.isa()
    torch.ops.sparse_run_cpu.isa(request.param)
    yield request.param
    torch.ops.sparse_run_cpu.isa(best)


def problem(b, c, o, h, w, kernel, density=0.3, seed=0):
    """A random masked weight as (dense float64 weight, ELL values float64, index), and x."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(o, c, *kernel, generator=g) < density
    mask[0] = False                                   # an empty row: all slots padded
    idx = ell_from_mask(mask)
    w_dense = torch.randn(o, c, *kernel, generator=g, dtype=torch.float64) * mask
    values = w_dense.flatten(1).gather(1, idx.clamp(min=0).long())
    values = torch.where(idx >= 0, values, torch.full_like(values, 7.0))  # junk in the pads
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    return w_dense, values, idx, x


TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=1e-4),
       torch.bfloat16: dict(atol=6e-2, rtol=3e-2)}
# (batch, C, O, H, W, kernel, stride, padding)
CASES = [(3, 5, 7, 9, 11, (3, 3), (1, 1), (1, 1)), (17, 4, 6, 8, 8, (3, 3), (2, 2), (1, 1)),
         (2, 3, 4, 7, 6, (1, 1), (2, 2), (0, 0)), (5, 3, 4, 10, 9, (5, 3), (2, 1), (2, 0)),
         (33, 8, 5, 4, 4, (3, 3), (1, 1), (2, 2)), (1, 2, 3, 5, 5, (2, 4), (3, 2), (1, 3)),
         (40, 6, 9, 7, 7, (3, 3), (2, 2), (1, 1)), (0, 3, 4, 6, 6, (3, 3), (1, 1), (1, 1)),
         (6, 40, 24, 12, 12, (3, 3), (1, 1), (1, 1)),  # several source-channel bands
         (20, 5, 6, 8, 16, (3, 3), (1, 1), (1, 1)), (18, 4, 5, 8, 8, (3, 3), (1, 1), (1, 1))]
# the last two: weight-gradient tiles that are two runs of consecutive units (within a row
# of 16, two rows of 8)


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "b{}_c{}_o{}_{}x{}_k{}_s{}_p{}".format(*c))
def test_ops_match_dense_conv(isa, dtype, case):
    b, c, o, h, w, kernel, stride, padding = case
    w_dense, values, idx, x = problem(b, c, o, h, w, kernel, seed=b)
    geom = (list(kernel), list(stride), list(padding))
    y = F.conv2d(x, w_dense, stride=stride, padding=padding)
    gy = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    # the oracle sees the inputs rounded to dtype, as the kernels do
    xr, gyr, vr = (t.to(dtype) for t in (x, gy, values))
    wr = dense_conv_weight(vr.double(), idx, c, kernel)
    want = {"y": F.conv2d(xr.double(), wr, stride=stride, padding=padding),
            "dx": nn_grad.conv2d_input(x.shape, wr, gyr.double(), stride=stride, padding=padding),
            "dv": nn_grad.conv2d_weight(xr.double(), w_dense.shape, gyr.double(), stride=stride,
                                        padding=padding).flatten(1)
            .gather(1, idx.clamp(min=0).long()) * (idx >= 0)}
    got = {"y": ops.sconv_forward(xr, vr, idx, *geom),
           "dx": ops.sconv_backward_input(gyr, vr, idx, [c, h, w], *geom),
           "dv": ops.sconv_backward_weight(gyr, xr, idx, *geom)}
    for key in want:
        assert got[key].dtype == dtype
        torch.testing.assert_close(got[key].double(), want[key], **TOL[dtype], msg=key)
    assert not got["dv"][idx < 0].any()             # padded slots never train


def test_ell_from_mask_pads_with_minus_one():
    mask = torch.zeros(3, 2, 1, 2, dtype=torch.bool)
    mask[0, 1, 0, 1] = mask[0, 0, 0, 0] = mask[2, 1, 0, 0] = True
    assert ell_from_mask(mask).tolist() == [[0, 3], [-1, -1], [2, -1]]


def test_gradcheck_and_gradgradcheck():
    _, values, idx, x = problem(3, 3, 4, 5, 6, (3, 2), density=0.5, seed=1)
    values.requires_grad_(True)
    x.requires_grad_(True)
    for stride, padding in (((1, 1), (1, 0)), ((2, 2), (1, 1))):
        f = lambda x_, v_: sconv2d(x_, v_, idx, None, (3, 2), stride, padding)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, values))
        assert torch.autograd.gradgradcheck(f, (x, values))


def test_opcheck():
    _, values, idx, x = problem(5, 3, 4, 6, 5, (3, 3), seed=2)
    geom = ([3, 3], [2, 1], [1, 1])
    gy = torch.randn(5, 4, 3, 5, dtype=torch.float64)
    v, xx = values.float().requires_grad_(), x.float().requires_grad_()
    torch.library.opcheck(ops.sconv_forward, (xx, v, idx, *geom))
    torch.library.opcheck(ops.sconv_backward_input, (gy.float(), v, idx, [3, 6, 5], *geom))
    torch.library.opcheck(ops.sconv_backward_weight, (gy.float(), xx, idx, *geom))


def test_compile_fullgraph():
    _, values, idx, x = problem(4, 3, 5, 6, 6, (3, 3), seed=4)
    bias = torch.randn(5, dtype=torch.float64)

    def f(x_, v_):
        return sconv2d(x_, v_, idx, bias, (3, 3), (1, 1), (1, 1)).square().sum()

    v1, v2 = values.clone().requires_grad_(), values.clone().requires_grad_()
    f(x, v1).backward()
    torch.compile(f, fullgraph=True, backend="aot_eager")(x, v2).backward()
    torch.testing.assert_close(v2.grad, v1.grad)


def test_bad_index_is_a_value_error():
    _, values, idx, x = problem(2, 3, 4, 5, 5, (3, 3), seed=5)
    bad = idx.clone()
    bad[1, 0] = 3 * 9
    with pytest.raises(ValueError, match="index entries must be -1"):
        ops.sconv_forward(x, values, bad, [3, 3], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="larger than the padded input"):
        ops.sconv_forward(x[:, :, :2, :2], values, idx, [3, 3], [1, 1], [0, 0])


def test_one_channel_bands():
    """Budgets of 1 byte: every source channel is its own band (most bands of a row empty),
    in the forward, the input gradient and the weight gradient; same float64 checks."""
    env = {**os.environ, "SPARSE_RUN_SCONV_L1": "1", "SPARSE_RUN_SCONV_L2": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__,
           "-k", "test_ops_match_dense_conv and (float64 or float32) and not b0_"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_inference_batches_go_in_slices_with_the_same_result(monkeypatch):
    """Without autograd, batches above INFERENCE_SLICE run in slices into one output (bounded
    copies): the result must equal one call, bias included, for a batch that is not a
    multiple of the slice."""
    from sparse_runner.kernels import sconv_ops
    w_dense, values, idx, x = problem(23, 5, 7, 6, 6, (3, 3))
    bias = torch.randn(7, dtype=torch.float64)
    want = torch.nn.functional.conv2d(x, w_dense, bias, stride=2, padding=1)
    calls = []
    real = sconv_ops.ops.sconv_forward
    monkeypatch.setattr(sconv_ops, "INFERENCE_SLICE", 8)
    monkeypatch.setattr(sconv_ops, "ops", type("O", (), {"sconv_forward": staticmethod(
        lambda xx, *a: calls.append(xx.shape[0]) or real(xx, *a))}))
    with torch.no_grad():
        got = sconv_ops.sconv2d(x, values, idx, bias, (3, 3), (2, 2), (1, 1))
    assert calls == [8, 8, 7]
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    calls.clear()
    got = sconv_ops.sconv2d(x, values.requires_grad_(), idx, bias, (3, 3), (2, 2), (1, 1))
    assert calls == [23]      # with autograd: one call (the backward needs the whole batch)
    torch.testing.assert_close(got.detach(), want, atol=1e-10, rtol=1e-10)
