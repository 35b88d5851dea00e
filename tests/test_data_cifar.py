"""CIFAR-10/100 loading from generated files in torchvision's exact on-disk format."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import pickle
import tarfile
import urllib.error
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fixtures_data import build, check_resume_and_order, dataset_config, run_epoch, user_error

from sparse_runner.data import write_fake_cifar
from sparse_runner.data.cifar import LAYOUTS

MD5_WARNING = "differ from the official release"


def cifar(root: Path, kind: str = "cifar100", **extra: Any) -> dict[str, Any]:
    return {"name": kind, "root": str(root), "download": False, **extra}


def load_entries(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


@pytest.fixture
def c100(tmp_path: Path) -> Path:
    """A generated CIFAR-100 set (64 train / 32 test); returns its cifar-100-python folder."""
    return write_fake_cifar(tmp_path, "cifar100", n_train=64, n_test=32, seed=1)


def test_fake_files_have_the_official_pickle_format(c100: Path) -> None:
    raw = (c100 / "train").read_bytes()
    as_bytes = pickle.loads(raw, encoding="bytes")  # the CIFAR website's reader
    assert set(as_bytes) == {b"data", b"fine_labels", b"coarse_labels", b"filenames",
                             b"batch_label"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (64, 3072)
    assert b"numpy.core.multiarray" in raw  # as in the numpy-1 era files, readable by both
    meta = pickle.loads((c100 / "meta").read_bytes(), encoding="latin1")
    assert len(meta["fine_label_names"]) == 100 and len(meta["coarse_label_names"]) == 20


def test_torchvision_reads_the_fake_files(c100: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    ours = load_entries(c100 / "test")
    theirs = torchvision.datasets.CIFAR100(str(c100.parent), train=False)
    assert theirs.targets == ours["fine_labels"] and theirs.data.shape == (32, 32, 32, 3)


def test_cifar100_spec_shapes_and_labels(c100: Path) -> None:
    data = build(dataset_config("cifar100", root=str(c100.parent)))
    assert (data.spec.name, data.spec.in_channels, data.spec.num_classes,
            data.spec.image_size) == ("cifar100", 3, 100, 32)
    assert (data.num_train, data.num_test, len(data.train), len(data.test)) == (64, 32, 4, 1)
    x, y = next(data.train.batches(0))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    _, y_test = run_epoch(data.test, 0)
    assert y_test.tolist() == load_entries(c100 / "test")["fine_labels"]  # test keeps file order


def test_cifar10_reads_all_five_batches_with_root_at_the_inner_folder(tmp_path: Path) -> None:
    folder = write_fake_cifar(tmp_path, "cifar10", n_train=50, n_test=20)
    data = build(dataset_config("cifar10", root=str(folder)), batch_size=10)
    assert (data.spec.num_classes, data.num_train, data.num_test) == (10, 50, 20)
    _, y = run_epoch(data.train, 0)
    expected = sum((load_entries(folder / f"data_batch_{i}")["labels"] for i in range(1, 6)), [])
    assert sorted(y.tolist()) == sorted(expected) and 0 <= min(expected) <= max(expected) < 10


def test_normalisation_uses_the_official_statistics(c100: Path) -> None:
    x, _ = run_epoch(build(cifar(c100.parent)).test, 0)
    layout = LAYOUTS["cifar100"]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (layout.mean, layout.std))
    raw = torch.from_numpy(load_entries(c100 / "test")["data"]).view(-1, 3, 32, 32) / 255
    torch.testing.assert_close(x * std + mean, raw, rtol=0, atol=1e-6)


def test_augmentation_is_seeded_per_epoch_and_batch(c100: Path) -> None:
    data = build(cifar(c100.parent))
    check_resume_and_order(data.train)
    again = build(cifar(c100.parent))  # a fresh build (a resumed run) gives the same batches
    assert torch.equal(run_epoch(data.train, 3)[0], run_epoch(again.train, 3)[0])
    plain = build(cifar(c100.parent, augment=False))
    x_aug, y_aug = next(data.train.batches(0))
    x_plain, y_plain = next(plain.train.batches(0))
    assert torch.equal(y_aug, y_plain) and not torch.equal(x_aug, x_plain)


def test_checksum_mismatch_warns_exactly_once(c100: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sparse_runner.data.cifar"):
        data = build(cifar(c100.parent))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and MD5_WARNING in warnings[0].getMessage()
    assert any(MD5_WARNING in note for note in data.notes)


def test_official_checksums_load_silently(c100: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    md5 = {n: hashlib.md5((c100 / n).read_bytes()).hexdigest() for n in ("train", "test")}
    monkeypatch.setitem(LAYOUTS, "cifar100", dataclasses.replace(LAYOUTS["cifar100"], md5=md5))
    with caplog.at_level(logging.WARNING, logger="sparse_runner.data.cifar"):
        data = build(cifar(c100.parent))
    assert not caplog.records and not data.notes


@pytest.mark.parametrize("keys", ["str", "bytes"])
def test_python3_pickles_with_str_or_bytes_keys_load(c100: Path, keys: str) -> None:
    entries = load_entries(c100 / "train")
    if keys == "bytes":
        entries = {k.encode(): v for k, v in entries.items()}
    (c100 / "train").write_bytes(pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL))
    assert build(cifar(c100.parent)).num_train == 64


def test_subsets_are_fixed_across_run_seeds(c100: Path) -> None:
    cfg = cifar(c100.parent, train_subset=20, test_subset=8)
    a, b = build(cfg, batch_size=4, seed=0), build(cfg, batch_size=4, seed=5)
    assert (a.num_train, a.num_test) == (20, 8)
    assert sorted(a.train.labels.tolist()) == sorted(b.train.labels.tolist())
    user_error(cifar(c100.parent, train_subset=65), "dataset.train_subset=65", "64")
    user_error(cifar(c100.parent, test_subset=0), "dataset.test_subset=0")


def test_missing_directory_says_where_and_how_to_fix(tmp_path: Path) -> None:
    user_error(cifar(tmp_path / "nowhere"), str(tmp_path / "nowhere" / "cifar-100-python"),
               "dataset.download=true", "dataset=digits")


def _corrupt(folder: Path, change: str) -> None:
    path = folder / "train"
    if change == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
        return
    if change == "garbage":
        path.write_bytes(b"this is not a pickle")
        return
    if change == "missing file":
        path.unlink()
        return
    if change == "code in pickle":  # a pickle that would call os.system when loaded
        path.write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
        return
    entries = load_entries(path)
    if change == "float data":
        entries["data"] = entries["data"].astype(np.float32)
    elif change == "wrong shape":
        entries["data"] = entries["data"][:, :1024]
    elif change == "labels out of range":
        entries["fine_labels"][3] = 100
    elif change == "ragged labels":
        entries["fine_labels"] = [[1], [2, 3]] * 32
    elif change == "label count":
        entries["fine_labels"] = entries["fine_labels"][:-1]
    elif change == "missing key":
        del entries["fine_labels"]
    elif change == "not a dict":
        entries = [entries]
    path.write_bytes(pickle.dumps(entries))


@pytest.mark.parametrize("change, fragment", [
    ("truncated", "truncated or not a CIFAR pickle"),
    ("garbage", "truncated or not a CIFAR pickle"),
    ("code in pickle", "refers to os.system"),
    ("missing file", "is missing"),
    ("float data", "'data' has dtype float32 and shape [64, 3072], expected a uint8 array"),
    ("wrong shape", "shape [64, 1024]"),
    ("ragged labels", "'fine_labels' is a list, expected 64 integer labels"),
    ("labels out of range", "labels range from 0 to 100, expected 0..99"),
    ("label count", "expected 64 integer labels"),
    ("missing key", "lacks the 'fine_labels' entry"),
    ("not a dict", "holds a list"),
])
def test_corrupt_files_name_the_file_and_the_fix(c100: Path, change: str, fragment: str) -> None:
    _corrupt(c100, change)
    user_error(cifar(c100.parent), str(c100 / "train"), fragment, "dataset.download=true")


def _archive_downloader(tmp_path: Path, calls: list[dict[str, Any]]) -> Any:
    """Stands in for torchvision's downloader: 'downloads' a generated tar.gz and extracts it
    with torchvision's own extractor."""
    from torchvision.datasets.utils import extract_archive

    source = tmp_path / "server"
    write_fake_cifar(source, "cifar100", n_train=40, n_test=10, seed=7)
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")

    def download(url: str, download_root: str, **kwargs: Any) -> None:
        calls.append({"url": url, **kwargs})
        extract_archive(str(archive), download_root)

    return download


def test_download_uses_torchvision_with_the_official_archive(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import utils as tv_utils

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(tv_utils, "download_and_extract_archive",
                        _archive_downloader(tmp_path, calls))
    root = tmp_path / "data"
    data = build(cifar(root, download=True))
    assert data.num_train == 40 and len(calls) == 1
    layout = LAYOUTS["cifar100"]
    assert (calls[0]["url"], calls[0]["md5"], calls[0]["filename"]) == (
        layout.url, layout.archive_md5, "cifar-100-python.tar.gz")
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python"]  # no leftovers
    build(cifar(root, download=True))  # a readable set is not fetched again
    assert len(calls) == 1


def test_download_replaces_a_corrupt_file(c100: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", _archive_downloader(tmp_path, []))
    _corrupt(c100, "truncated")
    assert build(cifar(c100.parent, download=True)).num_train == 40


def test_download_failure_is_one_line_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import utils as tv_utils

    def offline(*args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    root = tmp_path / "data"
    user_error(cifar(root, download=True), "could not download CIFAR-100",
               LAYOUTS["cifar100"].url, "name resolution")
    assert list(root.iterdir()) == []
