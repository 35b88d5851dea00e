"""Execution backends: how the sparse layers compute during training (``sparse.backend``).

* ``masked`` (default): every layer runs its own dense Conv/Linear on weights whose pruned
  entries are physical zeros (masks.py). Works for every method; no speedup.
* ``condensed``: constant fan-in layers (``method=srigl``, ``method=static
  method.fan_in=constant``) run forward and backward through the compiled kernels of
  ``sparse_runner.kernels`` on the condensed weight (values ``[n_out, k]`` gathered from the
  dense weight at the int32 column index of the current mask).

The dense weight stays the parameter under both backends, so methods, optimizer state,
checkpoints and FLOP counts are the same; only the arithmetic differs (results agree to float
rounding). The gather's backward scatters the kernel's weight gradient (nonzeros only) into the
dense gradient. The condensed index of a layer is rebuilt when the method installs a new mask
(the MaskManager replaces the mask tensor), and on the steps where the method asks for the
dense weight gradient (RigL/SRigL growth) the layers run dense, as the masked backend does.
Conv2d runs as im2col (``F.unfold``) + the kernel: fan-in = c_in * kh * kw, SRigL's definition.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..kernels import cfi_linear, condense_mask

if TYPE_CHECKING:
    from .method import SparsityMethod
    from .masks import MaskManager

BACKENDS = ("masked", "condensed")
_FIX = ("use a constant fan-in method (method=srigl, or method=static method.fan_in=constant) "
        "or sparse.backend=masked")


class CondensedBackend:
    """Routes the sparse Conv2d/Linear layers of a model through the condensed kernels."""

    def __init__(self, model: nn.Module, method: SparsityMethod) -> None:
        if method.condensed_unsupported:
            raise UserError(f"sparse.backend=condensed: method={method.name} "
                            f"{method.condensed_unsupported}; use sparse.backend=masked")
        masks = method.masks
        if masks is None or not len(masks):
            raise UserError(f"sparse.backend=condensed: method={method.name} has no sparse layers")
        self.dense = False   # True on steps whose backward must give the dense weight gradient
        modules = {f"{name}.weight": m for name, m in model.named_modules()}
        self.layers: list[CondensedLayer] = []
        for i, name in enumerate(masks.names):
            module = modules.get(name)
            if not _supported(module):
                raise UserError(f"sparse.backend=condensed: {name} is a "
                                f"{type(module).__name__}; the kernels run nn.Linear and nn.Conv2d "
                                "(groups=1, zero padding) only; use sparse.backend=masked")
            layer = CondensedLayer(self, module, masks, i)
            module.forward = layer          # instance attribute: parameter names do not change
            self.layers.append(layer)

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]


def _supported(module: nn.Module | None) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


class CondensedLayer:
    """The forward of one sparse layer under the condensed backend."""

    def __init__(self, backend: CondensedBackend, module: nn.Module, masks: MaskManager,
                 i: int) -> None:
        self.backend, self.module, self.masks, self.i = backend, module, masks, i
        self.name = masks.names[i]
        self.refresh()

    def refresh(self) -> None:
        """Condensed index (and its CSC transpose) of the layer's current mask."""
        mask = self.masks.masks[self.i]
        try:
            idx, _active = condense_mask(mask.reshape(mask.shape[0], -1), allow_empty_rows=True)
        except ValueError as exc:
            raise UserError(f"sparse.backend=condensed: the mask of {self.name} is not constant "
                            f"fan-in ({str(exc).split(':')[0]}); {_FIX}") from None
        self.idx, self.idx_long = idx, idx.long()
        self.t_index = torch.ops.sparse_run.cfi_transpose_index(idx, mask[0].numel())
        self.mask = mask

    def __call__(self, x: Tensor) -> Tensor:
        m = self.module
        if self.backend.dense:
            return type(m).forward(m, x)
        if self.masks.masks[self.i] is not self.mask:
            self.refresh()
        w, bias = m.weight, m.bias
        values = w.reshape(w.shape[0], -1).gather(1, self.idx_long)
        # cfi_linear applies autocast (one compute dtype; nn.Linear's result dtype)
        if isinstance(m, nn.Linear):
            return cfi_linear(x, values, self.idx, bias, self.t_index)
        return self._conv(x, values, bias)

    def _conv(self, x: Tensor, values: Tensor, bias: Tensor | None) -> Tensor:
        """Conv2d as im2col: [B, C*kh*kw, L] columns times the condensed weight."""
        m: nn.Conv2d = self.module  # type: ignore[assignment]
        batch, _, h, w = x.shape
        kh, kw = m.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = m.stride, m.padding, m.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
        y = cfi_linear(cols.transpose(1, 2), values, self.idx, bias, self.t_index)
        return y.transpose(1, 2).reshape(batch, m.out_channels, oh, ow)


def apply_backend(name: str, model: nn.Module, method: SparsityMethod) -> CondensedBackend | None:
    """Install the configured backend after ``method.setup``; None for ``masked``."""
    if name not in BACKENDS:
        raise UserError(f"sparse.backend={name!r} is unknown; valid: {', '.join(BACKENDS)}")
    if name == "masked":
        return None
    backend = CondensedBackend(model, method)
    method.backend = backend
    return backend
