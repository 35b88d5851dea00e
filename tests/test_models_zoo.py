"""model=timm / torchvision / custom: parameter counts equal the originals, and every bad
input (unknown name, bad custom target, wrong input kind or size, pretrained offline) is one line."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_runner.utils.errors import UserError
from sparse_runner.models import build_model, count_params
from sparse_runner.models.resnet import BOTTLENECKS, DEPTHS, torchvision_resnet
from zoo_models import PRESETS, image_builder

TIMM_NAMES = ["mobilenetv2_100", "mobilevit_s", "botnet26t_256", "botnet50ts_256", "resnet50",
              "vit_tiny_patch16_224"]


@pytest.mark.parametrize("arch", TIMM_NAMES)
def test_timm_param_counts_equal_timm(arch):
    import timm

    size = 256 if "botnet" in arch else 224
    with torch.device("meta"):
        ours = build_model({"name": "timm", "arch": arch}, in_channels=3, num_classes=100,
                           image_size=size)
        theirs = timm.create_model(arch, num_classes=100)
    assert count_params(ours) == count_params(theirs)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mobilenet_v2", "vit_b_16"])
def test_torchvision_param_counts_equal_torchvision(arch):
    from torchvision import models

    with torch.device("meta"):
        ours = build_model({"name": "torchvision", "arch": arch}, in_channels=3, num_classes=10,
                           image_size=224)
        theirs = models.get_model(arch, weights=None, num_classes=10)
    assert count_params(ours) == count_params(theirs)


def _layout(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in [*model.named_parameters(), *model.named_buffers()]]


@pytest.mark.parametrize("arch", [*DEPTHS, *BOTTLENECKS])
def test_every_torchvision_resnet_has_a_width_knob_in_torchvision_layout(arch):
    """Our builder at W=64 is torchvision's model (names and shapes); widened, every block's
    channels grow by the factor and the names stay (check_widened relies on that)."""
    from torchvision import models

    with torch.device("meta"):
        ref = models.get_model(arch, weights=None, num_classes=10)
        ours = torchvision_resnet(arch, 10, 3, 64)
        dense = build_model({"name": "torchvision", "arch": arch}, in_channels=3,
                            num_classes=10, image_size=224)
        wide = build_model({"name": "torchvision", "arch": arch}, in_channels=3,
                           num_classes=10, image_size=224, width_mult=2.0)
    assert _layout(ours) == _layout(ref) and count_params(dense) == count_params(ref)
    assert [n for n, _ in wide.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert wide.conv1.out_channels == 128 and wide.fc.in_features == 2 * ref.fc.in_features
    theirs = dict(ref.named_modules())
    for name, mod in wide.named_modules():
        if isinstance(mod, torch.nn.Conv2d):  # ResNeXt: same groups, each group twice as wide
            like = theirs[name]
            assert (mod.groups, mod.out_channels) == (like.groups, 2 * like.out_channels), name


@pytest.mark.parametrize("arch", ["resnet50", "resnext50_32x4d"])
def test_bottleneck_resnet_computes_what_torchvision_computes(arch):
    from torchvision import models

    torch.manual_seed(0)
    ref = models.get_model(arch, weights=None, num_classes=10).eval()
    ours = torchvision_resnet(arch, 10, 3, 64).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_channels_and_classes_come_from_the_dataset():
    m = build_model({"name": "timm", "arch": "mobilenetv2_100"}, in_channels=1, num_classes=7,
                    image_size=8)
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    t = build_model({"name": "torchvision", "arch": "resnet18"}, in_channels=1, num_classes=7,
                    image_size=8)
    assert t(torch.randn(2, 1, 8, 8)).shape == (2, 7)


def test_fixed_size_timm_models_take_the_dataset_size():
    m = build_model({"name": "timm", "arch": "vit_tiny_patch16_224"}, in_channels=3,
                    num_classes=10, image_size=32)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def _err(cfg, **kw) -> str:
    spec = dict(in_channels=3, num_classes=10, image_size=32) | kw
    with pytest.raises(UserError) as info:
        build_model(cfg, **spec)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_unknown_timm_name_suggests_close_names():
    msg = _err({"name": "timm", "arch": "mobilenetv2_10"})
    assert "timm has no model 'mobilenetv2_10'" in msg and "mobilenetv2_100" in msg


def test_unknown_torchvision_name_suggests_close_names():
    assert "resnet18" in _err({"name": "torchvision", "arch": "resnet181"})


def test_botnet_preset_needs_256_inputs():
    msg = _err(PRESETS["botnet50"][0])
    assert "takes 256x256 inputs but the dataset gives 32x32" in msg


def test_pretrained_never_downloads():
    msg = _err({"name": "timm", "arch": "mobilevit_xxs", "pretrained": True})
    assert "no weights for mobilevit_xxs are on disk" in msg
    assert "does not exist" in _err({"name": "timm", "arch": "mobilevit_xxs", "pretrained": True,
                                     "weights": "/nonexistent.pth"})


def test_pretrained_loads_a_checkpoint_from_disk(tmp_path):
    import timm

    src = timm.create_model("mobilevit_xxs", num_classes=10)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    m = build_model({"name": "timm", "arch": "mobilevit_xxs", "pretrained": True,
                     "weights": str(path)}, in_channels=3, num_classes=10, image_size=32)
    assert torch.equal(m.stem.conv.weight, src.stem.conv.weight)


class Net(nn.Module):
    def __init__(self, num_classes: int, in_chans: int, hidden: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, hidden, 3)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def make_net(**kw):
    return Net(**kw)


def not_a_module(num_classes: int):
    return "nope"


def test_custom_target_gets_the_dataset_facts():
    m = build_model({"name": "custom", "target": f"{__name__}.Net", "kwargs": {"hidden": 4}},
                    in_channels=1, num_classes=5, image_size=8)
    assert m.conv.in_channels == 1 and m.fc.out_features == 5 and m.conv.out_channels == 4
    f = build_model({"name": "custom", "target": f"{__name__}:make_net"}, in_channels=2,
                    num_classes=3, image_size=8)
    assert f.conv.in_channels == 2


def test_custom_width_knob():
    cfg = {"name": "custom", "target": f"{__name__}.Net", "kwargs": {"hidden": 8},
           "width_arg": "hidden"}
    assert image_builder(cfg, classes=5)(2.0).conv.out_channels == 16
    assert "has none" in _err({"name": "custom", "target": f"{__name__}.Net"}, width_mult=2.0)


@pytest.mark.parametrize("target, words", [
    ("no_such_pkg.Net", "cannot import 'no_such_pkg'"),
    (f"{__name__}.Missing", "has no attribute 'Missing'"),
    (f"{__name__}.not_a_module", "returned a str, not a torch.nn.Module"),
    (None, "needs model.target"),
])
def test_custom_target_errors(target, words):
    assert words in _err({"name": "custom", "target": target})


def test_image_model_on_text_and_the_reverse():
    msg = _err({"name": "resnet18"}, kind="text", seq_len=64, dataset="shakespeare")
    assert "model=resnet18 takes image input but dataset=shakespeare gives text" in msg
    msg = _err({"name": "gpt"}, dataset="digits")
    assert "model=gpt takes text input but dataset=digits gives image" in msg


def test_no_width_knob_names_the_supported_families():
    msg = _err({"name": "timm", "arch": "resnet50"}, width_mult=1.5)
    assert "ift=wide needs a width knob" in msg and "timm mobilenetv2_*" in msg and "gpt" in msg
