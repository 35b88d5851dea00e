"""The official Sparse-IFT FLOP budget: the launcher's CIFAR ResNet-18 number exactly, and the
per-op rules on a model small enough to count by hand."""
from __future__ import annotations

import torch
from torch import nn

from sparse_runner.flop_budget import official_count
from sparse_runner.flops import trace_layers
from sparse_runner.models.resnet import ResNet


def test_cifar_resnet18_budget_is_the_official_launchers():
    with torch.device("meta"):
        model = ResNet([2, 2, 2, 2], num_classes=100)
    table = trace_layers(model, (3, 32, 32))
    assert table.dense_fwd() == 1_110_937_600          # ours: 2 per conv/linear MAC
    count = official_count(model, (3, 32, 32), table)
    assert count.dense() == 1_115_226_800              # scripts/launch_pretraining.sh
    # BN: 7·numel - C summed over the 20 BNs (614,400 elements, 4,800 channels), fc bias 100
    assert count.fixed == 7 * 614_400 - 4_800 + 100


def test_rules_by_hand():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=True), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.LayerNorm(5))
    count = official_count(model, (2, 4, 4))
    conv = (2 * 54 - 1) * 16 + 3 * 16          # mult + adds, bias adds per output element
    bn = 7 * 48 - 3
    fc = (2 * 48 - 1) * 5 + 5
    ln = 7 * 5 - 1
    assert count.dense() == conv + bn + fc + ln
    half = {"0.weight": 0.5, "4.weight": 0.5}
    assert count.table.sparse_fwd(half) == 0.5 * ((2 * 54 - 1) * 16 + (2 * 48 - 1) * 5)
