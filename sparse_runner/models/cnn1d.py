"""1-D convolutional nets for signals ``[C, L]``, default: the MNIST-1D reference CNN
(Greydanus 2020, ``notebooks/models.py`` ``ConvBase``): three Conv1d of 25 channels, kernels
5, 3, 3, stride 2, padding 1, ReLU after each, then the flattened features (25 x 5 for L=40)
to a Linear head.

Width knob (Sparse Wide): every conv's channels are ``int(channels * width_mult)``; the input
channels and the classes are fixed by the data.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..utils.errors import UserError
from .base import options_only, takes
from .mlp import activation


def conv_out_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN1d(nn.Module):
    """Conv1d -> act, repeated, then flatten and a Linear head."""

    def __init__(self, in_channels: int, num_classes: int, length: int, channels: int,
                 kernels: Sequence[int], stride: int, padding: int, act: str = "relu") -> None:
        super().__init__()
        convs, c_in = [], in_channels
        for k in kernels:
            convs.append(nn.Conv1d(c_in, channels, int(k), stride=stride, padding=padding))
            c_in, length = channels, conv_out_len(length, int(k), stride, padding)
        if length < 1:
            raise UserError(f"model=cnn1d: kernels {list(kernels)} with stride {stride} leave "
                            "no positions of the signal; use fewer or smaller kernels")
        self.convs = nn.ModuleList(convs)
        self.act = activation(act)
        self.head = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = self.act(conv(x))
        return self.head(x.flatten(1))


@takes("signal")
def build_cnn1d(*, in_channels: int, num_classes: int, image_size: int = 0, seq_len: int = 0,
                width_mult: float = 1.0, **options: Any) -> nn.Module:
    options_only(options, {"channels", "kernels", "stride", "padding", "activation"}, "cnn1d")
    width = int(int(options.get("channels", 25)) * width_mult)
    if width < 1:
        raise UserError(f"model=cnn1d: channels * width_mult = {width}; use more channels")
    kernels = [int(k) for k in options.get("kernels", (5, 3, 3))]
    return CNN1d(in_channels, num_classes, seq_len, width, kernels,
                 int(options.get("stride", 2)), int(options.get("padding", 1)),
                 str(options.get("activation", "relu")))
