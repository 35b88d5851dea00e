"""ImageNet as an ImageFolder tree, from generated JPEG trees."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_data import build, check_resume_and_order, dataset_config, run_epoch, user_error

from sparse_runner.data import DATASETS, write_fake_imagenet
from sparse_runner.data.imagenet import MEAN, STD


def imagenet(root: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "imagenet", "root": str(root), "download": False, "image_size": 24, **extra}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """3 classes x (4 train + 2 val) JPEGs of 40x30 / 30x40 pixels."""
    return write_fake_imagenet(tmp_path / "imagenet", classes=3, per_class=4, val_per_class=2,
                               size=40)


def test_spec_shapes_and_labels(tree: Path) -> None:
    cfg = dataset_config("imagenet", root=str(tree), image_size=24)
    data = build(cfg, batch_size=4, eval_batch_size=4)
    assert (data.spec.name, data.spec.in_channels, data.spec.num_classes,
            data.spec.image_size) == ("imagenet", 3, 3, 24)
    assert (data.num_train, data.num_test, len(data.train), len(data.test)) == (12, 6, 3, 2)
    x, y = run_epoch(data.train, 0)
    assert x.shape == (12, 3, 24, 24) and x.dtype == torch.float32
    assert sorted(y.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    _, y_val = run_epoch(data.test, 0)
    assert y_val.tolist() == [0, 0, 1, 1, 2, 2]  # val keeps ImageFolder order
    assert DATASETS.get("imagenet").uses_workers


def test_val_labels_follow_train_classes_when_val_lacks_one(tree: Path) -> None:
    shutil.rmtree(tree / "val" / "n00000000")
    _, y_val = run_epoch(build(imagenet(tree)).test, 0)
    assert y_val.tolist() == [1, 1, 2, 2]  # not renumbered to 0, 0, 1, 1


def test_val_is_normalised_uint8_pixels(tree: Path) -> None:
    x, _ = run_epoch(build(imagenet(tree)).test, 0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (MEAN, STD))
    pixels = x * std + mean
    torch.testing.assert_close(pixels, pixels.round(), rtol=0, atol=1e-3)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3


def test_augmentation_is_seeded_and_resumable(tree: Path) -> None:
    check_resume_and_order(build(imagenet(tree), batch_size=4).train)


def test_workers_give_the_same_batches_as_the_main_process(tree: Path) -> None:
    inline = run_epoch(build(imagenet(tree), batch_size=4).train, 2)
    loader = build(imagenet(tree), batch_size=4, num_workers=2).train
    next(loader.batches(0))  # an abandoned pass must not leak into the next one
    rng_state = torch.get_rng_state()
    workers = run_epoch(loader, 2)
    assert torch.equal(inline[0], workers[0]) and torch.equal(inline[1], workers[1])
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_subsets(tree: Path) -> None:
    data = build(imagenet(tree, train_subset=5, test_subset=3), batch_size=2)
    assert (data.num_train, data.num_test, len(data.train)) == (5, 3, 2)


def test_missing_root_says_where_and_how_to_fix(tmp_path: Path) -> None:
    user_error(imagenet(tmp_path / "nowhere"), str(tmp_path / "nowhere" / "train"),
               "dataset.root", "dataset=digits")


def test_missing_val_dir(tree: Path) -> None:
    shutil.rmtree(tree / "val")
    user_error(imagenet(tree), str(tree / "val"))


def test_empty_class_folder(tree: Path) -> None:
    (tree / "train" / "n99999999").mkdir()
    user_error(imagenet(tree), str(tree / "train"), "n99999999", "at least one image")


def test_unknown_val_class(tree: Path) -> None:
    shutil.copytree(tree / "val" / "n00000001", tree / "val" / "n12345678")
    user_error(imagenet(tree), "n12345678", "train's class names")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_unreadable_image_is_a_one_line_error(tree: Path, num_workers: int) -> None:
    bad = tree / "train" / "n00000001" / "n00000001_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    user_error(imagenet(tree), "cannot read image", str(bad), "remove or replace",
               batch_size=4, num_workers=num_workers)


def test_download_explains_how_to_obtain_imagenet(tree: Path) -> None:
    user_error(imagenet(tree, download=True), "cannot be downloaded automatically",
               "image-net.org", "<root>/train/<wnid>/")
