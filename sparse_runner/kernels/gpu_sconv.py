"""The sparse-convolution Triton kernels as operators, and their registration on CUDA.

As gpu.py for the Linear kernels: ``sparse_run_triton::sconv_*`` are ``triton_op`` on a GPU
(torch.compile sees into the kernels) and ``custom_op`` under Triton's interpreter (how the
tests run them on a CPU). :func:`register_cuda` installs them as the CUDA kernels of the
``sparse_run::sconv_*`` operators, whose schemas, fake kernels and autograd live in
sconv_ops.py; the reference (dense conv on the scattered weight) stays the
CompositeExplicitAutograd kernel every other device runs. The gradient to the input needs
the (channel, stride phase) transpose of the index (one sort of O*K entries on the device, no
host sync); the operator's schema carries none, so :func:`transpose_for` keeps the last ones
per index tensor, valid while that tensor is alive and unmodified (its version counter).
"""
from __future__ import annotations

import weakref

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
    ptr, code, pos = transpose_for(index, size[0], kernel, stride, padding)
    return backward_input(grad, values, ptr, code, pos, size, list(kernel), list(stride),
                          list(padding))


_CACHE: dict[int, tuple] = {}
CACHE_SIZE = 64


def transpose_for(index: torch.Tensor, in_channels: int, kernel, stride, padding
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ts.transpose_index``, built once per (index tensor, version, geometry).

    The entry is keyed on the tensor's identity (a weak reference: a freed index never
    matches a new one at the same address) and its version counter (an in-place mask
    update rebuilds it); under torch.compile tracing nothing is cached.
    """
    geom = (in_channels, tuple(kernel), tuple(stride), tuple(padding))
    if torch.compiler.is_compiling() or index.is_inference():  # (no version counter)
        return ts.transpose_index(index, in_channels, kernel, stride, padding)
    hit = _CACHE.get(id(index))
    if hit is not None and hit[0]() is index and hit[1] == index._version and hit[2] == geom:
        return hit[3]
    t = ts.transpose_index(index, in_channels, kernel, stride, padding)
    for key in [k for k, v in _CACHE.items() if v[0]() is None]:
        del _CACHE[key]
    if len(_CACHE) >= CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[id(index)] = (weakref.ref(index), index._version, geom, t)
    return t


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
