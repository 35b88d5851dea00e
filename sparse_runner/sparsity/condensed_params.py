"""Parameters stored condensed: one kernel layer's trained weight as its ELL nonzeros.

Under ``sparse.backend=condensed`` every layer that runs a kernel keeps ``values [O, K]`` (an
``nn.Parameter``) and an int32 ``index [O, K]`` buffer (column of the flattened weight, -1 =
padded slot, whose value is an exact zero that never trains) in place of its dense ``weight``:
weight, gradient and optimizer state then scale with the nonzeros. A mask update remaps the
values and their optimizer state in place; when K changes, a new ``values`` Parameter takes
the old one's place in the module and in the optimizer (param groups and state), since
autograd keeps the shape of a leaf it has seen.

Dense views exist only where a method needs them: :meth:`CondensedParam.dense` materialises
the weight (freed by the caller) with, on the steps where the method wants the dense
gradient, that gradient as its ``.grad``. A convolution computes it from its output gradient
(``conv2d_weight``, one layer at a time in the backward) while still running the kernels, so
no dense weight exists even then; a Linear layer runs dense on :meth:`CondensedParam.dense_leaf`
instead, whose gradient a post-accumulate hook gathers into ``values.grad`` (overwritten by
the running total, so gradient accumulation over micro-batches is exact).
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..kernels import ell_from_mask
from . import host


def gather_ell(dense: Tensor, index: Tensor) -> Tensor:
    """The ELL values of ``dense`` [O, ...] at ``index`` [O, K] (padded slots: 0)."""
    flat = dense.reshape(dense.shape[0], -1)
    return flat.gather(1, index.clamp(min=0).long()).masked_fill_(index < 0, 0)


def scatter_ell(values: Tensor, index: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The dense tensor of ``shape`` whose nonzeros are ``values`` at ``index`` (no grad)."""
    out = values.new_zeros(shape[0], math.prod(shape[1:]))
    src = values.masked_fill(index < 0, 0)   # pads add 0 to column 0 (scatter_add: no clash)
    return out.scatter_add_(1, index.clamp(min=0).long(), src).view(shape)


def ell_of(mask: Tensor) -> tuple[Tensor, bool]:
    """The ELL index of ``mask`` and whether it has padded slots (rows of unequal counts):
    one host read per mask change, the only one the condensed backend makes."""
    counts = mask.reshape(mask.shape[0], -1).sum(1)
    if counts.numel() == 0:
        return ell_from_mask(mask), False
    hi, lo = host.read(torch.stack([counts.max(), counts.min()]),
                       "condensed layer: ELL width of a new mask")
    return ell_from_mask(mask, hi), lo < hi


def remap_positions(old: Tensor, new: Tensor, ncols: int) -> Tensor:
    """For every slot of the ELL index ``new``, the flat slot of ``old`` holding the same
    (row, column), or -1 (a grown position or a padded slot). Both indices are ascending per
    row with the pads last (:func:`ell_from_mask`), so row-major keys are sorted."""
    rows = torch.arange(old.shape[0], device=old.device).unsqueeze(1) * (ncols + 1)
    old_keys = (rows + torch.where(old < 0, ncols, old).long()).flatten()
    new_keys = (rows + new.long()).flatten()
    pos = torch.searchsorted(old_keys, new_keys).clamp_(max=old_keys.numel() - 1)
    hit = (old_keys[pos] == new_keys) & (new.flatten() >= 0)
    return torch.where(hit, pos, -1).view(new.shape)


def remap(t: Tensor, src: Tensor) -> Tensor:
    """``t`` [O, K_old] moved to the slots ``src`` names (:func:`remap_positions`); 0 elsewhere."""
    return t.flatten()[src.clamp(min=0)].masked_fill_(src < 0, 0)


