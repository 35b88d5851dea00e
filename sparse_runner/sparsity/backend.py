"""Execution backends: how the sparse layers compute during training (``sparse.backend``).

* ``masked`` (default): every layer runs its own dense Conv/Linear on weights whose pruned
  entries are physical zeros (masks.py). Works for every method; no speedup.
* ``condensed``: the sparse layers of any mask-based method run through the compiled kernels
  of ``sparse_runner.kernels``: Conv2d (groups=1, dilation 1, zero padding) through the direct
  sparse convolution (``sconv2d``, ELL weight), Linear through the constant fan-in kernels
  (rows padded to the longest with zero-valued slots when the fan-in is not constant).

ELL: each output channel's nonzeros are listed in a row padded to the layer's largest row
count; padded slots are exact zeros that never train and never count. The index of a layer is
rebuilt only when the method installs a new mask (the MaskManager replaces the mask tensor).
The dense weight stays the parameter, so methods, optimizer state, checkpoints and FLOP counts
are the same under both backends; the values are gathered from it at the index each step and
the gather's backward scatters the kernels' gradient (nonzeros only) into the dense gradient.
On the steps where the method asks for the dense weight gradient (RigL-style growth) every
layer runs dense, as the masked backend does.

Per-layer choice: given an example batch, each layer's kernel is timed against its dense
forward+backward once at setup (backend_choice.py) and the faster one runs; layers the
kernels cannot run (grouped, dilated) stay dense. ``layers()`` lists the choices
(summary.json ``sparsity.backend.layers``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..kernels import cfi_linear, ell_from_mask, sconv2d
from .backend_choice import layer_inputs, time_layer

if TYPE_CHECKING:
    from .masks import MaskManager
    from .method import SparsityMethod

BACKENDS = ("masked", "condensed")


def unsupported_reason(module: nn.Module | None) -> str:
    """Why the kernels cannot run this layer ("" if they can)."""
    if isinstance(module, nn.Linear):
        return ""
    if not isinstance(module, nn.Conv2d):
        return f"a {type(module).__name__} (the kernels run nn.Linear and nn.Conv2d)"
    if module.groups != 1:
        return f"groups={module.groups} (grouped and depthwise convolutions stay dense)"
    if tuple(module.dilation) != (1, 1):
        return f"dilation={tuple(module.dilation)}"
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return f"padding={module.padding!r} padding_mode={module.padding_mode}"
    return ""


class CondensedBackend:
    """Routes the sparse Conv2d/Linear layers of a model through the compiled kernels."""

    def __init__(self, model: nn.Module, method: SparsityMethod,
                 example: Tensor | None = None) -> None:
        if method.condensed_unsupported:
            raise UserError(f"sparse.backend=condensed: method={method.name} "
                            f"{method.condensed_unsupported}; use sparse.backend=masked")
        masks = method.masks
        if masks is None or not len(masks):
            raise UserError(f"sparse.backend=condensed: method={method.name} has no sparse layers")
        self.dense = False   # True on steps whose backward must give the dense weight gradient
        modules = {f"{name}.weight": m for name, m in model.named_modules()}
        self.layers: list[CondensedLayer] = []
        self.choices: list[dict[str, Any]] = []
        inputs = layer_inputs(model, [modules.get(n) for n in masks.names], example)
        for i, name in enumerate(masks.names):
            module = modules.get(name)
            why = unsupported_reason(module)
            if why:
                self.choices.append({"name": name, "run": "dense", "reason": why})
                continue
            layer = CondensedLayer(self, module, masks, i)
            choice = {"name": name, "run": layer.kernel}
            x = inputs.get(id(module))
            if x is not None:
                ms_kernel, ms_dense = time_layer(module, layer.kernel_forward, x)
                choice.update(ms_kernel=round(ms_kernel, 3), ms_dense=round(ms_dense, 3))
                if ms_dense < ms_kernel:
                    choice.update(run="dense", reason="dense was faster on the run's shapes")
            self.choices.append(choice)
            if choice["run"] != "dense":
                module.forward = layer      # instance attribute: parameter names do not change
                self.layers.append(layer)
        model.zero_grad(set_to_none=True)   # the timing runs left gradients behind

    def names(self) -> list[str]:
        """The layers that run through the kernels."""
        return [layer.name for layer in self.layers]


class CondensedLayer:
    """The forward of one sparse layer under the condensed backend."""

    def __init__(self, backend: CondensedBackend, module: nn.Module, masks: MaskManager,
                 i: int) -> None:
        self.backend, self.module, self.masks, self.i = backend, module, masks, i
        self.name = masks.names[i]
        self.kernel = "sconv" if isinstance(module, nn.Conv2d) else "cfi"
        self.refresh()

    def refresh(self) -> None:
        """ELL index of the layer's current mask (and, for Linear, the CSC transpose)."""
        mask = self.masks.masks[self.i]
        idx = ell_from_mask(mask)
        self.valid = idx >= 0
        self.all_valid = bool(self.valid.all())
        if self.kernel == "sconv":
            self.idx, self.gather_idx = idx, idx.clamp(min=0).long()
        else:  # the linear kernels have no padded slots: zero-valued copies of column 0
            self.idx = idx.clamp(min=0).contiguous()
            self.gather_idx = self.idx.long()
            self.t_index = torch.ops.sparse_run.cfi_transpose_index(self.idx, mask[0].numel())
        self.mask = mask

    def __call__(self, x: Tensor) -> Tensor:
        if self.backend.dense:
            return type(self.module).forward(self.module, x)
        return self.kernel_forward(x)

    def kernel_forward(self, x: Tensor) -> Tensor:
        m = self.module
        if self.masks.masks[self.i] is not self.mask:
            self.refresh()
        w, bias = m.weight, m.bias
        values = w.reshape(w.shape[0], -1).gather(1, self.gather_idx)
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            x, values = x.to(dtype), values.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if self.kernel == "sconv":  # padded slots: skipped, zero gradient
            return sconv2d(x, values, self.idx, bias, m.kernel_size, m.stride, m.padding)
        if not self.all_valid:
            values = values * self.valid
        return cfi_linear(x, values, self.idx, bias, self.t_index)


def apply_backend(name: str, model: nn.Module, method: SparsityMethod,
                  example: Tensor | None = None) -> CondensedBackend | None:
    """Install the configured backend after ``method.setup``; None for ``masked``.

    ``example``: a batch of the run's input shape; when given, each layer runs whichever of
    kernel and dense was faster on it (timed once), else every supported layer runs the kernel.
    """
    if name not in BACKENDS:
        raise UserError(f"sparse.backend={name!r} is unknown; valid: {', '.join(BACKENDS)}")
    if name == "masked":
        return None
    backend = CondensedBackend(model, method, example)
    method.backend = backend
    return backend
