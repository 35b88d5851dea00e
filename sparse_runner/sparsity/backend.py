"""Execution backends: how the sparse layers compute during training (``sparse.backend``).

* ``masked`` (default): every layer runs its own dense Conv/Linear on weights whose pruned
  entries are physical zeros (masks.py). Works for every method; no speedup.
* ``condensed``: the sparse layers of any mask-based method run through the compiled kernels
  of ``sparse_runner.kernels``: Conv2d (groups=1, dilation 1, zero padding) through the direct
  sparse convolution (``sconv2d``, ELL weight), Conv1d through the same kernel as a height-1
  convolution (its weight [O, C, k] flattens to the same ELL rows as [O, C, 1, k]), Linear
  through the constant fan-in kernels
  (rows padded to the longest with zero-valued slots when the fan-in is not constant).

What is stored: every layer that runs a kernel keeps only its nonzeros, ``values [O, K]`` (the
``nn.Parameter`` the optimizer trains, in the dense weight's place in its param groups) and an
int32 ``index [O, K]`` buffer (ELL: each output channel's nonzeros in a row padded to the
layer's largest row count; padded slots are exact zeros that never train and never count).
Weights, gradients and optimizer state (momentum, Adam moments) thus scale with the nonzeros;
a mask update rebuilds the index and remaps values and optimizer state by (row, column): kept
entries keep theirs, grown ones start at 0 with 0 state (condensed_params.py). Checkpoints
hold ``<layer>.values`` / ``<layer>.index`` (plus the masks, as always) and convert to and from
the masked backend's dense layout on resume (condensed_ckpt.py). The methods are unchanged:
``MaskManager.params`` gives them dense views made on demand (magnitudes at mask updates),
and on the steps where a method asks for the dense weight gradient (RigL-style growth) a
convolution still runs the kernels and computes that gradient from its output gradient (a
Linear layer runs dense on a materialised dense leaf); the dense view's ``.grad`` is it.

Per-layer choice: given an example batch, each layer's kernel is timed against its dense
forward+backward once at setup (backend_choice.py) and the faster one runs; layers the
kernels cannot run (grouped, dilated) stay dense. ``layers()`` lists the choices
(summary.json ``sparsity.backend.layers``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv1d_weight, conv2d_weight

from ..utils.errors import UserError
from ..kernels import cfi_linear, sconv2d
from ..kernels.ops import autocast_dtype, kernel_dtype
from ..utils.optional import attempt
from .backend_choice import layer_inputs, time_layer
from .condensed_params import CondensedParam

if TYPE_CHECKING:
    from .masks import MaskManager
    from .method import SparsityMethod

BACKENDS = ("masked", "condensed")
SECTION = "sparsity.backend"  # where summary.json records a failed layer timing (optional.py)
TIMING = "layer timing of the condensed backend"


def unsupported_reason(module: nn.Module | None) -> str:
    """Why the kernels cannot run this layer ("" if they can)."""
    if isinstance(module, nn.Linear):
        return ""
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return f"a {type(module).__name__} (the kernels run nn.Linear, nn.Conv1d and nn.Conv2d)"
    if module.groups != 1:
        return f"groups={module.groups} (grouped and depthwise convolutions stay dense)"
    if any(d != 1 for d in module.dilation):
        return f"dilation={tuple(module.dilation)}"
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        return f"padding={module.padding!r} padding_mode={module.padding_mode}"
    return ""


class CondensedBackend:
    """Routes the sparse Conv2d/Linear layers of a model through the compiled kernels and
    stores their weights condensed (condensed_params.py)."""

    def __init__(self, model: nn.Module, method: SparsityMethod,
                 example: Tensor | None = None) -> None:
        if method.condensed_unsupported:
            raise UserError(f"sparse.backend=condensed: method={method.name} "
                            f"{method.condensed_unsupported}; use sparse.backend=masked")
        masks = method.masks
        if masks is None or not len(masks):
            raise UserError(f"sparse.backend=condensed: method={method.name} has no sparse layers")
        self.dense = False   # True on steps whose backward must give the dense weight gradient
        self.masks = masks
        modules = {f"{name}.weight": m for name, m in model.named_modules()}
        self.layers: list[CondensedLayer] = []
        self.choices: list[dict[str, Any]] = []
        inputs = attempt(SECTION, TIMING, layer_inputs, model,
                         [modules.get(n) for n in masks.names], example, default={})
        for i, name in enumerate(masks.names):
            module = modules.get(name)
            why = unsupported_reason(module)
            if why:
                self.choices.append({"name": name, "run": "dense", "reason": why})
                continue
            layer = CondensedLayer(self, module, CondensedParam(module, name, masks.masks[i]))
            self.choices.append(self._choose(layer, inputs.get(id(module))))
            if self.choices[-1]["run"] != "dense":
                layer.store.install(masks.optimizer)
                masks.condense(i, layer.store)
                module.forward = layer      # instance attribute
                self.layers.append(layer)
        model.zero_grad(set_to_none=True)   # the timing runs left gradients behind

    @staticmethod
    def _choose(layer: CondensedLayer, x: Tensor | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"name": layer.name, "run": layer.kernel}
        if x is not None:
            timed = attempt(SECTION, TIMING, time_layer, layer.module, layer.kernel_forward, x)
            layer.store.values.grad = layer.module.weight.grad = None   # no dense grads pile up
            if timed is None:  # the kernel may be what failed: the dense way is the safe one
                return {**choice, "run": "dense", "reason": f"layer timing failed ({SECTION}.error)"}
            ms_kernel, ms_dense = timed
            choice.update(ms_kernel=round(ms_kernel, 3), ms_dense=round(ms_dense, 3))
            if ms_dense < ms_kernel:
                choice.update(run="dense", reason="dense was faster on the run's shapes")
        return choice

    def names(self) -> list[str]:
        """The layers that run through the kernels."""
        return [layer.name for layer in self.layers]

    def begin_step(self, dense: bool) -> None:
        """Before each step's forward: dense pass or kernels; last step's dense leaves go."""
        self.dense = dense
        self.masks.release_views()


class CondensedLayer:
    """The forward of one sparse layer under the condensed backend."""

    def __init__(self, backend: CondensedBackend, module: nn.Module, store: CondensedParam) -> None:
        self.backend, self.module, self.store = backend, module, store
        self.name = store.name
        self.kernel = "cfi" if isinstance(module, nn.Linear) else "sconv"
        self.one_d = isinstance(module, nn.Conv1d)   # run as a height-1 Conv2d
        self._key: tuple[int, int] | None = None

    def _refresh(self) -> None:
        """What derives from the index (for Linear: pads -> column 0, the CSC transpose);
        rebuilt when the index tensor is replaced or loaded into."""
        idx = self.store.index
        key = (id(idx), idx._version)
        if key == self._key:
            return
        self.valid = idx >= 0
        self.all_valid = not self.store.padded   # known from the mask update: no host read
        if self.kernel == "sconv":
            self.idx = idx
        else:  # the linear kernels have no padded slots: zero-valued copies of column 0
            self.idx = idx.clamp(min=0).contiguous()
            self.t_index = torch.ops.sparse_run.cfi_transpose_index(self.idx, self.store.ncols)
        self._key = key

    def __call__(self, x: Tensor) -> Tensor:
        if not (self.backend.dense and torch.is_grad_enabled()):
            return self.kernel_forward(x)
        if self.kernel != "sconv":
            return self.dense_forward(x, self.store.dense_leaf())
        y = self.kernel_forward(x)   # the dense weight gradient from dy, no dense weight
        if y.requires_grad:
            y.register_hook(self._dense_grad_hook(x))
        return y

    def _dense_grad_hook(self, x: Tensor) -> Callable[[Tensor], None]:
        m, store = self.module, self.store

        grad_weight = conv1d_weight if self.one_d else conv2d_weight

        def hook(gy: Tensor) -> None:
            store.add_dense_grad(grad_weight(x.detach().to(gy.dtype), store.shape, gy,
                                             stride=m.stride, padding=m.padding))
        return hook

    def dense_forward(self, x: Tensor, w: Tensor) -> Tensor:
        """The module's own computation on the dense weight ``w``."""
        m = self.module
        if self.kernel == "sconv":
            return m._conv_forward(x, w, m.bias)   # noqa: SLF001 (the conv's own forward)
        return F.linear(x, w, m.bias)

    def kernel_forward(self, x: Tensor) -> Tensor:
        m = self.module
        self._refresh()
        values, bias = self.store.values, m.bias
        dtype = autocast_dtype(x.device.type)
        if dtype is not None:
            dtype = kernel_dtype(x.device.type, dtype)   # CPU fp16: computed in fp32
            x, values = x.to(dtype), values.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if self.kernel == "sconv" and self.one_d:   # [N, C, L] as [N, C, 1, L]
            y = sconv2d(x.unsqueeze(2), values, self.idx, bias, (1, *m.kernel_size),
                        (1, *m.stride), (0, *m.padding))
            return y.squeeze(2)
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
