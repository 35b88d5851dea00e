"""``SparseLinear``: a linear layer with a fixed number of nonzero weights per output neuron.

Constant fan-in (every output row has exactly k nonzeros, as in SRigL) allows a condensed
storage: trainable ``values`` [out_features, k] plus an int32 ``indices`` buffer of the same
shape. Only the nonzeros are parameters (fewer trainable parameters, fewer optimizer states),
and forward/backward run through the compiled kernels of the ``sparse_run::cfi_*`` operators.

For a sparse-training method that moves weights (SRigL), :meth:`SparseLinear.set_mask` swaps the
structure in place (surviving weights and their optimizer state keep their values, new ones
start at zero), :meth:`from_dense` builds the layer from a masked ``nn.Linear``, and
``capture_dense_grad`` exposes the dense weight gradient needed to grow connections.
Rows may be ablated (SRigL's neuron ablation, ``allow_empty_rows=True``): they keep zero
weights and zero gradients, so their output is the bias.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import build, ops, packed, reference

_cfi_forward = ops.sparse_ops.cfi_forward
_cfi_forward_packed = ops.sparse_ops.cfi_forward_packed
PACKED_MAX_BATCH = 4  # inference batches up to this use the packed layout (packed.py) on CPU

__all__ = ["SparseLinear", "condense_mask"]


def condense_mask(mask: torch.Tensor, allow_empty_rows: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool mask [out, in] -> (int32 indices [out, k] ascending per row, bool active [out]).

    Every row must hold the same number k >= 1 of True entries; with ``allow_empty_rows``
    rows may also be empty (they get the placeholder columns 0..k-1 and active=False).
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D [out_features, in_features], got {list(mask.shape)}")
    mask = mask.bool()
    counts = mask.sum(1)
    k = int(counts.max()) if counts.numel() else 0
    if k == 0:
        raise ValueError("the mask has no nonzero entries: every row needs k >= 1 of them")
    active = counts > 0
    if bool((counts[active] != k).any()) or (not allow_empty_rows and not bool(active.all())):
        bad = sorted(set(counts.tolist()))
        raise ValueError(
            f"rows have unequal numbers of nonzeros ({bad[:6]}{'...' if len(bad) > 6 else ''}): "
            f"a constant fan-in layer needs exactly k per row"
            + ("" if allow_empty_rows else " (or allow_empty_rows=True for ablated rows)"))
    # Stable sort of ~mask puts the True columns first, in ascending order.
    indices = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :k]
    return indices.to(torch.int32).contiguous(), active


class SparseLinear(nn.Module):
    """Drop-in ``nn.Linear`` with constant fan-in sparsity: input (..., in) -> (..., out).

    ``SparseLinear(in_features, out_features, sparsity, bias=True)`` draws k = round((1 - s) *
    in_features) (at least 1) random input columns per output neuron. Weights are initialised
    uniformly in +-1/sqrt(k), the Kaiming-uniform bound of ``nn.Linear`` computed with the
    *sparse* fan-in k: with the dense fan-in the output variance would shrink by k/in_features
    and deep sparse nets would start with vanishing signals (Evci et al. 2022; SRigL).
    """

    def __init__(self, in_features: int, out_features: int, sparsity: float, bias: bool = True,
                 *, device: Any = None, dtype: torch.dtype | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be positive, got "
                             f"{in_features} and {out_features}")
        if not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        k = max(1, min(in_features, round((1.0 - float(sparsity)) * in_features)))
        scores = torch.rand(out_features, in_features, generator=generator)
        indices = scores.topk(k, dim=1).indices.sort(dim=1).values.to(torch.int32)
        bound = 1.0 / math.sqrt(k)
        values = (torch.rand(out_features, k, generator=generator) * 2 - 1) * bound
        b = (torch.rand(out_features, generator=generator) * 2 - 1) * bound if bias else None
        self._setup(values.to(device=device, dtype=dtype),
                    None if b is None else b.to(device=device, dtype=dtype),
                    indices.to(device), torch.ones(out_features, dtype=torch.bool, device=device))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   mask: torch.Tensor | None = None,
                   allow_empty_rows: bool = False) -> SparseLinear:
        """The layer whose dense weight is ``weight * mask`` (mask defaults to ``weight != 0``).

        Raises ValueError when rows have unequal numbers of nonzeros (not constant fan-in).
        """
        weight = weight.detach()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-D [out_features, in_features], got "
                             f"{list(weight.shape)}")
        mask = weight != 0 if mask is None else mask.to(weight.device)
        indices, active = condense_mask(mask, allow_empty_rows)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = weight.shape
        b = None if bias is None else bias.detach().clone().to(weight.dtype)
        layer._setup(weight.gather(1, indices.long()) * active.unsqueeze(1), b, indices, active)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor,
                    allow_empty_rows: bool = True) -> SparseLinear:
        """Condensed copy of a masked ``nn.Linear`` (what a sparse-training backend swaps in)."""
        return cls.from_dense(linear.weight, linear.bias, mask=mask,
                              allow_empty_rows=allow_empty_rows)

    def _setup(self, values: torch.Tensor, bias: torch.Tensor | None, indices: torch.Tensor,
               active: torch.Tensor) -> None:
        self.values = nn.Parameter(values)
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias))
        self.register_buffer("indices", indices)
        self.register_buffer("active", active)
        self.register_buffer("t_index", None, persistent=False)
        self.capture_dense_grad = False
        self._dense_w: torch.Tensor | None = None
        self._packed: tuple[torch.Tensor, int, torch.dtype, packed.Packed] | None = None
        self.register_load_state_dict_post_hook(SparseLinear._post_load)
        self._refresh()

    @staticmethod
    def _post_load(module: SparseLinear, incompatible_keys: Any) -> None:
        module._refresh()

    def _refresh(self) -> None:
        """Validate the structure and rebuild what derives from it (CSC transpose, flags)."""
        idx = self.indices
        if idx.dtype != torch.int32 or idx.shape != self.values.shape:
            raise ValueError(f"indices must be int32 with the shape of values "
                             f"{list(self.values.shape)}, got {idx.dtype} {list(idx.shape)}")
        if idx.shape[1] < 1:
            raise ValueError("k (nonzeros per row) must be at least 1, got 0")
        reference.check_index_range("SparseLinear", idx, self.in_features)
        if idx.shape[1] > 1 and not bool((idx[:, 1:] > idx[:, :-1]).all()):
            raise ValueError("SparseLinear: indices must be strictly increasing within each row")
        self._all_active = bool(self.active.all())
        self._packed = None
        build.ensure(idx.device.type)
        self.t_index = torch.ops.sparse_run.cfi_transpose_index(idx, self.in_features)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint taken after a mask update may have another k: adopt its shape first.
        values = state_dict.get(prefix + "values")
        if values is not None and values.shape != self.values.shape:
            self.values = nn.Parameter(self.values.detach().new_empty(values.shape),
                                       requires_grad=self.values.requires_grad)
            self.indices = self.indices.new_empty(values.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------ structure
    @property
    def k(self) -> int:
        """Nonzero weights per (active) output neuron."""
        return int(self.values.shape[1])

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights of the equivalent dense matrix (ablated rows included)."""
        nnz = self.k * int(self.active.sum())
        return 1.0 - nnz / (self.out_features * self.in_features)

    def _effective_values(self) -> torch.Tensor:
        if self._all_active:
            return self.values
        return self.values * self.active.unsqueeze(1).to(self.values.dtype)

    def to_dense(self) -> torch.Tensor:
        """The equivalent dense weight [out_features, in_features] (differentiable in values)."""
        return reference.dense_weight(self._effective_values(), self.indices, self.in_features)

    def dense_mask(self) -> torch.Tensor:
        """Bool [out_features, in_features]: True where the layer has a weight."""
        mask = torch.zeros(self.out_features, self.in_features, dtype=torch.bool,
                           device=self.indices.device)
        return mask.scatter_(1, self.indices.long(), True) & self.active.unsqueeze(1)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
                 allow_empty_rows: bool = True) -> torch.Tensor:
        """Move the nonzeros to ``mask`` (bool [out, in], constant fan-in; k may change).

        Weights at positions kept by the new mask keep their values (and gradients), new
        positions start at zero. Optimizer state shaped like ``values`` (momentum, Adam
        moments) is remapped the same way when ``optimizer`` is given. If k changes, ``values``
        becomes a new Parameter (autograd cannot resize a leaf in place) and ``optimizer``'s
        param groups are updated to it: pass the optimizer that trains this layer. Returns,
        for each new position, its flat position in the old ``values`` or -1.
        """
        if tuple(mask.shape) != (self.out_features, self.in_features):
            raise ValueError(f"mask must have shape [{self.out_features}, {self.in_features}], "
                             f"got {list(mask.shape)}")
        indices, active = condense_mask(mask.to(self.indices.device), allow_empty_rows)
        # Match (row, column) keys of the new structure against the old one (both sorted).
        rows = torch.arange(self.out_features, device=indices.device).unsqueeze(1)
        old_keys = (rows * self.in_features + self.indices.long()).flatten()
        new_keys = (rows * self.in_features + indices.long()).flatten()
        pos = torch.searchsorted(old_keys, new_keys).clamp_(max=old_keys.numel() - 1)
        keep = ((old_keys[pos] == new_keys) & self.active[pos // self.k]
                & active.repeat_interleave(indices.shape[1]))

        def remap(t: torch.Tensor) -> torch.Tensor:
            zero = torch.zeros((), dtype=t.dtype, device=t.device)
            return torch.where(keep, t.flatten()[pos], zero).view(indices.shape)

        old = self.values
        new = old if indices.shape == old.shape else nn.Parameter(
            old.new_empty(indices.shape), requires_grad=old.requires_grad)
        new.data = remap(old.data)
        new.grad = None if old.grad is None else remap(old.grad)
        if optimizer is not None:
            state = optimizer.state.pop(old, {})
            optimizer.state[new] = {key: remap(v) if torch.is_tensor(v) and v.shape == old.shape
                                    else v for key, v in state.items()}
            for group in optimizer.param_groups:
                group["params"] = [new if p is old else p for p in group["params"]]
        self.values = new
        self.indices = indices
        self.active = active
        self._refresh()
        return torch.where(keep, pos, torch.full_like(pos, -1)).view(indices.shape)

    # ------------------------------------------------------------------ compute
    @property
    def dense_grad(self) -> torch.Tensor | None:
        """Dense weight gradient of the last backward while ``capture_dense_grad`` was on."""
        return None if self._dense_w is None else self._dense_w.grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit, params = self._packed, self._parameters
        if (hit is not None and not torch.is_grad_enabled() and x.dim() == 2
                and x.shape[0] <= PACKED_MAX_BATCH and x.shape[1] == self.in_features
                and x.is_cpu and hit[0] is params["values"] and hit[1] == hit[0]._version
                and hit[2] is x.dtype and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()):
            # Small-batch inference with an up-to-date packed layout. Batch-1 latency is a few
            # tens of microseconds, so this path avoids Module attribute lookups (~0.6 us each).
            return _cfi_forward_packed(x, *hit[3], params["bias"], self.out_features)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"SparseLinear expects input (..., {self.in_features}), got "
                             f"{list(x.shape)}")
        x, values, bias, out_dtype = ops.autocast_operands(x, self._effective_values(), self.bias)
        device = x.device.type
        if self.capture_dense_grad and torch.is_grad_enabled():
            # Mask-update step of a growing method: run dense once to expose dL/dW everywhere.
            w = reference.dense_weight(values, self.indices, self.in_features)
            w.retain_grad()
            self._dense_w = w
            y = F.linear(x, w, bias)
            return y if out_dtype is None else y.to(out_dtype)
        if self._dense_w is not None:
            self._dense_w = None
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if (not torch.compiler.is_compiling() and device == "cpu"
                and flat.shape[0] <= PACKED_MAX_BATCH and self._packable(flat, values, bias)):
            y = _cfi_forward_packed(flat, *self._packed_weights(values), bias, self.out_features)
        else:
            y = _cfi_forward(flat, values, self.indices, bias, self.t_index)
        y = y if out_dtype is None else y.to(out_dtype)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    @staticmethod
    def _packable(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """Inference (no gradient wanted) in fp32/bf16 with the compiled CPU kernels loaded."""
        if x.dtype == torch.float64 or (torch.is_grad_enabled() and (
                x.requires_grad or values.requires_grad
                or (bias is not None and bias.requires_grad))):
            return False
        return build.ensure("cpu") == "extension"

    def _packed_weights(self, values: torch.Tensor) -> packed.Packed:
        """The packed layout of the current weights, rebuilt when they change."""
        # Structure changes (set_mask, load_state_dict, .to) reset the cache in _refresh/_apply;
        # weight updates in place (optimizer steps) bump the version of ``values``.
        v = self.values
        hit = self._packed
        if hit is None or not (hit[0] is v and hit[1] == v._version and hit[2] is values.dtype):
            with torch.no_grad():
                self._packed = (v, v._version, values.dtype,
                                packed.pack(values.detach(), self.indices, self.in_features))
        return self._packed[3]

    def _apply(self, fn, recurse=True):  # .to(device) etc.: load the kernels for the new device
        out = super()._apply(fn, recurse)
        self._packed = None
        if not torch.compiler.is_compiling():
            build.ensure(self.indices.device.type)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}, "
                f"sparsity={self.sparsity:.4f}, bias={self.bias is not None}")
