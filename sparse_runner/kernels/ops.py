"""The ``sparse_run::cfi_*`` custom operators: schemas, fake kernels, autograd, reference.

A constant fan-in weight is stored condensed: ``values`` [n_out, k] and int32 ``indices``
[n_out, k] (row o has nonzeros at columns indices[o, :]). The operators:

* ``cfi_forward(x, values, indices, bias)``       Y = X W^T + bias            [B, n_out]
* ``cfi_backward_input(grad, values, indices, n_in)``  dX = dY W              [B, n_in]
* ``cfi_backward_weight(grad, x, indices)``       dV = (dY^T X) at the nonzeros  [n_out, k]
* ``cfi_transpose_index(indices, n_in)``  the CSC transpose of the index, built once per mask;
  ``t_index`` arguments take it so the backward to X needs no per-step sort (the forward
  only carries it to its backward)
* ``cfi_forward_packed(x, pvals, pidx, counts, bias, n_out)``  inference only (no autograd):
  the forward through the packed small-batch layout of packed.py

The first three cover training and are closed under differentiation (each derivative is one
of them), so autograd is registered for all three and double backward works too. Schemas live here, in Python, so the
operators exist whether or not the compiled kernels load: the fallback (gathers at the
nonzeros, no dense weight, fallback.py; reference.py is the dense oracle the tests use) is
registered as the CompositeExplicitAutograd kernel, and the compiled CPU/CUDA
kernels, when loaded by build.py, override it for their device. torch.compile sees the fake
(shape-only) kernels. Call :func:`cfi_linear` (or use ``SparseLinear``), which loads the kernels
on first use; ``torch.ops.sparse_run.*`` used directly run the fallback until then.
"""
from __future__ import annotations

from typing import Any

import torch

from . import build, fallback, reference

_LIB = torch.library.Library("sparse_run", "DEF")  # noqa: TOR901 (kept alive for the process)
_LIB.define("cfi_forward(Tensor x, Tensor values, Tensor indices, Tensor? bias, "
            "Tensor? t_index=None) -> Tensor")
_LIB.define("cfi_backward_input(Tensor grad_out, Tensor values, Tensor indices, SymInt n_in, "
            "Tensor? t_index=None) -> Tensor")
_LIB.define("cfi_backward_weight(Tensor grad_out, Tensor x, Tensor indices) -> Tensor")
_LIB.define("cfi_transpose_index(Tensor indices, SymInt n_in) -> Tensor")
_LIB.define("cfi_forward_packed(Tensor x, Tensor pvals, Tensor pidx, Tensor counts, Tensor? bias, "
            "SymInt n_out) -> Tensor")
for _name, _fn in (("cfi_forward", fallback.forward),        # no dense weight per call
                   ("cfi_backward_input", fallback.backward_input),
                   ("cfi_backward_weight", fallback.backward_weight),
                   ("cfi_transpose_index", reference.transpose_index),
                   ("cfi_forward_packed", reference.forward_packed)):
    _LIB.impl(_name, _fn, "CompositeExplicitAutograd")

sparse_ops = torch.ops.sparse_run  # the operator namespace (after the definitions above)


def _register_cuda() -> None:
    """The Triton kernels as the CUDA kernels of these operators (imports triton: only once a
    CUDA tensor reaches a sparse_run operator)."""
    from . import gpu

    gpu.register_cuda(_LIB)


build.register_loader("cuda", _register_cuda)


# ------------------------------------------------------------------ fake (shape-only) kernels
@torch.library.register_fake("sparse_run::cfi_forward")
def _forward_fake(x, values, indices, bias, t_index=None):
    reference.check_forward(x, values, indices, bias)
    return x.new_empty(x.shape[0], values.shape[0])


@torch.library.register_fake("sparse_run::cfi_backward_input")
def _backward_input_fake(grad_out, values, indices, n_in, t_index=None):
    reference.check_backward_input(grad_out, values, indices, n_in)
    return grad_out.new_empty(grad_out.shape[0], n_in)


@torch.library.register_fake("sparse_run::cfi_backward_weight")
def _backward_weight_fake(grad_out, x, indices):
    reference.check_backward_weight(grad_out, x, indices)
    return x.new_empty(indices.shape)


@torch.library.register_fake("sparse_run::cfi_transpose_index")
def _transpose_index_fake(indices, n_in):
    reference.check_transpose_index(indices, n_in)
    return indices.new_empty(n_in + 1 + 2 * indices.numel())


@torch.library.register_fake("sparse_run::cfi_forward_packed")
def _forward_packed_fake(x, pvals, pidx, counts, bias, n_out):
    reference.check_packed(x, pvals, pidx, counts, bias, n_out)
    return x.new_empty(x.shape[0], n_out)


# ------------------------------------------------------------------ autograd
def _need(ctx: Any, i: int) -> bool:
    return bool(ctx.needs_input_grad[i])


