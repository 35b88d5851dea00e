"""ResNets: torchvision compatibility, CIFAR form, width multiplier, zero-init residual BN."""
from __future__ import annotations

import pytest
import torch
import torchvision

from sparse_runner.models import build_model
from sparse_runner.models.resnet import BasicBlock


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_imagenet_form_matches_torchvision_exactly(name):
    ours = build_model({"name": name}, in_channels=3, num_classes=1000, image_size=224).eval()
    ref = getattr(torchvision.models, name)().eval()
    ours.load_state_dict(ref.state_dict())  # identical parameter names and shapes
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x))


def test_cifar_form():
    m = build_model({"name": "resnet18"}, in_channels=3, num_classes=10, image_size=32)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert isinstance(m.maxpool, torch.nn.Identity)
    assert sum(p.numel() for p in m.parameters()) == 11_173_962  # the usual CIFAR ResNet-18 count
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_dataset_sets_channels_and_classes():
    m = build_model({"name": "resnet18"}, in_channels=1, num_classes=7, image_size=8)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 7
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_width_multiplier_follows_official_rounding():
    # Sparse Wide at s=0.9: b = 10, W = int(64 * sqrt(10)) = 202; stages W, 2W, 4W, 8W.
    m = build_model({"name": "resnet18"}, in_channels=3, num_classes=100, image_size=32,
                    width_mult=10 ** 0.5)
    assert [m.conv1.out_channels, m.layer2[0].conv1.out_channels, m.fc.in_features] == [202, 404, 1616]


def test_zero_init_last_bn_and_kaiming():
    m = build_model({"name": "resnet18"}, in_channels=3, num_classes=10, image_size=32)
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock)]
    assert all(int(b.bn2.weight.count_nonzero()) == 0 for b in blocks)
    assert all(bool((b.bn1.weight == 1).all()) for b in blocks)
    w = m.layer3[0].conv1.weight  # kaiming normal, fan_out mode: std = sqrt(2 / (out * 9))
    assert abs(w.std().item() - (2 / (w.shape[0] * 9)) ** 0.5) < 0.01
