"""The official Sparse-IFT FLOP budget: the launcher's CIFAR ResNet-18 number exactly, and the
per-op rules on a model small enough to count by hand."""
from __future__ import annotations

import torch
from torch import nn

from sparse_runner.flops.budget import official_count
from sparse_runner.flops.tables import trace_layers
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


def test_official_budget_drives_the_isoflop_search(tmp_path):
    from conftest import compose

    from sparse_runner.run import run

    base = ["ift=wide", "s=0.5", "method=static", "dataset=synthetic", "dataset.num_classes=100",
            "dataset.num_samples=64", "dataset.num_test_samples=16", "run.dry_run=true",
            "run.device=cpu"]
    ours = run(compose(base), tmp_path / "ours")
    official = run(compose([*base, "sparse.flop_budget=official"]), tmp_path / "official")
    assert ours["isoflop"]["budget"] == "ours"
    assert ours["isoflop"]["target_fwd"] == 1_110_937_600
    assert official["isoflop"]["budget"] == "official"
    assert official["isoflop"]["target_fwd"] == 1_115_226_800
    assert abs(official["isoflop"]["rel_error"]) < 1e-5
    # the wide model's BN cost grows with width and not with density: a sparser model
    assert official["sparsity"]["effective"] > ours["sparsity"]["effective"]


def test_layernorm_over_a_sequence_counts_one_group_per_sample():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    count = official_count(model, (3, 4))               # 3 tokens of 4 features
    linear = 3 * 4 * 4 + 3 * 3 * 4 + 3 * 4               # multiplies, adds (in-1), bias adds
    assert count.dense() == linear + (7 * 12 - 1)
