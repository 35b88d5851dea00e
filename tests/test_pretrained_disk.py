"""``model.pretrained=true`` loads weights only from disk: timm's Hugging Face hub cache (the
layout huggingface_hub writes: blobs + snapshots/<rev> links + refs/main) or torch hub's
``checkpoints`` folder, for timm and torchvision. Checkpoints are generated here in those real
layouts; the loaded parameters must equal the file's, the classifier is re-initialised for
another class count, and a first conv for other input channels is adapted as timm does.
Nothing is downloaded (HF_HUB_OFFLINE=1); weights that are not on disk are one line, exit 2."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from conftest import cli
from sparse_runner.models import build_model

REV = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f9012345"


def hub_cache(home: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` as huggingface_hub caches ``repo_id``'s model.safetensors under $HF_HOME."""
    from safetensors.torch import save_file

    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    tmp = repo / "blobs" / "incoming"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    blob = repo / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.rename(blob)
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return snap / "model.safetensors"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty HF_HOME and TORCH_HOME under tmp_path, offline, for this process too."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    return tmp_path


def timm_state(arch: str) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(7)
    return timm.create_model(arch, num_classes=1000).state_dict()


def same_except(model: torch.nn.Module, state: dict, skip: tuple[str, ...]) -> None:
    mine = model.state_dict()
    assert set(mine) == set(state)
    for k, v in state.items():
        if not k.startswith(skip):
            torch.testing.assert_close(mine[k], v, rtol=0, atol=0, msg=k)


def test_timm_loads_from_the_hub_cache(offline):
    state = timm_state("resnet10t")
    hub_cache(offline / "hf", "timm/resnet10t.c3_in1k", state)
    model = build_model({"name": "timm", "arch": "resnet10t", "pretrained": True},
                        in_channels=3, num_classes=10, image_size=32)
    same_except(model, state, ("fc.",))
    assert model.fc.weight.shape == (10, 512)  # a fresh head for 10 classes
    assert not torch.equal(model.fc.weight, state["fc.weight"][:10])
    full = build_model({"name": "timm", "arch": "resnet10t", "pretrained": True},
                       in_channels=3, num_classes=1000, image_size=32)
    same_except(full, state, ())
    gray = build_model({"name": "timm", "arch": "resnet10t", "pretrained": True},
                       in_channels=1, num_classes=1000, image_size=32)
    same_except(gray, state, ("conv1.0.",))  # timm sums the RGB filters for one channel
    torch.testing.assert_close(gray.conv1[0].weight, state["conv1.0.weight"].sum(1, keepdim=True))


def test_timm_loads_from_the_torch_hub_checkpoints(offline):
    state = timm_state("mobilenetv2_050")
    folder = offline / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "mobilenetv2_050-3d30d450.pth")
    model = build_model({"name": "timm", "arch": "mobilenetv2_050", "pretrained": True},
                        in_channels=3, num_classes=10, image_size=32)
    same_except(model, state, ("classifier.",))


def test_torchvision_loads_from_the_torch_hub_checkpoints(offline):
    from torchvision import models

    torch.manual_seed(3)
    state = models.resnet18(num_classes=1000).state_dict()
    folder = offline / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "resnet18-f37072fd.pth")
    cfg = {"name": "torchvision", "arch": "resnet18", "pretrained": True}
    model = build_model(cfg, in_channels=3, num_classes=10, image_size=32)
    same_except(model, state, ("fc.",))
    assert model.fc.weight.shape == (10, 512)
    gray = build_model(cfg, in_channels=1, num_classes=1000, image_size=32)
    same_except(gray, state, ("conv1.",))
    torch.testing.assert_close(gray.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


@pytest.mark.parametrize("family", ["timm", "torchvision"])
def test_weights_not_on_disk_are_one_line_exit_2(tmp_path, family):
    arch = "resnet10t" if family == "timm" else "resnet18"
    env = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HUB_OFFLINE": "1"}
    args = (f"model={family}", f"model.arch={arch}", "model.pretrained=true", "dataset=digits",
            "run.dry_run=true", "run.device=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    bad = cli(*args, env=env)
    assert bad.returncode == 2, bad.stderr
    line = bad.stderr.strip()
    assert "\n" not in line and f"no weights for {arch} are on disk" in line
    assert "Traceback" not in bad.stderr


def test_cli_dry_run_reads_the_hub_cache(tmp_path):
    hub_cache(tmp_path / "hf", "timm/resnet10t.c3_in1k", timm_state("resnet10t"))
    env = {"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HUB_OFFLINE": "1"}
    ok = cli("model=timm", "model.arch=resnet10t", "model.pretrained=true", "dataset=digits",
             "run.dry_run=true", "run.device=cpu", f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