class CondensedParam:
    """The condensed storage of one sparse layer (``module.values`` / ``module.index``)."""

    def __init__(self, module: nn.Module, name: str, mask: Tensor) -> None:
        w = module.weight
        self.module, self.name = module, name
        self.shape = tuple(w.shape)
        self.ncols = math.prod(self.shape[1:])
        self._index, self.padded = ell_of(mask.to(w.device))
        self.values = nn.Parameter(gather_ell(w.detach(), self._index),
                                   requires_grad=w.requires_grad)
        self.installed = False
        self.optimizer: torch.optim.Optimizer | None = None
        self._leaf: tuple[Tensor, int] | None = None
        self._dense_grad: Tensor | None = None   # a dense pass's dense weight gradient

    @property
    def index(self) -> Tensor:
        return self.module.index if self.installed else self._index

    @torch.no_grad()
    def mask(self) -> Tensor:
        """The bool mask the index stands for (made per call: the index is the mask)."""
        idx = self.index
        out = torch.zeros(self.shape[0], self.ncols, dtype=torch.uint8, device=idx.device)
        out.scatter_add_(1, idx.clamp(min=0).long(), (idx >= 0).to(torch.uint8))
        return out.bool().view(self.shape)

    def numel(self) -> int:
        """Elements of the dense weight this storage stands for."""
        return math.prod(self.shape)

    # ---- installation --------------------------------------------------------------------
    def install(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Replace the module's dense weight by values + index, here and in ``optimizer``."""
        m, w = self.module, self.module.weight
        del m._parameters["weight"]
        m.register_parameter("values", self.values)
        m.register_buffer("index", self._index)
        m.register_load_state_dict_pre_hook(self._adopt_shapes)
        m._condensed = self  # noqa: SLF001 (plain attribute: found by dense_weights/param counts)
        self.installed = True
        self.optimizer = optimizer
        if optimizer is not None:
            swap_param(optimizer, w, self.values, lambda t: gather_ell(t, self.index))

    def _replace_values(self, data: Tensor, convert: Any) -> None:
        """A new ``values`` Parameter holding ``data`` (another K) in the old one's place."""
        old = self.values
        self.values = nn.Parameter(data, requires_grad=old.requires_grad)
        if self.installed:
            self.module.values = self.values
        if self.optimizer is not None:
            swap_param(self.optimizer, old, self.values, convert)

    def _adopt_shapes(self, module: nn.Module, state_dict: dict[str, Any], prefix: str,
                      *args: Any) -> None:
        """A checkpoint taken after a mask update may have another K: take its shape first."""
        self.padded = True   # the loaded index is unread: the kernels mask padded slots
        saved = state_dict.get(prefix + "values")
        if saved is not None and saved.shape != self.values.shape:
            self._replace_values(self.values.detach().new_empty(saved.shape),
                                 lambda t: t.new_zeros(saved.shape))
            module.index = self.index.new_empty(saved.shape)
            self.release()

    # ---- mask changes --------------------------------------------------------------------
    @torch.no_grad()
    def set_mask(self, mask: Tensor, optimizer: torch.optim.Optimizer | None) -> None:
        """New index from ``mask``: kept (row, column) keep their value and optimizer state,
        grown ones start at 0 with 0 state, dropped ones are gone (K may change)."""
        if optimizer is not None:
            self.optimizer = optimizer
        new, self.padded = ell_of(mask.to(self.values.device))
        src = remap_positions(self.index, new, self.ncols)
        p = self.values
        grad = None if p.grad is None else remap(p.grad, src)
        if new.shape != p.shape:
            self._replace_values(remap(p.detach(), src), lambda t: remap(t, src))
        else:
            p.copy_(remap(p.detach(), src))
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            for key, v in list(state.items()):
                if torch.is_tensor(v) and v.shape == p.shape:
                    state[key] = remap(v, src)
        self.values.grad = grad
        if self.installed:
            self.module.index = new
        else:
            self._index = new
        self.release()

    # ---- dense views ---------------------------------------------------------------------
    @torch.no_grad()
    def dense(self) -> Tensor:
        """The dense weight: this step's dense leaf (its ``.grad`` = the dense gradient) while
        the values are unchanged since it was made, else a fresh copy nobody else holds."""
        if self._leaf is not None and self._leaf[1] == self.values._version:
            return self._leaf[0]
        w = scatter_ell(self.values.detach(), self.index, self.shape)
        if self._dense_grad is not None:
            w.grad = self._dense_grad
        return w

    def add_dense_grad(self, grad: Tensor) -> None:
        """Accumulate a dense weight gradient (micro-batches add up, in place) for :meth:`dense`;
        ``grad`` is owned by the store from now on."""
        grad = grad.to(self.values.dtype)
        if self._dense_grad is None:
            self._dense_grad = grad
        else:
            self._dense_grad.add_(grad)

    def take_dense_grad(self) -> Tensor | None:
        """This step's dense weight gradient, handed over: the store keeps no reference (the
        method's accumulator takes it without a copy)."""
        if self._leaf is not None:
            w = self._leaf[0]
            grad, w.grad = w.grad, None
            return grad
        grad, self._dense_grad = self._dense_grad, None
        return grad

    def scale_dense_grad_(self, factor: Tensor) -> None:
        """Scale the dense gradient (a convolution's, or the dense leaf's) in place."""
        if self._dense_grad is not None:
            self._dense_grad.mul_(factor)
        if self._leaf is not None and self._leaf[0].grad is not None:
            self._leaf[0].grad.mul_(factor)

    def dense_leaf(self) -> Tensor:
        """A dense leaf for a dense pass; its gradient is gathered into ``values.grad``."""
        if self._leaf is None or self._leaf[1] != self.values._version:
            with torch.no_grad():
                w = scatter_ell(self.values.detach(), self.index, self.shape)
            w.requires_grad_(True)
            w.register_post_accumulate_grad_hook(self._fold_grad)
            self._leaf = (w, self.values._version)
        return self._leaf[0]

    @torch.no_grad()
    def _fold_grad(self, w: Tensor) -> None:
        self.values.grad = gather_ell(w.grad, self.index).to(self.values.dtype)

    def release(self) -> None:
        """Drop the dense leaf and the dense gradient."""
        self._leaf = None
        self._dense_grad = None


def swap_param(optimizer: torch.optim.Optimizer, old: Tensor, new: Tensor, convert: Any) -> None:
    """Put ``new`` in ``old``'s place in the param groups; state tensors shaped like ``old``
    are converted by ``convert`` (other entries, e.g. Adam's scalar ``step``, are kept)."""
    for group in optimizer.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = {k: convert(v) if torch.is_tensor(v) and v.shape == old.shape
                                else v for k, v in state.items()}


def store_of(module: nn.Module) -> CondensedParam | None:
    """The condensed storage installed on ``module``, if any."""
    return getattr(module, "_condensed", None)


class DenseWeights(Mapping[str, Tensor]):
    """``name -> weight`` of every parameter, a condensed layer's weight under its dense name
    (``layer.weight``), materialised per access (one layer at a time): for reports that read
    weights (spectral metrics), not for training."""

    def __init__(self, model: nn.Module) -> None:
        self._params = dict(model.named_parameters())
        self._stores: dict[str, CondensedParam] = {}
        for name, module in model.named_modules():
            store = store_of(module)
            if store is not None:
                prefix = f"{name}." if name else ""
                self._params.pop(prefix + "values", None)
                self._stores[prefix + "weight"] = store

    def __getitem__(self, name: str) -> Tensor:
        store = self._stores.get(name)
        return self._params[name] if store is None else store.dense()

    def __contains__(self, name: object) -> bool:   # without materialising
        return name in self._params or name in self._stores

    def __iter__(self) -> Iterator[str]:
        return iter([*self._params, *self._stores])

    def __len__(self) -> int:
        return len(self._params) + len(self._stores)


def dense_weights(model: nn.Module) -> DenseWeights:
    """The model's weights by dense name (:class:`DenseWeights`)."""
    return DenseWeights(model)


def dense_param_count(model: nn.Module) -> int:
    """Parameters of the model as if every condensed layer were stored dense."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        store = store_of(module)
        if store is not None:
            total += store.numel() - store.values.numel()
    return total
