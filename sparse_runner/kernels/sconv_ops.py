"""The ``sparse_run::sconv_*`` operators: direct sparse Conv2d (no im2col), ELL weights.

A sparse Conv2d weight [O, C, kh, kw] is stored ELL-style: ``values`` [O, K] and int32
``index`` [O, K], where K is the largest number of nonzeros of any output channel, ``index``
holds the column of the flattened weight (``c * kh * kw + i * kw + j``) and -1 marks a padded
slot. Padded slots are exact zeros: the kernels skip them and their weight gradient is 0, so
they never train (:func:`ell_from_mask` builds the index of a mask).

* ``sconv_forward(x, values, index, kernel, stride, padding)``   y = conv2d(x, W)
* ``sconv_backward_input(grad, values, index, in_size, kernel, stride, padding)``  dx
* ``sconv_backward_weight(grad, x, index, kernel, stride, padding)``  dW at the slots [O, K]

groups=1, dilation 1, zero padding, any kernel size, stride and padding. The reference
(dense ``F.conv2d`` on the scattered weight) is the CompositeExplicitAutograd kernel; the
compiled CPU kernels (csrc/sconv_cpu.cpp, loaded by build.py) override it on CPU. Autograd is
registered for all three (each derivative is one of them), fake kernels for torch.compile.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad

from . import build

_LIB = torch.library.Library("sparse_run", "FRAGMENT")  # noqa: TOR901 (kept for the process)
_GEOM = "int[2] kernel, int[2] stride, int[2] padding"
_LIB.define(f"sconv_forward(Tensor x, Tensor values, Tensor index, {_GEOM}) -> Tensor")
_LIB.define(f"sconv_backward_input(Tensor grad_out, Tensor values, Tensor index, "
            f"SymInt[] in_size, {_GEOM}) -> Tensor")
_LIB.define(f"sconv_backward_weight(Tensor grad_out, Tensor x, Tensor index, {_GEOM}) -> Tensor")
ops = torch.ops.sparse_run

__all__ = ["ell_from_mask", "sconv2d", "dense_conv_weight"]


# ------------------------------------------------------------------ checks (shared by fakes)
def _fail(op: str, msg: str) -> None:
    raise ValueError(f"sparse_run::{op}: {msg}")


def _check(op: str, index: torch.Tensor, values: torch.Tensor | None, act: torch.Tensor,
           name: str) -> None:
    if index.dtype != torch.int32:
        raise TypeError(f"sparse_run::{op}: index must be int32, got {index.dtype}")
    if index.dim() != 2:
        _fail(op, f"index must be 2-D [out_channels, K], got {list(index.shape)}")
    if values is not None and values.shape != index.shape:
        _fail(op, f"values {list(values.shape)} and index {list(index.shape)} must have the "
                  "same shape")
    if act.dim() != 4:
        _fail(op, f"{name} must be 4-D [batch, channels, H, W], got {list(act.shape)}")
    if values is not None and values.dtype != act.dtype:
        raise TypeError(f"sparse_run::{op}: {name} ({act.dtype}) and values ({values.dtype}) "
                        "must have the same dtype")


def _out_hw(h: int, w: int, kernel: Sequence[int], stride: Sequence[int],
            padding: Sequence[int]) -> tuple[int, int]:
    return ((h + 2 * padding[0] - kernel[0]) // stride[0] + 1,
            (w + 2 * padding[1] - kernel[1]) // stride[1] + 1)


# ------------------------------------------------------------------ reference kernels
def dense_conv_weight(values: torch.Tensor, index: torch.Tensor, in_channels: int,
                      kernel: Sequence[int]) -> torch.Tensor:
    """The dense [O, C, kh, kw] weight of an ELL weight (padded slots dropped)."""
    valid = index >= 0
    w = values.new_zeros(index.shape[0], in_channels * kernel[0] * kernel[1])
    w.scatter_add_(1, index.clamp(min=0).long(), values * valid)
    return w.view(index.shape[0], in_channels, kernel[0], kernel[1])


def _ref_forward(x, values, index, kernel, stride, padding):
    w = dense_conv_weight(values, index, x.shape[1], kernel)
    return F.conv2d(x, w, stride=tuple(stride), padding=tuple(padding))


def _ref_backward_input(grad, values, index, in_size, kernel, stride, padding):
    w = dense_conv_weight(values, index, int(in_size[0]), kernel)
    shape = (grad.shape[0], *[int(s) for s in in_size])
    return nn_grad.conv2d_input(shape, w, grad, stride=tuple(stride), padding=tuple(padding))


def _ref_backward_weight(grad, x, index, kernel, stride, padding):
    shape = (index.shape[0], x.shape[1], kernel[0], kernel[1])
    dw = nn_grad.conv2d_weight(x, shape, grad, stride=tuple(stride), padding=tuple(padding))
    return dw.flatten(1).gather(1, index.clamp(min=0).long()) * (index >= 0)


for _name, _fn in (("sconv_forward", _ref_forward), ("sconv_backward_input", _ref_backward_input),
                   ("sconv_backward_weight", _ref_backward_weight)):
    _LIB.impl(_name, _fn, "CompositeExplicitAutograd")


# ------------------------------------------------------------------ fake (shape-only) kernels
@torch.library.register_fake("sparse_run::sconv_forward")
def _forward_fake(x, values, index, kernel, stride, padding):
    _check("sconv_forward", index, values, x, "x")
    return x.new_empty(x.shape[0], index.shape[0], *_out_hw(x.shape[2], x.shape[3], kernel,
                                                             stride, padding))


@torch.library.register_fake("sparse_run::sconv_backward_input")
def _backward_input_fake(grad_out, values, index, in_size, kernel, stride, padding):
    _check("sconv_backward_input", index, values, grad_out, "grad_out")
    return grad_out.new_empty(grad_out.shape[0], *in_size)


@torch.library.register_fake("sparse_run::sconv_backward_weight")
def _backward_weight_fake(grad_out, x, index, kernel, stride, padding):
    _check("sconv_backward_weight", index, None, x, "x")
    return x.new_empty(index.shape)


# ------------------------------------------------------------------ autograd
def _setup(ctx, inputs, output):
    """All three ops: the first three inputs are the tensors, the last three the geometry."""
    ctx.save_for_backward(*inputs[:3])
    ctx.geom = tuple(inputs[-3:])


def _fwd_backward(ctx, grad):
    x, values, index = ctx.saved_tensors
    need = ctx.needs_input_grad
    gx = (ops.sconv_backward_input(grad, values, index, list(x.shape[1:]), *ctx.geom)
          if need[0] else None)
    gv = ops.sconv_backward_weight(grad, x, index, *ctx.geom) if need[1] else None
    return gx, gv, None, None, None, None


def _bwd_input_backward(ctx, h):
    # dx = conv^T(G, W) is linear in G (-> conv(h, W)) and in W (-> sampled corr(G, h)).
    grad, values, index = ctx.saved_tensors
    need = ctx.needs_input_grad
    gg = ops.sconv_forward(h, values, index, *ctx.geom) if need[0] else None
    gv = ops.sconv_backward_weight(grad, h, index, *ctx.geom) if need[1] else None
    return gg, gv, None, None, None, None, None


def _bwd_weight_backward(ctx, h):
    # dV = sample(corr(G, X)) is linear in G (-> conv(X, H)) and in X (-> conv^T(G, H)).
    grad, x, index = ctx.saved_tensors
    need = ctx.needs_input_grad
    gg = ops.sconv_forward(x, h, index, *ctx.geom) if need[0] else None
    gx = (ops.sconv_backward_input(grad, h, index, list(x.shape[1:]), *ctx.geom)
          if need[1] else None)
    return gg, gx, None, None, None, None


torch.library.register_autograd("sparse_run::sconv_forward", _fwd_backward,
                                setup_context=_setup)
torch.library.register_autograd("sparse_run::sconv_backward_input", _bwd_input_backward,
                                setup_context=_setup)
torch.library.register_autograd("sparse_run::sconv_backward_weight", _bwd_weight_backward,
                                setup_context=_setup)


# ------------------------------------------------------------------ entry points
def ell_from_mask(mask: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Bool mask [O, C, kh, kw] (or [O, n]) -> int32 ELL index [O, K], ascending per row.

    K = the largest row count (at least 1); a row with fewer nonzeros is padded with -1.
    ``width``: that largest row count when the caller knows it (else read here: a host sync
    on a GPU; training reads it once per mask update, sparsity/host.py).
    """
    flat = mask.reshape(mask.shape[0], -1).bool()
    counts = flat.sum(1)
    if width is None:
        width = int(counts.max()) if counts.numel() else 1
    k = max(1, width)
    order = torch.argsort((~flat).to(torch.uint8), dim=1, stable=True)[:, :k]
    slots = torch.arange(k, device=mask.device).expand(flat.shape[0], k)
    return torch.where(slots < counts.unsqueeze(1), order, -1).to(torch.int32).contiguous()


