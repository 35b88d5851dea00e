"""Sparse-IFT beyond the ResNets: Linear layers, depthwise convs (appendix A.1.1), the s -> 0
limits (each member reduces to the dense layer's FLOPs) and the members' algebra."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ift_helpers import CIFAR, MLP, SepNet, meta, one_thread, resnet  # noqa: F401 (fixture)
from sparse_runner.utils.errors import UserError
from sparse_runner.flops.tables import origins, trace_layers
from sparse_runner.ift import build_family, build_ift_model
from sparse_runner.ift._swap import fan
from sparse_runner.ift.factorized import Factorized
from sparse_runner.ift.parallel import ParallelBranches
from sparse_runner.ift.wide import Width
from sparse_runner.sparsity.filter import is_marked_dense

pytestmark = pytest.mark.usefixtures("one_thread")

MEMBERS = ("wide", "parallel", "factorized", "doped")


def _at(ift: str, s: float, build, shape=CIFAR) -> nn.Module:
    """The member at s without the s > 0 guard, to look at its s -> 0 limit."""
    family = build_family({"name": ift})
    with torch.device("meta"):
        model = family.build(build, s, shape)
    names = trace_layers(model, shape).names
    keep = {n.rsplit(".", 1)[0] for n in (names[0], names[-1])}
    return family.transform(model, s, keep)


@pytest.mark.parametrize("ift", ["wide", "parallel", "doped"])
def test_zero_sparsity_is_the_dense_model(ift):
    build = resnet()
    with torch.device("meta"):
        base = trace_layers(build(1.0), CIFAR)
    table = trace_layers(_at(ift, 0.0, build), CIFAR)
    # k_sw = 1, one branch, rank 0: exactly the dense layers, layer for layer.
    assert {o for o in origins(table, base).values()} == set(base.names)
    assert table.dense_fwd() == base.dense_fwd()


def test_zero_sparsity_factorized_is_a_dense_low_rank_of_equal_flops():
    build = resnet()
    with torch.device("meta"):
        base = trace_layers(build(1.0), CIFAR)
    model = _at("factorized", 0.0, build)
    table = trace_layers(model, CIFAR)
    per_origin: dict[str, int] = {}
    for name, src in origins(table, base).items():
        per_origin[src] = per_origin.get(src, 0) + table[name].fwd_flops
    for src, flops in per_origin.items():
        dense = base[src].fwd_flops
        module = model.get_submodule(src.rsplit(".", 1)[0])
        if isinstance(module, Factorized):  # d = ceil(Din·Dout/(Din+Dout)): one rank unit over
            d_in, d_out = fan(module.u)[0], module.v.out_channels
            positions = dense // (2 * d_in * d_out)
            assert 0 <= flops - dense < 2 * positions * (d_in + d_out)
        else:
            assert flops == dense


def test_parallel_without_norm_is_one_layer_with_summed_weights():
    model = build_ift_model({"name": "parallel", "norm": "none"}, 0.75, resnet(base_width=8),
                            (3, 16, 16))
    layer = model.layer1[0].conv1
    assert isinstance(layer, ParallelBranches) and len(layer.branches) == 4
    x = torch.randn(2, 8, 16, 16)
    folded = sum(b.weight for b in layer.branches)
    torch.testing.assert_close(layer(x), F.conv2d(x, folded, padding=1), rtol=1e-4, atol=1e-4)


def test_linear_factorized_is_v_times_u():
    model = build_ift_model({"name": "factorized", "nonlinearity": "linear"}, 0.5, MLP, (7, 12))
    layer = model.hidden
    x = torch.randn(3, 7, 32)
    folded = layer.v.weight @ layer.u.weight
    torch.testing.assert_close(layer(x), F.linear(x, folded, layer.v.bias), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ift", MEMBERS)
def test_linear_layers_transform(ift):
    model = build_ift_model({"name": ift}, 0.75, MLP, (7, 12))
    model.train()
    assert model(torch.randn(4, 7, 12)).shape == (4, 7, 5)  # 3-D input through the norms
    table = trace_layers(model, (7, 12))
    assert table.names[0] == "inp.weight" and table.names[-1] == "out.weight"
    if ift != "wide":
        assert type(model.inp) is nn.Linear and type(model.out) is nn.Linear
        assert type(model.hidden) is not nn.Linear


def test_wide_depthwise_widens_outputs_by_one_over_density():
    # s = 0.75: k_sw = 2 for ordinary layers, 1/(1-s) = 4 for the depthwise outputs (A.1.1).
    model = build_ift_model({"name": "wide"}, 0.75, SepNet, CIFAR)
    assert model.expand.weight.shape == (32, 16, 1, 1)          # 2x in, 2x out
    assert model.dw.in_channels == 32 and model.dw.groups == 32
    assert model.dw.out_channels == 4 * 16                      # 4x the dense 16 outputs
    assert model.project.in_channels == 64
    assert Width(0.75).depthwise == 4.0


def test_wide_depthwise_rule_is_enforced_or_waived():
    def uniform(width_mult: float = 1.0) -> nn.Module:
        return SepNet(width_mult, paper_depthwise=False)

    with pytest.raises(UserError, match="depthwise conv 'dw'.*ift.depthwise=uniform"):
        build_ift_model({"name": "wide"}, 0.75, uniform, CIFAR)
    model = build_ift_model({"name": "wide", "depthwise": "uniform"}, 0.75, uniform, CIFAR)
    assert model.dw.out_channels == 32


@pytest.mark.parametrize("ift", ["parallel", "factorized", "doped"])
def test_depthwise_left_unchanged_and_dense(ift):
    model = build_ift_model({"name": ift}, 0.75, SepNet, CIFAR)
    assert type(model.dw) is nn.Conv2d and model.dw.weight.shape == (16, 1, 3, 3)
    assert is_marked_dense(model.dw.weight)
    assert type(model.expand) is not nn.Conv2d and type(model.project) is not nn.Conv2d
    assert model(torch.randn(2, *CIFAR)).shape == (2, 10)
