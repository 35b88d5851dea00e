"""The sparse-convolution Triton kernels as operators, registered as ``sparse_run::sconv_*`` on CUDA.

As gpu.py for the Linear kernels: ``sparse_run_triton::sconv_*`` are ``triton_op`` on a GPU
(torch.compile sees into the kernels) and ``custom_op`` under Triton's interpreter (how the
tests run them on a CPU). :func:`register_cuda` installs them as the CUDA kernels of the
``sparse_run::sconv_*`` operators, whose schemas, fake kernels and autograd live in
sconv_ops.py; the reference (dense conv on the scattered weight) stays the
CompositeExplicitAutograd kernel every other device runs. The gradient to the input builds
the (channel, stride phase) transpose of the index on each call (one sort of O*K entries on
the device, no host sync): the operator's schema carries no cached transpose.
"""
from __future__ import annotations

import torch

from . import sconv_ops
from . import triton_sconv as ts

_define = torch.library.custom_op if ts.INTERPRETED else torch.library.triton_op


@_define("sparse_run_triton::sconv_forward", mutates_args=())
def forward(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor, kernel: list[int],
            stride: list[int], padding: list[int]) -> torch.Tensor:
    """y = conv2d(x, W) for the ELL weight (values, index)."""
    return ts.forward(x, values, index, kernel, stride, padding)


@_define("sparse_run_triton::sconv_backward_input", mutates_args=())
def backward_input(grad: torch.Tensor, values: torch.Tensor, ptr: torch.Tensor,
                   code: torch.Tensor, pos: torch.Tensor, in_size: list[int],
                   kernel: list[int], stride: list[int], padding: list[int]) -> torch.Tensor:
    """dx through the (channel, phase) transpose (ptr, code, pos) of the index."""
    return ts.backward_input(grad, values, (ptr, code, pos), in_size, kernel, stride, padding)


@_define("sparse_run_triton::sconv_backward_weight", mutates_args=())
def backward_weight(grad: torch.Tensor, x: torch.Tensor, index: torch.Tensor,
                    kernel: list[int], stride: list[int], padding: list[int]) -> torch.Tensor:
    """dvalues at the ELL slots (0 at padded ones)."""
    return ts.backward_weight(grad, x, index, kernel, stride, padding)


if ts.INTERPRETED:  # custom_op needs shape-only kernels; triton_op traces its own
    @forward.register_fake
    def _(x, values, index, kernel, stride, padding):
        return x.new_empty(x.shape[0], index.shape[0],
                           *ts.out_size(x.shape[2], x.shape[3], kernel, stride, padding))

    @backward_input.register_fake
    def _(grad, values, ptr, code, pos, in_size, kernel, stride, padding):
        return grad.new_empty(grad.shape[0], *in_size)

    @backward_weight.register_fake
    def _(grad, x, index, kernel, stride, padding):
        return x.new_empty(index.shape)


# ------------------------------------------------------------------ sparse_run::sconv_* on CUDA
def _sconv_forward(x, values, index, kernel, stride, padding):
    sconv_ops._check("sconv_forward", index, values, x, "x")
    return forward(x, values, index, list(kernel), list(stride), list(padding))


def _sconv_backward_input(grad, values, index, in_size, kernel, stride, padding):
    sconv_ops._check("sconv_backward_input", index, values, grad, "grad_out")
    size = [int(s) for s in in_size]
    ptr, code, pos = ts.transpose_index(index, size[0], kernel, stride, padding)
    return backward_input(grad, values, ptr, code, pos, size, list(kernel), list(stride),
                          list(padding))


def _sconv_backward_weight(grad, x, index, kernel, stride, padding):
    sconv_ops._check("sconv_backward_weight", index, None, x, "x")
    if grad.dtype != x.dtype:
        raise TypeError(f"sparse_run::sconv_backward_weight: grad_out ({grad.dtype}) and x "
                        f"({x.dtype}) must have the same dtype")
    return backward_weight(grad, x, index, list(kernel), list(stride), list(padding))


IMPLS = {"sconv_forward": _sconv_forward, "sconv_backward_input": _sconv_backward_input,
         "sconv_backward_weight": _sconv_backward_weight}
_registered = False


def register_cuda(lib: torch.library.Library) -> None:
    """Make the Triton operators the CUDA kernels of ``sparse_run::sconv_*`` (once)."""
    global _registered
    if _registered:
        return
    for name, fn in IMPLS.items():
        lib.impl(name, fn, "CUDA")
    _registered = True
