"""The sparse_run::cfi_* operators against the pure-PyTorch reference (the oracle).

The compiled CPU kernels are built on first use (cached in TORCH_EXTENSIONS_DIR); every
instruction set this CPU supports is exercised. Without a compiler the kernel rows are
skipped and the reference path is what runs (and test_kernels_build covers it).
"""
from __future__ import annotations

import pytest
import torch

from sparse_runner.kernels import build, cfi_linear, packed, reference

ops = torch.ops.sparse_run
HAS_EXT = build.ensure("cpu") == "extension"
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="compiled CPU kernels unavailable")


def _isas() -> list[str]:
    if not HAS_EXT:
        return []
    best = torch.ops.sparse_run_cpu.isa()
    return [i for i in ("base", "avx2", "avx512") if ("base", "avx2", "avx512").index(i)
            <= ("base", "avx2", "avx512").index(best)]


@pytest.fixture(params=_isas() or [None])
def isa(request):
    """Run a test once per instruction set, restoring the best one afterwards."""
    if request.param is None:
        pytest.skip("compiled CPU kernels unavailable")
    best = torch.ops.sparse_run_cpu.isa()
    torch.ops.sparse_run_cpu.isa(request.param)
    yield request.param
    torch.ops.sparse_run_cpu.isa(best)


def random_cfi(n_out: int, n_in: int, k: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n_out, n_in, generator=g).argsort(1)[:, :k].sort(1).values.int()
    return torch.randn(n_out, k, generator=g, dtype=torch.float64).to(dtype), idx


def tol(dtype):
    return {torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float32: dict(atol=1e-4, rtol=1e-4),
            torch.float64: dict(atol=1e-10, rtol=1e-10)}[dtype]


# (batch, n_in, n_out, k): batch 1 and odd sizes, k from 1 to n_in, both kernel layouts
SHAPES = [(1, 37, 19, 5), (1, 16, 8, 16), (3, 64, 33, 1), (7, 50, 20, 50), (8, 100, 50, 7),
          (17, 40, 23, 40), (33, 300, 70, 30), (130, 65, 129, 9), (257, 50, 20, 11)]


def _layouts(x: torch.Tensor, which: str) -> torch.Tensor:
    if which == "transposed":  # non-contiguous: a transposed view
        return x.t().contiguous().t()
    if which == "strided":  # non-contiguous: every other column of a wider tensor
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    return x


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_in{}_out{}_k{}".format(*s))
def test_ops_match_reference(isa, dtype, shape):
    batch, n_in, n_out, k = shape
    values, idx = random_cfi(n_out, n_in, k, dtype, seed=batch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n_in, generator=g, dtype=torch.float64).to(dtype)
    gy = torch.randn(batch, n_out, generator=g, dtype=torch.float64).to(dtype)
    bias = torch.randn(n_out, generator=g, dtype=torch.float64).to(dtype)
    d = lambda t: t.double()  # noqa: E731 (the oracle runs in float64)
    layout = ("contiguous", "transposed", "strided")[batch % 3]
    x_in, gy_in = _layouts(x, layout), _layouts(gy, layout)
    t_index = ops.cfi_transpose_index(idx, n_in)
    torch.testing.assert_close(t_index, reference.transpose_index(idx, n_in), rtol=0, atol=0)
    torch.testing.assert_close(ops.cfi_forward(x_in, values, idx, bias),
                               reference.forward(d(x), d(values), idx, d(bias)).to(dtype),
                               **tol(dtype))
    want_dx = reference.backward_input(d(gy), d(values), idx, n_in).to(dtype)
    for t in (t_index, None):
        torch.testing.assert_close(ops.cfi_backward_input(gy_in, values, idx, n_in, t), want_dx,
                                   **tol(dtype))
    torch.testing.assert_close(ops.cfi_backward_weight(gy_in, x_in, idx),
                               reference.backward_weight(d(gy), d(x), idx).to(dtype), **tol(dtype))
    if dtype != torch.float64:  # the packed inference layout (float32 / bfloat16 only)
        p = packed.pack(values, idx, n_in)
        torch.testing.assert_close(packed.unpack(p, n_out, n_in),
                                   reference.dense_weight(values, idx, n_in))
        torch.testing.assert_close(ops.cfi_forward_packed(x_in, *p, bias, n_out),
                                   reference.forward(d(x), d(values), idx, d(bias)).to(dtype),
                                   **tol(dtype))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES + [(1024, 3072, 768, 307), (4096, 512, 256, 64)],
                         ids=lambda s: "b{}_in{}_out{}_k{}".format(*s))