def _forward_setup(ctx, inputs, output):
    x, values, indices, bias, t_index = inputs
    ctx.save_for_backward(x, values, indices, t_index)
    ctx.has_bias = bias is not None


def _forward_backward(ctx, grad):
    x, values, indices, t_index = ctx.saved_tensors
    gx = (sparse_ops.cfi_backward_input(grad, values, indices, x.shape[1], t_index)
          if _need(ctx, 0) else None)
    gv = sparse_ops.cfi_backward_weight(grad, x, indices) if _need(ctx, 1) else None
    gb = grad.sum(0) if ctx.has_bias and _need(ctx, 3) else None
    return gx, gv, None, gb, None


def _bwd_input_setup(ctx, inputs, output):
    grad, values, indices, n_in, t_index = inputs
    ctx.save_for_backward(grad, values, indices, t_index)


def _bwd_input_backward(ctx, h):
    # dX = G W is linear in G (-> h W^T) and in W (-> sampled G^T h).
    grad, values, indices, t_index = ctx.saved_tensors
    gg = sparse_ops.cfi_forward(h, values, indices, None, t_index) if _need(ctx, 0) else None
    gv = sparse_ops.cfi_backward_weight(grad, h, indices) if _need(ctx, 1) else None
    return gg, gv, None, None, None


def _bwd_weight_setup(ctx, inputs, output):
    grad, x, indices = inputs
    ctx.save_for_backward(grad, x, indices)


def _bwd_weight_backward(ctx, h):
    # dV = sample(G^T X) is linear in G (-> X H^T) and in X (-> G H) with H = (h, indices).
    grad, x, indices = ctx.saved_tensors
    gg = sparse_ops.cfi_forward(x, h, indices, None) if _need(ctx, 0) else None
    gx = sparse_ops.cfi_backward_input(grad, h, indices, x.shape[1]) if _need(ctx, 1) else None
    return gg, gx, None


torch.library.register_autograd("sparse_run::cfi_forward", _forward_backward,
                                setup_context=_forward_setup)
torch.library.register_autograd("sparse_run::cfi_backward_input", _bwd_input_backward,
                                setup_context=_bwd_input_setup)
torch.library.register_autograd("sparse_run::cfi_backward_weight", _bwd_weight_backward,
                                setup_context=_bwd_weight_setup)


def _packed_backward(ctx, grad):
    raise RuntimeError("sparse_run::cfi_forward_packed is inference-only (no backward); use "
                       "cfi_forward, or call it under torch.no_grad() / torch.inference_mode()")


torch.library.register_autograd("sparse_run::cfi_forward_packed", _packed_backward)


# ------------------------------------------------------------------ autocast
def kernel_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute an autocast dtype in: float16 on the CPU has no compiled
    kernel (the C++ kernels do float32/bfloat16/float64), so it computes in float32 there."""
    return torch.float32 if dtype == torch.float16 and device_type == "cpu" else dtype


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, None when off (or when the device type
    has no autocast, e.g. ``meta``, where asking would raise)."""
    if not torch.amp.is_autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_operands(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                 torch.dtype | None]:
    """Under autocast, (x, values, bias) cast to one compute dtype, plus the dtype the result
    must have (that of ``nn.Linear`` under the same autocast); outside it, unchanged and None.

    Without this the reference path (dense matmuls, autocast-aware) returned bfloat16 and the
    compiled path (not autocast-aware) float32, and mixed input/weight dtypes raised.
    """
    device = x.device.type
    out = autocast_dtype(device)
    if out is None:
        return x, values, bias, None
    dtype = kernel_dtype(device, out)
    return (x.to(dtype), values.to(dtype), None if bias is None else bias.to(dtype),
            None if dtype == out else out)


# ------------------------------------------------------------------ functional entry point
def cfi_linear(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor,
               bias: torch.Tensor | None = None,
               t_index: torch.Tensor | None = None) -> torch.Tensor:
    """``x (..., n_in) -> (..., n_out)`` through the condensed weight (values, indices).

    ``t_index = cfi_transpose_index(indices, n_in)`` (CSC transpose of the index) speeds up
    the backward to ``x``; compute it once per mask and pass it, else each backward builds it.
    Loads (or builds, once) the compiled kernels for ``x.device`` on first use. Indices are
    range-checked by the CPU kernel on every call (it is free there); on CUDA they are checked
    when a ``SparseLinear`` is built or its mask changes, not per call. Under autocast the
    result has the autocast dtype, as ``nn.Linear``'s, whichever kernel runs.
    """
    if not torch.compiler.is_compiling():
        build.ensure(x.device.type)
    lead = x.shape[:-1]
    x, values, bias, out_dtype = autocast_operands(x, values, bias)
    y = sparse_ops.cfi_forward(x.reshape(-1, x.shape[-1]), values, indices, bias, t_index)
    y = y if out_dtype is None else y.to(out_dtype)
    return y.reshape(*lead, values.shape[0])
