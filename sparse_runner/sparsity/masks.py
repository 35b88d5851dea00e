"""The mask engine: exact-count bool masks over sparse weights, kept exactly zero cheaply.

Pruned weights are stored as physical zeros. Masking the gradient once per step (one
multi-tensor multiply) is then enough to keep pruned weights *and* their optimizer state
(SGD momentum, Adam moments, weight decay terms) exactly zero: every update term at a pruned
position is a product with zero. Only a mask change needs more: newly dropped positions have
nonzero weights and optimizer state, which :meth:`MaskManager.set_masks` zeroes once.

The multiply's scale tensors take their weight's memory layout (channels_last convolutions
have channels_last gradients): with mismatched strides ``_foreach_mul_`` leaves its fused
multi-tensor kernel for one strided kernel per tensor. Nonzero counts are cached per mask
(keyed by the tensor and its version counter) and recounted with one host read for all
changed masks, so logging the density costs no sync between mask updates.

Under ``sparse.backend=condensed`` a layer may be stored condensed (:meth:`MaskManager.condense`,
condensed_params.py): its trained parameter is its ELL values, its gradients have no pruned
entries (nothing to mask) and ``params[i]`` is a dense view made on demand (see
:class:`DenseViews`), so the methods read magnitudes and dense gradients as before.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import host

if TYPE_CHECKING:
    from .condensed_params import CondensedParam


class DenseViews(Sequence[Tensor]):
    """``MaskManager.params``: the dense Parameter of a layer stored dense, the dense view of a
    condensed one (materialised per access and owned by the caller: between mask updates no
    dense weight of a condensed layer stays alive)."""

    def __init__(self, manager: MaskManager) -> None:
        self._m = manager

    def __len__(self) -> int:
        return len(self._m.names)

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        store = self._m.stores[i]
        return self._m.dense_params[i] if store is None else store.dense()

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))


class MaskList(Sequence[Tensor]):
    """``MaskManager.masks``: the bool mask of a layer stored dense; for a condensed layer the
    mask its ELL index implies, made per access (the index is the mask: no dense bool tensor
    per condensed layer stays alive)."""

    def __init__(self, masks: list[Tensor | None], stores: list[CondensedParam | None]) -> None:
        self._masks, self._stores = masks, stores

    def __len__(self) -> int:
        return len(self._masks)

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        store = self._stores[i]
        return store.mask() if store is not None else self._masks[i]  # type: ignore[return-value]

    def __setitem__(self, i: int, mask: Tensor) -> None:
        self._masks[i] = mask

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))


class MaskManager:
    """Holds one bool mask per sparse weight (same shape as the weight; a condensed layer's
    is its index, see :class:`MaskList`)."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        params = dict(model.named_parameters())
        self.names: list[str] = list(names)
        self.dense_params: list[nn.Parameter] = [params[n] for n in self.names]
        self.stores: list[CondensedParam | None] = [None] * len(self.names)
        self.shapes = [tuple(p.shape) for p in self.dense_params]
        self.masks: MaskList | list[Tensor] = MaskList(
            [torch.ones_like(p, dtype=torch.bool) for p in self.dense_params], self.stores)
        # float copies of the masks in the weights' layout, made at the first mask_grads after
        # a mask change (a layer stored condensed never needs one)
        self._scale: list[Tensor | None] = [None] * len(self.names)
        self._nnz: list[tuple[Tensor, int, int] | None] = [None] * len(self.names)
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def params(self) -> DenseViews:
        """The sparse weights, dense-shaped (views of condensed layers made on demand)."""
        return DenseViews(self)

    def condense(self, i: int, store: CondensedParam) -> None:
        """Layer ``i`` is now stored condensed by ``store`` (installed by the backend)."""
        self.stores[i] = store
        self._scale[i] = None
        self.dense_params[i] = None  # type: ignore[call-overload]
        self.masks[i] = None  # type: ignore[call-overload]   # implied by the store's index

    def release_views(self) -> None:
        """Free the dense leaves (and dense gradients) of the condensed layers."""
        for store in self.stores:
            if store is not None:
                store.release()

    @torch.no_grad()
    def unscale_dense_grads(self, inv_scale: Tensor) -> None:
        """Multiply the condensed layers' dense gradients by ``inv_scale`` (fp16 unscaling of
        what the optimizer does not hold; a layer stored dense is the optimizer's own)."""
        for store in self.stores:
            if store is not None:
                store.scale_dense_grad_(inv_scale)

    def __len__(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Remember the optimizer whose state must follow the masks."""
        self.optimizer = optimizer

    @torch.no_grad()
    def set_masks(self, new: Mapping[int, Tensor]) -> None:
        """Install new masks (by layer index): zero the weights and optimizer state they drop."""
        for i, mask in new.items():
            store = self.stores[i]
            shape = self.shapes[i]
            if tuple(mask.shape) != shape or mask.dtype != torch.bool:
                raise ValueError(f"mask for {self.names[i]} must be bool {shape}")
            if store is not None:
                store.set_mask(mask.to(store.values.device), self.optimizer)
                continue
            p = self.dense_params[i]
            self.masks[i] = mask.to(p.device)
            self._scale[i] = None
            p.mul_(self.masks[i])
            for state in self._state_tensors(p):
                state.mul_(self.masks[i].to(state.dtype))
        self.release_views()

    def _state_tensors(self, p: nn.Parameter) -> list[Tensor]:
        if self.optimizer is None:
            return []
        state = self.optimizer.state.get(p, {})
        return [v for v in state.values() if isinstance(v, Tensor) and v.shape == p.shape]

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero gradients at pruned positions: the one multi-tensor op of the hot path.

        Condensed layers have no pruned gradient entries; their dense leaves (a dense pass's
        dense gradient) go here, as the masked backend's dense gradient does: it is read
        (e.g. accumulated for a mask update) before this call, never after."""
        self.release_views()
        pairs = [(p.grad, self._scale_of(i)) for i, p in enumerate(self.dense_params)
                 if self.stores[i] is None and p.grad is not None]
        if pairs:
            grads, scales = zip(*pairs)
            torch._foreach_mul_(list(grads), list(scales))

    def _scale_of(self, i: int) -> Tensor:
        if self._scale[i] is None:  # the weight's strides: _foreach_mul_ stays fused
            self._scale[i] = torch.empty_like(self.dense_params[i]).copy_(self.masks[i])
        return self._scale[i]

    def nnz(self) -> list[int]:
        """Nonzeros per mask: cached; the masks changed since the last call are counted with
        one host read in all (count_nonzero: a bool .sum() upcasts and is ~10x slower)."""
        keys = [self._key(i) for i in range(len(self))]
        stale = [i for i, key in enumerate(keys) if not self._fresh(i, key)]
        if stale:
            counts = host.read(torch.stack([self._count(i) for i in stale]),
                               "nonzeros of the masks changed since the last count")
            for i, n in zip(stale, counts):
                self._nnz[i] = (keys[i][0], keys[i][1], int(n))
        return [entry[2] for entry in self._nnz]  # type: ignore[index]

    def _key(self, i: int) -> tuple[Tensor, int]:
        """What layer ``i``'s count depends on: its mask, or a condensed layer's index."""
        t = self.masks._masks[i] if isinstance(self.masks, MaskList) else self.masks[i]
        t = self.stores[i].index if self.stores[i] is not None else t  # type: ignore[union-attr]
        return t, t._version

    def _count(self, i: int) -> Tensor:
        store = self.stores[i]
        return torch.count_nonzero(self.masks[i] if store is None else store.index >= 0)

    def _fresh(self, i: int, key: tuple[Tensor, int]) -> bool:
        entry = self._nnz[i]
        return entry is not None and entry[0] is key[0] and entry[1] == key[1]

    def density(self) -> dict[str, float]:
        return {n: k / math.prod(shape) for n, k, shape in zip(self.names, self.nnz(), self.shapes)}

    def state_dict(self) -> dict[str, Tensor]:
        """Masks as bool tensors on the CPU, keyed by parameter name (the checkpoint contract)."""
        return {n: m.detach().cpu().clone() for n, m in zip(self.names, self.masks)}

    def load_state_dict(self, masks: Mapping[str, Tensor]) -> None:
        missing = set(self.names) - set(masks)
        if missing:
            raise ValueError(f"checkpoint lacks masks for {sorted(missing)[:3]}")
        self.set_masks({i: masks[n].bool() for i, n in enumerate(self.names)})
