"""Layer-wise distributions: the ERK reference table (google-research/rigl) and exact budgets."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_runner.utils.errors import UserError
from sparse_runner.models import build_model
from sparse_runner.sparsity.distributions import layer_density, layer_nnz


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.ndim in (2, 4)}


@pytest.fixture(scope="module")
def resnet50() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _shapes(torchvision.models.resnet50())


@pytest.fixture(scope="module")
def resnet18_tv() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _shapes(torchvision.models.resnet18())


@pytest.fixture(scope="module")
def resnet18_cifar() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _shapes(build_model({"name": "resnet18"}, in_channels=3, num_classes=10, image_size=32))


def _check(shapes, s, expected):
    d = layer_density("erk", shapes, s)
    for pattern, want in expected.items():
        hits = [n for n in d if n == pattern or (pattern.endswith("*") and n.startswith(pattern[:-1]))]
        assert hits, pattern
        for n in hits:
            assert d[n] == pytest.approx(want, abs=1e-4), (n, d[n], want)
    return d


def test_weight_counts_match_the_reference(resnet50, resnet18_tv, resnet18_cifar):
    for shapes, tensors, weights in ((resnet50, 54, 25_502_912), (resnet18_tv, 21, 11_678_912),
                                     (resnet18_cifar, 21, 11_164_352)):
        assert len(shapes) == tensors
        assert sum(math.prod(s) for s in shapes.values()) == weights


def test_erk_resnet50_s09(resnet50):
    d = _check(resnet50, 0.9, {
        "conv1.weight": 0.4200, "fc.weight": 0.0726,
        "layer1.0.conv2.weight": 0.1773, "layer1.1.conv2.weight": 0.1773,
        "layer1.0.conv3.weight": 0.9588, "layer1.0.downsample.0.weight": 0.9588,
        "layer1.1.conv1.weight": 0.9588, "layer2.0.conv2.weight": 0.0867,
        "layer3.0.conv2.weight": 0.0428, "layer4.0.conv2.weight": 0.0213,
        "layer4.0.downsample.0.weight": 0.0715,
    })
    assert d["layer1.0.conv1.weight"] == 1.0  # 64x64 1x1: the only overflow layer


def test_erk_resnet50_s08(resnet50):
    d = _check(resnet50, 0.8, {"conv1.weight": 0.8572, "fc.weight": 0.1482,
                               "layer2.0.conv2.weight": 0.1769, "layer4.0.conv2.weight": 0.0435})
    dense = {n for n, v in d.items() if v == 1.0}
    assert {n for n in dense if n.startswith("layer1")} == {
        n for n, s in resnet50.items() if n.startswith("layer1") and s[2:] == (1, 1)}


def test_erk_resnet18_torchvision_s09(resnet18_tv):
    _check(resnet18_tv, 0.9, {
        "conv1.weight": 1.0, "layer1.0.conv1.weight": 0.4227, "layer4.1.conv2.weight": 0.0508,
        "layer2.0.downsample.0.weight": 1.0, "layer3.0.downsample.0.weight": 1.0,
        "layer4.0.downsample.0.weight": 0.6832, "fc.weight": 0.3434,
    })


def test_erk_resnet18_cifar_s09(resnet18_cifar):
    _check(resnet18_cifar, 0.9, {
        "conv1.weight": 1.0, "layer1.*": 0.4797, "layer2.0.conv1.weight": 0.3544,
        "layer4.0.conv2.weight": 0.0576, "layer4.1.*": 0.0576,
        "layer4.0.downsample.0.weight": 0.7752, "fc.weight": 1.0,
    })


@pytest.mark.parametrize("s", [0.8, 0.9])
def test_erk_resnet18_cifar_invariants(resnet18_cifar, s):
    """The google-research checks: eps = density / p_l is one number for every non-dense layer,
    and the budget is met exactly (the table has no s=0.8 row for this net)."""
    d = layer_density("erk", resnet18_cifar, s)
    eps = {n: d[n] / (sum(sh) / math.prod(sh)) for n, sh in resnet18_cifar.items() if d[n] < 1}
    assert max(eps.values()) == pytest.approx(min(eps.values()), rel=1e-3)
    nnz = layer_nnz("erk", resnet18_cifar, s)
    total = sum(math.prod(sh) for sh in resnet18_cifar.values())
    assert sum(nnz.values()) == total - math.floor(s * total)


shape_st = st.one_of(
    st.tuples(st.integers(1, 24), st.integers(1, 24)),
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 3]), st.sampled_from([1, 3])),
)


@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(shape_st, min_size=1, max_size=6), s=st.floats(0.0, 0.99),
       dist=st.sampled_from(["uniform", "er", "erk"]), power=st.sampled_from([0.5, 1.0]))
def test_budget_is_exact(shapes, s, dist, power):
    named = {f"l{i}": sh for i, sh in enumerate(shapes)}
    total = sum(math.prod(sh) for sh in shapes)
    nnz = layer_nnz(dist, named, s, power_scale=power)
    assert sum(nnz.values()) == total - math.floor(s * total)
    assert all(0 <= nnz[n] <= math.prod(named[n]) for n in named)


def test_uniform_is_uniform_and_power_zero_is_uniform(resnet18_cifar):
    u = layer_density("uniform", resnet18_cifar, 0.9)
    assert all(abs(v - 0.1) <= 1 / math.prod(resnet18_cifar[n]) for n, v in u.items())
    assert layer_nnz("erk", resnet18_cifar, 0.9, power_scale=0.0) == layer_nnz("uniform", resnet18_cifar, 0.9)


def test_respread_and_overrides(resnet18_cifar):
    shapes = {n: s for n, s in resnet18_cifar.items() if n not in ("conv1.weight", "fc.weight")}
    dense = math.prod(resnet18_cifar["conv1.weight"]) + math.prod(resnet18_cifar["fc.weight"])
    nnz = layer_nnz("uniform", shapes, 0.9, extra_dense=dense)
    total = sum(math.prod(s) for s in resnet18_cifar.values())
    assert sum(nnz.values()) + dense == total - math.floor(0.9 * total)
    over = layer_nnz("erk", shapes, 0.9, overrides={"layer4.1.*": 0.05})
    assert over["layer4.1.conv1.weight"] == round(0.05 * math.prod(shapes["layer4.1.conv1.weight"]))
    assert sum(over.values()) == sum(layer_nnz("erk", shapes, 0.9).values())


@pytest.mark.parametrize("kwargs,match", [
    ({"distribution": "lognormal", "s": 0.5}, "unknown distribution"),
    ({"distribution": "erk", "s": 1.0}, "outside"),
    ({"distribution": "erk", "s": -0.1}, "outside"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(UserError, match=match):
        layer_nnz(kwargs["distribution"], {"a": (4, 4)}, kwargs["s"])
