"""Inference export: swap the masked ``nn.Linear`` layers of a trained model for sparse modules.

``masks`` maps parameter names (``"fc1.weight"``, as in checkpoints' ``masks``) to bool tensors
of the weight's shape; Linear layers without a mask and all other layers stay as they are.
:func:`export_condensed` needs constant fan-in masks (SRigL, static constant fan-in; ablated
empty rows are fine) and uses :class:`SparseLinear`; :func:`export_csr` takes any mask and uses
torch.sparse CSR. Both compute exactly what the masked layer computes, ``x @ (W * mask).T + b``,
up to float summation order.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..kernels.sparse_linear import SparseLinear
from .formats import to_csr

__all__ = ["CSRLinear", "export_condensed", "export_csr"]


class CSRLinear(nn.Module):
    """Inference-only linear layer with a torch.sparse CSR weight: input (..., in) -> (..., out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> None:
        super().__init__()
        weight = weight.detach()
        mask = weight != 0 if mask is None else mask.to(weight.device).bool()
        self.out_features, self.in_features = weight.shape
        parts = to_csr(weight, mask)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, chosen
            warnings.simplefilter("ignore", UserWarning)
            csr = torch.sparse_csr_tensor(parts["crow_indices"].long(), parts["col_indices"].long(),
                                          parts["values"], size=tuple(weight.shape))
        self.register_buffer("weight", csr)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = torch.sparse.mm(self.weight, x.reshape(-1, self.in_features).t()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (f"in_features={self.in_features}, out_features={self.out_features}, nnz={nnz}, "
                f"bias={self.bias is not None}")


def _swap(model: nn.Module, masks: Mapping[str, torch.Tensor], inplace: bool,
          make: Callable[[str, nn.Linear, torch.Tensor], nn.Module]) -> nn.Module:
    model = model if inplace else copy.deepcopy(model)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and f"{name}.weight" in masks]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = make(name, linear, masks[f"{name}.weight"])
        setattr(parent, child, new.to(linear.weight.device).train(linear.training))
    return model


def export_condensed(model: nn.Module, masks: Mapping[str, torch.Tensor],
                     inplace: bool = False) -> nn.Module:
    """Copy of ``model`` (or ``model`` itself) with masked Linear layers as ``SparseLinear``.

    Raises ValueError naming the layer when a mask is not constant fan-in.
    """
    def make(name: str, linear: nn.Linear, mask: torch.Tensor) -> nn.Module:
        try:
            return SparseLinear.from_linear(linear, mask, allow_empty_rows=True)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}; use export_csr for unstructured masks") from None

    return _swap(model, masks, inplace, make)


def export_csr(model: nn.Module, masks: Mapping[str, torch.Tensor],
               inplace: bool = False) -> nn.Module:
    """Copy of ``model`` (or ``model`` itself) with masked Linear layers as ``CSRLinear``."""
    return _swap(model, masks, inplace,
                 lambda name, linear, mask: CSRLinear(linear.weight, linear.bias, mask))
