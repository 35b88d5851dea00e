"""Bad Sparse-IFT input fails with one line that names the problem and the fix."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import run_tiny
from ift_helpers import CIFAR, one_thread, resnet  # noqa: F401 (fixture)
from sparse_runner.utils.errors import UserError
from sparse_runner.ift import build_family, build_ift_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _raises(match: str, fn, *args, **kw) -> str:
    with pytest.raises(UserError, match=match) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


class Conv3dNet(nn.Module):
    def __init__(self, width_mult: float = 1.0) -> None:
        super().__init__()
        self.stem, self.mid, self.head = nn.Conv3d(3, 8, 3), nn.Conv3d(8, 8, 3), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.stem(x)).mean((2, 3, 4)))


class StdConv2d(nn.Conv2d):
    """A Conv2d subclass with its own forward (like timm's weight-standardised conv)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))
        return self._conv_forward(x, w, self.bias)


class CustomNet(nn.Module):
    def __init__(self, width_mult: float = 1.0, grouped: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.mid = nn.Conv2d(8, 8, 3, groups=2) if grouped else StdConv2d(8, 8, 3)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("ift", ["parallel", "factorized", "doped"])
def test_unsupported_layer_types(ift):
    msg = _raises("layer 'mid' of type Conv3d", build_ift_model, {"name": ift}, 0.5, Conv3dNet,
                  (3, 6, 6, 6))
    assert "ift.exclude=['mid']" in msg
    _raises("layer 'mid' of type StdConv2d", build_ift_model, {"name": ift}, 0.5, CustomNet,
            (3, 8, 8))


def test_grouped_conv_only_for_members_that_copy_the_layer():
    def grouped(width_mult: float = 1.0) -> nn.Module:
        return CustomNet(width_mult, grouped=True)

    _raises("grouped conv 'mid'", build_ift_model, {"name": "factorized"}, 0.5, grouped, (3, 8, 8))
    model = build_ift_model({"name": "parallel"}, 0.5, grouped, (3, 8, 8))
    assert all(b.groups == 2 for b in model.mid.branches)


def test_nothing_to_transform():
    _raises("no Conv/Linear layer to transform", build_ift_model,
            {"name": "parallel", "exclude": ["mid"]}, 0.5, Conv3dNet, (3, 6, 6, 6))


def test_model_that_ignores_width_mult():
    _raises("ignores width_mult", build_ift_model, {"name": "wide"}, 0.5, Conv3dNet, (3, 6, 6, 6))


@pytest.mark.parametrize("ift", ["wide", "parallel", "factorized", "doped"])
def test_zero_sparsity_needs_s(ift):
    _raises(f"ift={ift} needs a sparsity s > 0", build_ift_model, {"name": ift}, 0.0, resnet(),
            CIFAR)


def test_unknown_family_option_and_choice():
    _raises("unknown ift 'tall'; valid: doped, factorized, none, parallel, wide",
            build_family, {"name": "tall"})
    _raises("ift=parallel has no option 'branches'", build_family,
            {"name": "parallel", "branches": 3})
    _raises("ift.nonlinearity='tanh' is invalid", build_family,
            {"name": "factorized", "nonlinearity": "tanh"})
    _raises("ift.exclude pattern 'nope' matches no", build_ift_model,
            {"name": "doped", "exclude": ["nope"]}, 0.5, resnet(base_width=8), CIFAR)


def test_errors_reach_the_run_summary(tmp_path):
    with pytest.raises(UserError, match="unknown ift 'tall'"):
        run_tiny(tmp_path, "ift.name=tall", "method=static", "s=0.5", name="tall")
    summary = json.loads((tmp_path / "tall" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("unknown ift 'tall'")
    with pytest.raises(UserError, match="s > 0"):  # the method or the IFT says so, in one line
        run_tiny(tmp_path, "ift=wide", "method=static", "s=0.0", name="s0")
