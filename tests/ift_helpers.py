"""Models and builders shared by the Sparse-IFT tests (test_ift_*.py, test_flops.py, test_isoflop.py)."""
from __future__ import annotations

from typing import Callable, Iterator

import pytest
import torch
from torch import nn

from sparse_runner.flops.tables import LayerTable, trace_layers
from sparse_runner.ift import build_ift_model
from sparse_runner.models import build_model

CIFAR = (3, 32, 32)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models on a shared CPU: one intra-op thread is faster than two fighting for cores
    (10x and more when other processes are busy), and gives the same numbers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def resnet(name: str = "resnet18", classes: int = 100, size: int = 32,
           **opts) -> Callable[[float], nn.Module]:
    """``build(width_mult)`` for one of our ResNets, as run.py passes it to build_ift_model."""
    def build(width_mult: float) -> nn.Module:
        return build_model({"name": name, **opts}, in_channels=3, num_classes=classes,
                           image_size=size, width_mult=width_mult)
    return build


def meta(ift: str, s: float, build: Callable[[float], nn.Module], shape=CIFAR,
         **options) -> tuple[nn.Module, LayerTable]:
    """The transformed model on the meta device and its layer table."""
    with torch.device("meta"):
        model = build_ift_model({"name": ift, **options}, s, build, shape)
    return model, trace_layers(model, shape)


class SepNet(nn.Module):
    """A MobileNet-like block: stem, pointwise expand, depthwise 3x3, pointwise project, head.

    With ``paper_depthwise`` it sizes the depthwise outputs the way appendix A.1.1 asks
    (``width_mult.depthwise_channels``) when Sparse Wide passes that information."""

    def __init__(self, width_mult: float = 1.0, paper_depthwise: bool = True) -> None:
        super().__init__()
        c, e = int(8 * width_mult), int(16 * width_mult)
        rule = getattr(width_mult, "depthwise_channels", None)
        d = rule(16, e) if (rule and paper_depthwise) else e
        self.stem = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.expand = nn.Conv2d(c, e, 1, bias=False)
        self.dw = nn.Conv2d(e, d, 3, padding=1, groups=e, bias=False)
        self.project = nn.Conv2d(d, c, 1, bias=False)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.dw(torch.relu(self.expand(x))))
        return self.fc(self.project(x).mean((2, 3)))


class MLP(nn.Module):
    """Linear layers only, with a (batch, tokens, features) input for the 3-D norm path."""

    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        h = int(32 * width_mult)
        self.inp, self.hidden, self.out = nn.Linear(12, h), nn.Linear(h, h), nn.Linear(h, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(torch.relu(self.inp(x)))))