INFERENCE_SLICE = 64  # samples per kernel call when no gradient is recorded (CPU)


def sconv2d(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
            bias: torch.Tensor | None, kernel: Sequence[int], stride: Sequence[int] = (1, 1),
            padding: Sequence[int] = (0, 0)) -> torch.Tensor:
    """``conv2d(x, W) + bias`` for the ELL weight (values, index); loads the kernels once.

    Without autograd on the CPU, batches above INFERENCE_SLICE go through the kernels in
    slices written into one output: each call copies its input into the kernels' layout and
    keeps a per-thread buffer of the largest copy, so an evaluation batch of 512 would
    otherwise hold ~1 GB of copies per wide layer on top of the activations (measured:
    a condensed run's evaluation peaked above the masked run's).
    """
    if not torch.compiler.is_compiling():
        build.ensure(x.device.type)
    geo = (list(kernel), list(stride), list(padding))
    n = x.shape[0]
    if (torch.is_grad_enabled() or x.device.type != "cpu" or n <= INFERENCE_SLICE
            or torch.compiler.is_compiling()):
        y = ops.sconv_forward(x, values, index, *geo)
    else:
        first = ops.sconv_forward(x[:INFERENCE_SLICE], values, index, *geo)
        y = first.new_empty(n, *first.shape[1:])
        y[:INFERENCE_SLICE] = first
        del first
        for i in range(INFERENCE_SLICE, n, INFERENCE_SLICE):
            y[i:i + INFERENCE_SLICE] = ops.sconv_forward(x[i:i + INFERENCE_SLICE], values, index,
                                                         *geo)
    return y if bias is None else y + bias.view(1, -1, 1, 1)
