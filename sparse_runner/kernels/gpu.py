"""The Triton kernels as operators, and their registration as the CUDA kernels of ``sparse_run``.

``sparse_run_triton::cfi_forward / cfi_backward_input / cfi_backward_weight`` are defined with
``torch.library.triton_op`` where a GPU runs them (torch.compile can then see into the Triton
kernels) and with ``torch.library.custom_op`` elsewhere, where the same kernels run in
Triton's interpreter: that is how the test suite runs the GPU code on a CPU.
:func:`register_cuda` makes them the CUDA implementation of the ``sparse_run::cfi_*``
operators (whose schemas, fake kernels and autograd live in ops.py); the CSC transpose of the
index stays the PyTorch one of reference.py (sort + bincount, once per mask).
"""
from __future__ import annotations

import torch

from . import reference
from . import triton_cfi as tk

_define = torch.library.custom_op if tk.INTERPRETED else torch.library.triton_op


@_define("sparse_run_triton::cfi_forward", mutates_args=())
def forward(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
            bias: torch.Tensor | None) -> torch.Tensor:
    """Y = X W^T + bias (shapes and dtypes as sparse_run::cfi_forward)."""
    return tk.forward(x, values, indices, bias)


@_define("sparse_run_triton::cfi_backward_input", mutates_args=())
def backward_input(grad: torch.Tensor, values: torch.Tensor, t_index: torch.Tensor,
                   n_in: int) -> torch.Tensor:
    """dX = dY W through the CSC transpose of the index."""
    return tk.backward_input(grad, values, t_index, n_in)


@_define("sparse_run_triton::cfi_backward_weight", mutates_args=())
def backward_weight(grad: torch.Tensor, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """dV = (dY^T X) at the nonzeros."""
    return tk.backward_weight(grad, x, indices)


if tk.INTERPRETED:  # custom_op needs shape-only kernels; triton_op traces its own
    @forward.register_fake
    def _(x, values, indices, bias):
        return x.new_empty(x.shape[0], values.shape[0])

    @backward_input.register_fake
    def _(grad, values, t_index, n_in):
        return grad.new_empty(grad.shape[0], n_in)

    @backward_weight.register_fake
    def _(grad, x, indices):
        return x.new_empty(indices.shape)


# ------------------------------------------------------------------ sparse_run::cfi_* on CUDA
def _cfi_forward(x, values, indices, bias, t_index=None):
    reference.check_forward(x, values, indices, bias)
    return forward(x, values, indices, bias)


def _cfi_backward_input(grad, values, indices, n_in, t_index=None):
    reference.check_backward_input(grad, values, indices, n_in)
    reference.check_t_index("cfi_backward_input", t_index, indices, n_in)
    if t_index is None:  # callers pass it (built once per mask); this sorts per call
        t_index = reference.transpose_index(indices, n_in)
    return backward_input(grad, values, t_index, n_in)


def _cfi_backward_weight(grad, x, indices):
    reference.check_backward_weight(grad, x, indices)
    return backward_weight(grad, x, indices)


_registered = False


def register_cuda(lib: torch.library.Library) -> None:
    """Make the Triton operators the CUDA kernels of ``lib`` (the sparse_run library), and
    the sparse-convolution ones (gpu_sconv.py) those of ``sparse_run::sconv_*``."""
    global _registered
    if _registered:
        return
    for name, fn in (("cfi_forward", _cfi_forward), ("cfi_backward_input", _cfi_backward_input),
                     ("cfi_backward_weight", _cfi_backward_weight)):
        lib.impl(name, fn, "CUDA")
    from . import gpu_sconv, sconv_ops  # the direct sparse convolutions (sparse_run::sconv_*)

    gpu_sconv.register_cuda(sconv_ops._LIB)
    _registered = True
