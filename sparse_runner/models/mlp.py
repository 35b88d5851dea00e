"""Multi-layer perceptrons, default: the MNIST-1D reference MLP (Greydanus 2020,
``notebooks/models.py`` ``MLPBase``): 40 -> 100 -> 100 -> 10, ReLU, with the second hidden layer
residual (``h = h + relu(W2 h)``). Takes any image or 1-D signal (flattened), e.g. digits.

``depth`` hidden layers of ``hidden`` units: the first maps the input to the hidden width,
each further one is ``h -> act(W h)`` (plus ``h`` when ``residual``), and a Linear head gives
the classes. Width knob (Sparse Wide): every hidden width is ``int(hidden * width_mult)``; the
input and the classes are fixed by the data, so the stem's outputs and the head's inputs grow
with it, as a ResNet's stem and head do.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..utils.errors import UserError
from .base import options_only, takes

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU,
                                                   "tanh": nn.Tanh}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"model.activation={name!r} is unknown; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Module):
    """Flatten, ``depth`` hidden Linear layers (residual after the first), Linear head."""

    def __init__(self, in_features: int, num_classes: int, hidden: int, depth: int,
                 act: str = "relu", residual: bool = True) -> None:
        super().__init__()
        widths = [in_features] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(hidden, num_classes)
        self.act = activation(act)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.layers[0](x.flatten(1)))
        for layer in self.layers[1:]:
            h = h + self.act(layer(h)) if self.residual else self.act(layer(h))
        return self.head(h)


def input_features(in_channels: int, image_size: int, seq_len: int) -> int:
    """Features of one flattened sample: C*H*W for images, C*L for 1-D signals."""
    return in_channels * (image_size * image_size if image_size else seq_len)


@takes("image", "signal")
def build_mlp(*, in_channels: int, num_classes: int, image_size: int, seq_len: int = 0,
              width_mult: float = 1.0, **options: Any) -> nn.Module:
    options_only(options, {"depth", "hidden", "activation", "residual"}, "mlp")
    depth, hidden = int(options.get("depth", 2)), int(options.get("hidden", 100))
    width = int(hidden * width_mult)
    if depth < 1 or width < 1:
        raise UserError(f"model=mlp needs depth >= 1 and hidden * width_mult >= 1 "
                        f"(got depth={depth}, hidden={hidden}, width_mult={width_mult:.4g})")
    return MLP(input_features(in_channels, image_size, seq_len), num_classes, width, depth,
               str(options.get("activation", "relu")), bool(options.get("residual", True)))
