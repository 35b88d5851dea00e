"""The FLOP counter (flops.py) against torch.utils.flop_counter.FlopCounterMode and published
numbers, on dense and Sparse-IFT models; the per-layer accounting shown by the dry run."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ift_helpers import one_thread, resnet  # noqa: F401 (fixture)
from sparse_runner.flops.tables import human, origins, trace_layers, train_flops_per_sample
from sparse_runner.ift import build_ift_model
from sparse_runner.summary import layer_rows, layer_table_csv, layer_table_text

pytestmark = pytest.mark.usefixtures("one_thread")

# Both depths in both stems; small inputs keep the real CPU forwards cheap (the counts are
# exact at any size).
MEMBERS = ("wide", "parallel", "factorized", "doped")
FORMS = [("resnet18", "cifar", 16), ("resnet18", "imagenet", 32),
         ("resnet34", "cifar", 16), ("resnet34", "imagenet", 32)]


def counted(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs FlopCounterMode sees in one eval-mode forward (2 per multiply-accumulate)."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("name, stem, size", FORMS)
def test_dense_resnets_agree_with_flop_counter_mode(name, stem, size):
    model = resnet(name, classes=10, size=size, stem=stem)(1.0)
    x = torch.randn(2, 3, size, size)
    assert counted(model, x) == 2 * trace_layers(model, (3, size, size)).dense_fwd()


@pytest.mark.parametrize("ift", MEMBERS)
def test_transformed_resnet18_agrees_with_flop_counter_mode_on_cpu(ift):
    build = resnet(classes=10, size=16, base_width=8)
    model = build_ift_model({"name": ift}, 0.75, build, (3, 16, 16))
    assert counted(model, torch.randn(2, 3, 16, 16)) == 2 * trace_layers(model, (3, 16, 16)).dense_fwd()


@pytest.mark.parametrize("name, stem, size", FORMS)
def test_full_size_members_agree_with_flop_counter_mode(name, stem, size):
    # Full widths at s=0.75 (4 branches, 2x wider, ...) on the meta device: same counter,
    # no compute.
    build = resnet(name, classes=100, size=size, stem=stem)
    for ift in MEMBERS:
        with torch.device("meta"):
            model = build_ift_model({"name": ift}, 0.75, build, (3, size, size))
            x = torch.empty(2, 3, size, size)
        assert counted(model, x) == 2 * trace_layers(model, (3, size, size)).dense_fwd(), ift


def test_cifar_resnet18_matches_the_published_count():
    # FlopCounterMode on torchvision's resnet18: 0.555 GMACs = 1.111 GFLOPs, 11.17 M params.
    model = resnet(classes=10)(1.0)
    fwd = trace_layers(model, (3, 32, 32)).dense_fwd()
    assert fwd == 1_110_845_440
    assert fwd / 2 == pytest.approx(0.555e9, rel=1e-3)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=1e-3)


def test_training_step_is_three_forwards():
    # Convention: fwd + bwd = 3 x fwd. FlopCounterMode agrees except for the stem's input
    # gradient, which nobody needs (the input does not require grad).
    model = resnet(classes=10, base_width=16)(1.0)
    table = trace_layers(model, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    stem_dx = 2 * table.layers[0].fwd_flops
    assert counter.get_total_flops() == 2 * train_flops_per_sample(table.dense_fwd()) - stem_dx


def test_sparse_flops_scale_with_density():
    table = trace_layers(resnet(classes=10, base_width=8)(1.0), (3, 32, 32))
    density = {n: 0.25 for n in table.names[1:-1]}
    sparse = table.sparse_fwd(density)
    stem_head = table.layers[0].fwd_flops + table.layers[-1].fwd_flops
    assert sparse == pytest.approx(stem_head + 0.25 * (table.dense_fwd() - stem_head))


def test_layer_table_maps_every_layer_to_its_baseline():
    build = resnet(classes=10, base_width=8)
    base = trace_layers(build(1.0), (3, 32, 32))
    model = build_ift_model({"name": "parallel"}, 0.75, build, (3, 32, 32))
    table = trace_layers(model, (3, 32, 32))
    src = origins(table, base)
    assert src["layer1.0.conv1.branches.3.weight"] == "layer1.0.conv1.weight"
    assert src["conv1.weight"] == "conv1.weight" and src["fc.weight"] == "fc.weight"
    rows = layer_rows(table, {}, table.names[1:-1], baseline=base)
    assert sum(r["fwd_flops_baseline"] or 0 for r in rows) == base.dense_fwd()
    assert [r["fwd_flops_baseline"] is None for r in rows].count(False) == len(base)
    text = layer_table_text(rows)
    assert "baseline FLOPs" in text and human(train_flops_per_sample(table.dense_fwd())) in text
    header = layer_table_csv(rows).splitlines()[0]
    assert header.split(",")[5] == "fwd_flops_baseline"
