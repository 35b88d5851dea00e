"""Sparse-IFT members on CIFAR ResNet-18: widths, branches and ranks against hand-computed values
from the paper's formulas (section 2.3, appendix A.1), and the structure of each replacement."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ift_helpers import meta, one_thread, resnet  # noqa: F401 (fixture)
from sparse_runner.ift import build_ift_model, describe_ift
from sparse_runner.ift.doped import Doped
from sparse_runner.ift.factorized import Factorized
from sparse_runner.ift.parallel import ParallelBranches
from sparse_runner.sparsity import select_sparse
from sparse_runner.sparsity.filter import is_marked_dense

pytestmark = pytest.mark.usefixtures("one_thread")

BUILD = resnet()
# (weight-module name, f_in, f_out, kernel) of every layer the non-wide members replace: the
# 16 block convs (3x3) and the 3 shortcut convs (1x1); stem conv1 and head fc stay as they are.
LAYERS = [(f"layer1.{b}.conv{c}", 64, 64, 3) for b in (0, 1) for c in (1, 2)]
for _i, _w in ((2, 128), (3, 256), (4, 512)):
    LAYERS += [(f"layer{_i}.0.conv1", _w // 2, _w, 3), (f"layer{_i}.0.conv2", _w, _w, 3),
               (f"layer{_i}.0.downsample.0", _w // 2, _w, 1),
               (f"layer{_i}.1.conv1", _w, _w, 3), (f"layer{_i}.1.conv2", _w, _w, 3)]

# Hand-computed: d_sf = ceil(k²·fi·fo / ((k²·fi + fo)(1-s))), e.g. 64x64 3x3 at s=0.5:
# 36864 / (640 · 0.5) = 115.2 -> 116. Keys: (f_in, f_out, kernel).
FACTORIZED = {
    0.5: {(64, 64, 3): 116, (64, 128, 3): 210, (128, 128, 3): 231, (128, 256, 3): 419,
          (256, 256, 3): 461, (256, 512, 3): 838, (512, 512, 3): 922,
          (64, 128, 1): 86, (128, 256, 1): 171, (256, 512, 1): 342},
    0.75: {(64, 64, 3): 231, (64, 128, 3): 419, (128, 128, 3): 461, (128, 256, 3): 838,
           (256, 256, 3): 922, (256, 512, 3): 1676, (512, 512, 3): 1844,
           (64, 128, 1): 171, (128, 256, 1): 342, (256, 512, 1): 683},
    # 576 exactly (36864 / 64): the official float arithmetic gives 577 here.
    0.9: {(64, 64, 3): 576, (64, 128, 3): 1048, (128, 128, 3): 1152, (128, 256, 3): 2095,
          (256, 256, 3): 2304, (256, 512, 3): 4190, (512, 512, 3): 4608,
          (64, 128, 1): 427, (128, 256, 1): 854, (256, 512, 1): 1707},
}
# Hand-computed: d_sd = floor(s·k²·fi·fo / (k²·fi + fo)), e.g. 64x64 3x3 at s=0.9:
# 0.9 · 36864 / 640 = 51.84 -> 51.
DOPED = {
    0.5: {(64, 64, 3): 28, (64, 128, 3): 52, (128, 128, 3): 57, (128, 256, 3): 104,
          (256, 256, 3): 115, (256, 512, 3): 209, (512, 512, 3): 230,
          (64, 128, 1): 21, (128, 256, 1): 42, (256, 512, 1): 85},
    0.75: {(64, 64, 3): 43, (64, 128, 3): 78, (128, 128, 3): 86, (128, 256, 3): 157,
           (256, 256, 3): 172, (256, 512, 3): 314, (512, 512, 3): 345,
           (64, 128, 1): 32, (128, 256, 1): 64, (256, 512, 1): 128},
    0.9: {(64, 64, 3): 51, (64, 128, 3): 94, (128, 128, 3): 103, (128, 256, 3): 188,
          (256, 256, 3): 207, (256, 512, 3): 377, (512, 512, 3): 414,
          (64, 128, 1): 38, (128, 256, 1): 76, (256, 512, 1): 153},
}
S_VALUES = (0.5, 0.75, 0.9)


def _untouched_stem_and_head(model: nn.Module) -> None:
    assert type(model.conv1) is nn.Conv2d and model.conv1.weight.shape == (64, 3, 3, 3)
    assert type(model.fc) is nn.Linear and model.fc.weight.shape == (100, 512)


@pytest.mark.parametrize("s, w", [(0.5, 90), (0.75, 128), (0.9, 202)])
def test_wide_widths(s, w):
    # k_sw = sqrt(1/(1-s)); W = int(64 k_sw): the official 90 / 128 / 202, stages W..8W.
    model, table = meta("wide", s, BUILD)
    assert [model.conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels, model.layer4[1].conv2.out_channels] == \
        [w, 2 * w, 4 * w, 8 * w]
    assert model.layer4[0].conv1.weight.shape == (8 * w, 4 * w, 3, 3)
    assert model.fc.weight.shape == (100, 8 * w) and model.conv1.in_channels == 3
    assert len(table) == 21  # same layers, only wider
    assert describe_ift({"name": "wide"}, s, model)["k_sw"] == pytest.approx((1 / (1 - s)) ** 0.5)


@pytest.mark.parametrize("s, b", [(0.5, 2), (0.75, 4), (0.9, 10)])
def test_parallel_branches(s, b):
    model, table = meta("parallel", s, BUILD)
    _untouched_stem_and_head(model)
    for name, fi, fo, k in LAYERS:
        module = model.get_submodule(name)
        assert isinstance(module, ParallelBranches) and len(module.branches) == b
        assert all(br.weight.shape == (fo, fi, k, k) for br in module.branches)
        assert all(isinstance(n, nn.BatchNorm2d) and n.num_features == fo for n in module.norms)
    assert len(table) == 2 + b * len(LAYERS)
    assert describe_ift({"name": "parallel"}, s, model)["branches"] == b


@pytest.mark.parametrize("s", S_VALUES)
def test_factorized_ranks(s):
    model, _ = meta("factorized", s, BUILD)
    _untouched_stem_and_head(model)
    for name, fi, fo, k in LAYERS:
        module = model.get_submodule(name)
        d = FACTORIZED[s][(fi, fo, k)]
        assert isinstance(module, Factorized)
        assert module.u.weight.shape == (d, fi, k, k) and module.v.weight.shape == (fo, d, 1, 1)
        assert isinstance(module.norm, nn.BatchNorm2d) and isinstance(module.act, nn.ReLU)
    stride2 = model.layer2[0].conv1
    assert stride2.u.stride == (2, 2) and stride2.v.stride == (1, 1)


def test_factorized_linear_option_has_no_nonlinearity():
    model, _ = meta("factorized", 0.5, BUILD, nonlinearity="linear")
    block = model.layer1[0].conv1
    assert isinstance(block.norm, nn.Identity) and isinstance(block.act, nn.Identity)


@pytest.mark.parametrize("kind", ["linear", "bn", "bn_relu"])
def test_doped_nonlinearity_between_u_and_v(kind):
    """Doped computes sparse(x) + V(act(norm(U(x)))), written out here with plain functionals."""
    torch.manual_seed(0)
    model = build_ift_model({"name": "doped", "nonlinearity": kind}, 0.75,
                            resnet(classes=10, base_width=8), (3, 8, 8))
    block = model.layer1[0].conv1
    assert isinstance(block.norm, nn.Identity if kind == "linear" else nn.BatchNorm2d)
    assert isinstance(block.act, nn.ReLU if kind == "bn_relu" else nn.Identity)
    block.train()
    x = torch.randn(4, 8, 6, 6)
    h = F.conv2d(x, block.u.weight, stride=block.u.stride, padding=block.u.padding)
    if kind != "linear":
        h = F.batch_norm(h, None, None, block.norm.weight, block.norm.bias, training=True)
    if kind == "bn_relu":
        h = h.relu()
    want = F.conv2d(x, block.sparse.weight, padding=1) + F.conv2d(h, block.v.weight)
    torch.testing.assert_close(block(x), want)


@pytest.mark.parametrize("s", S_VALUES)
def test_doped_ranks_and_dense_low_rank(s):
    model, table = meta("doped", s, BUILD)
    _untouched_stem_and_head(model)
    sparse = set(select_sparse(model, table, ["stem", "head"]))
    for name, fi, fo, k in LAYERS:
        module = model.get_submodule(name)
        d = DOPED[s][(fi, fo, k)]
        assert isinstance(module, Doped)
        assert module.sparse.weight.shape == (fo, fi, k, k)
        assert module.u.weight.shape == (d, fi, k, k) and module.v.weight.shape == (fo, d, 1, 1)
        assert is_marked_dense(module.u.weight) and is_marked_dense(module.v.weight)
        assert f"{name}.sparse.weight" in sparse
        assert f"{name}.u.weight" not in sparse and f"{name}.v.weight" not in sparse


def test_exclude_reproduces_the_official_layer_choice():
    model, _ = meta("parallel", 0.75, BUILD, exclude=["*downsample*"])
    assert type(model.layer2[0].downsample[0]) is nn.Conv2d
    assert isinstance(model.layer2[0].conv1, ParallelBranches)


def test_members_run_forward_and_backward():
    build = resnet(classes=10, base_width=8)
    x = torch.randn(2, 3, 16, 16)
    for ift in ("wide", "parallel", "factorized", "doped"):
        model = build_ift_model({"name": ift}, 0.75, build, (3, 16, 16))
        out = model(x)
        assert out.shape == (2, 10)
        out.sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_parallel_sum_norm_drop_is_the_official_forward():
    # official: ReLU(sum_j BN_j(conv_j x)), no BN after the sum; plain blocks keep theirs
    model, _ = meta("parallel", 0.75, BUILD, sum_norm="drop", exclude=["*downsample*"])
    block = model.layer2[0]
    assert isinstance(block.conv1, ParallelBranches) and isinstance(block.bn1, nn.Identity)
    assert isinstance(block.bn2, nn.Identity)
    assert isinstance(block.downsample[1], nn.BatchNorm2d)  # the plain shortcut keeps its BN
    assert isinstance(model.bn1, nn.BatchNorm2d)            # the stem is not transformed
    kept, _ = meta("parallel", 0.75, BUILD)
    assert isinstance(kept.layer2[0].bn2, nn.BatchNorm2d)
    x = torch.randn(2, 3, 32, 32)
    small = build_ift_model({"name": "parallel", "sum_norm": "drop"}, 0.5,
                            resnet(classes=10, base_width=8), (3, 32, 32))
    assert small(x).shape == (2, 10)


def test_doped_official_low_rank_is_sparse():
    model, table = meta("doped", 0.5, BUILD, low_rank="sparse")
    sparse = set(select_sparse(model, table, ["stem", "head"]))
    assert "layer1.0.conv1.u.weight" in sparse and "layer1.0.conv1.v.weight" in sparse
    assert describe_ift({"name": "doped", "low_rank": "sparse"}, 0.5, model)["low_rank"] == "sparse"