def test_cuda_ops_match_reference(dtype, shape):
    """The GPU (Triton) kernels against the float64 CPU reference: outputs and all gradients."""
    assert build.ensure("cuda") == "triton", build.status()
    batch, n_in, n_out, k = shape
    values, idx = random_cfi(n_out, n_in, k, dtype, seed=batch)
    g = torch.Generator().manual_seed(2)
    # inputs rounded to dtype first, so the float64 oracle sees exactly what the kernels see
    x, gy = (torch.randn(batch, n, generator=g, dtype=torch.float64).to(dtype).double()
             for n in (n_in, n_out))
    bias = torch.randn(n_out, generator=g, dtype=torch.float64).to(dtype).double()
    cuda = lambda t: t.to(dtype).cuda()  # noqa: E731
    want = {"y": reference.forward(x, values.double(), idx, bias),
            "dx": reference.backward_input(gy, values.double(), idx, n_in),
            "dv": reference.backward_weight(gy, x, idx)}
    ci = idx.cuda()
    got = {"y": ops.cfi_forward(cuda(x), cuda(values), ci, cuda(bias)),
           "dx": ops.cfi_backward_input(cuda(gy), cuda(values), ci, n_in,
                                        ops.cfi_transpose_index(ci, n_in)),
           "dv": ops.cfi_backward_weight(cuda(gy), cuda(x), ci)}
    torch.testing.assert_close(ops.cfi_transpose_index(ci, n_in).cpu(),
                               reference.transpose_index(idx, n_in))
    for name in want:
        torch.testing.assert_close(got[name].cpu(), want[name].to(dtype), **tol(dtype),
                                   msg=lambda m: f"{name}: {m}")


@needs_ext
@pytest.mark.parametrize("shape", [(1, 20, 9, 3), (12, 31, 17, 31), (40, 24, 10, 1)])
def test_autograd_matches_dense(shape):
    """All gradients (x, values, bias) of cfi_linear equal those of the equivalent dense layer."""
    batch, n_in, n_out, k = shape
    values, idx = random_cfi(n_out, n_in, k)
    values.requires_grad_()
    bias = torch.randn(n_out, requires_grad=True)
    x = torch.randn(2, batch, n_in, requires_grad=True)
    gy = torch.randn(2, batch, n_out)
    cfi_linear(x, values, idx, bias, ops.cfi_transpose_index(idx, n_in)).backward(gy)
    got = (x.grad, values.grad, bias.grad)
    x.grad = values.grad = bias.grad = None
    w = reference.dense_weight(values, idx, n_in)
    torch.nn.functional.linear(x, w, bias).backward(gy)
    for a, b in zip(got, (x.grad, values.grad, bias.grad)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    values, idx = random_cfi(6, 9, 4, torch.float64)
    values.requires_grad_()
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    t_index = ops.cfi_transpose_index(idx, 9)
    fn = lambda x, v, b: cfi_linear(x, v, idx, b, t_index)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, values, bias))
    assert torch.autograd.gradgradcheck(fn, (x, values, bias))


def _opcheck_samples():
    values, idx = random_cfi(5, 8, 3)
    t_index = reference.transpose_index(idx, 8)
    x, gy, bias = torch.randn(4, 8), torch.randn(4, 5), torch.randn(5)
    grads = lambda *ts: [t.clone().requires_grad_() for t in ts]  # noqa: E731
    return [
        (ops.cfi_forward.default, (x, values, idx, bias, t_index)),
        (ops.cfi_forward.default, (*grads(x, values), idx, None)),
        (ops.cfi_forward.default, (*grads(torch.randn(11, 8), values), idx, *grads(bias))),
        (ops.cfi_backward_input.default, (*grads(gy, values), idx, 8, t_index)),
        (ops.cfi_backward_input.default, (gy, values, idx, 8)),
        (ops.cfi_backward_weight.default, (*grads(gy, x), idx)),
        (ops.cfi_transpose_index.default, (idx, 8)),
        (ops.cfi_forward_packed.default, (x[:2], *packed.pack(values, idx, 8), bias, 5)),
    ]


@pytest.mark.parametrize("case", range(len(_opcheck_samples())))
def test_opcheck(case):
    op, args = _opcheck_samples()[case]
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    from sparse_runner import SparseLinear

    layer = SparseLinear(24, 10, 0.75)
    x = torch.randn(3, 4, 24, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    gx, gv = x.grad.clone(), layer.values.grad.clone()
    x.grad = layer.values.grad = None
    y_eager = layer(x)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gv, layer.values.grad)
