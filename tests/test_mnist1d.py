"""MNIST-1D and its two reference models: the generator is offline and deterministic, the cache
is keyed by the arguments, the models are Greydanus's (parameter counts of ``notebooks/models.py``),
Conv1d FLOPs equal FlopCounterMode, and every Sparse-IFT member is Iso-FLOP on both families."""
from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from conftest import compose
from sparse_runner.data.mnist1d import build_mnist1d, cache_path, generate, generator_args
from sparse_runner.utils.errors import UserError
from sparse_runner.flops.tables import trace_layers
from sparse_runner.ift import build_ift_model
from sparse_runner.models import build_model

SMALL = {"num_samples": 200}   # 160 / 40: the generator's speed is linear in the samples
SIGNAL = dict(in_channels=1, num_classes=10, image_size=0, seq_len=40, kind="signal")


@pytest.fixture
def offline(monkeypatch):
    """Any network access or the package's downloading path fails the test."""
    import mnist1d.data

    def refuse(*_a, **_k):
        raise AssertionError("network access")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)


def test_generator_is_deterministic_offline_and_leaves_global_rngs(offline):
    random.seed(7)
    np.random.seed(7)
    before = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    a, b = generate(generator_args(SMALL)), generate(generator_args(SMALL))
    assert (random.random(), np.random.rand()) == before   # the run's own seeding is untouched
    for key in ("x", "y", "x_test", "y_test"):
        assert np.array_equal(a[key], b[key])
    assert a["x"].shape == (160, 40) and a["x_test"].shape == (40, 40)
    c = generate(generator_args({**SMALL, "seed": 43}))
    assert not np.array_equal(a["x"], c["x"])


def test_standard_split_is_cached_and_reloaded_identically(tmp_path, offline, monkeypatch):
    cfg = {"name": "mnist1d", "root": str(tmp_path)}
    data = build_mnist1d(cfg, batch_size=100, eval_batch_size=500, seed=0,
                         device=torch.device("cpu"))
    assert (data.num_train, data.num_test) == (4000, 1000)
    assert data.spec.input_shape == (1, 40) and data.spec.kind == "signal"
    path = cache_path(tmp_path, generator_args(cfg))
    assert path.is_file() and len(list(path.parent.iterdir())) == 1   # no temp file left
    x, y = next(data.train.batches(0))
    assert x.shape == (100, 1, 40) and y.shape == (100,)
    assert abs(float(data.train.images.mean())) < 0.1   # the generator's normalisation, kept

    import sparse_runner.data.mnist1d as mod
    monkeypatch.setattr(mod, "generate", lambda args: pytest.fail("regenerated a cached set"))
    again = build_mnist1d(cfg, batch_size=100, eval_batch_size=500, seed=0,
                          device=torch.device("cpu"))
    assert torch.equal(again.train.images, data.train.images)
    assert torch.equal(again.test.labels, data.test.labels)
    # a different argument is a different cache entry
    assert cache_path(tmp_path, generator_args({**cfg, "seed": 1})) != path


def test_unknown_generator_option_is_one_line():
    with pytest.raises(UserError, match="no option 'noise'.*iid_noise_scale"):
        generator_args({"noise": 0.1})


def test_reference_models_match_greydanus():
    """notebooks/models.py: MLPBase(40, 10) has 15,210 parameters, ConvBase 5,210."""
    mlp = build_model({"name": "mlp"}, **SIGNAL)
    cnn = build_model({"name": "cnn1d"}, **SIGNAL)
    assert sum(p.numel() for p in mlp.parameters()) == 15_210
    assert sum(p.numel() for p in cnn.parameters()) == 5_210
    assert [tuple(c.weight.shape) for c in cnn.convs] == [(25, 1, 5), (25, 25, 3), (25, 25, 3)]
    assert cnn.head.in_features == 125
    x = torch.randn(3, 1, 40)
    h = torch.relu(mlp.layers[0](x.flatten(1)))   # the reference's residual second layer
    ref = mlp.head(h + torch.relu(mlp.layers[1](h)))
    assert torch.allclose(mlp(x), ref)


def test_mlp_takes_images_and_cnn1d_refuses_them():
    mlp = build_model({"name": "mlp"}, in_channels=1, num_classes=10, image_size=8)
    assert mlp(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(UserError, match="takes signal input.*model=resnet18"):
        build_model({"name": "cnn1d"}, in_channels=1, num_classes=10, image_size=8,
                    dataset="digits")


def _by_hand(model: nn.Module, length: int = 40) -> int:
    """Forward FLOPs per sample from the layer shapes alone: 2 * out positions * C_out * C_in * k
    per Conv1d, 2 * out * in per Linear (modules in registration order = execution order)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv1d):
            length = (length + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
            total += 2 * length * m.weight.numel()
        elif isinstance(m, nn.Linear):
            total += 2 * m.weight.numel()
    return total


@pytest.mark.parametrize("ift", ["none", "wide", "parallel", "factorized", "doped"])
@pytest.mark.parametrize("model", ["mlp", "cnn1d"])
def test_conv1d_flops_equal_flop_counter_mode(model, ift):
    def build(w: float) -> nn.Module:
        return build_model({"name": model}, width_mult=w, **SIGNAL)

    for s in (0.5, 0.9) if ift != "none" else (0.0,):
        net = build_ift_model({"name": ift}, s, build, (1, 40))
        table = trace_layers(net, (1, 40))
        counter = FlopCounterMode(display=False)
        net.eval()
        with counter, torch.no_grad():
            net(torch.randn(1, 1, 40))
        assert table.dense_fwd() == counter.get_total_flops()
        if ift in ("none", "wide"):
            assert table.dense_fwd() == _by_hand(net)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One MNIST-1D cache for the module (the generator takes a few CPU seconds)."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("ift", ["wide", "parallel", "factorized", "doped"])
@pytest.mark.parametrize("model", ["mlp", "cnn1d"])
def test_every_member_is_iso_flop_on_both_families(tmp_path, data_root, model, ift):
    from sparse_runner.run import run

    dense = ["sparse.dense=[head]"] if model == "mlp" else []
    for s in (0.5, 0.75, 0.9):
        cfg = compose(["dataset=mnist1d", f"dataset.root={data_root}", f"model={model}",
                       f"ift={ift}", f"s={s}", "method=static", "run.dry_run=true",
                       "run.device=cpu", *dense])
        summary = run(cfg, tmp_path / f"{model}-{ift}-{s}")
        fl, iso = summary["flops"], summary["isoflop"]
        assert iso["rel_error"] <= 1e-6, (s, iso)
        assert abs(fl["sparse_fwd"] - fl["dense_baseline_fwd"]) <= 1e-6 * fl["dense_baseline_fwd"]
