"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format, held as tensors on the device.

``dataset.root`` follows torchvision: the directory that *contains* ``cifar-10-batches-py`` or
``cifar-100-python`` (``./data`` by default); pointing it at that inner folder works too. The
files are Python pickles holding a uint8 ``data`` array [N, 3072] (CHW, 32x32) and a label list
(``labels`` for CIFAR-10, ``fine_labels`` for CIFAR-100); the ``meta`` files hold only class
names and are not read.

Files are validated by structure, not by checksum: a checksum that differs from the official
release is logged once as a warning, so user-made CIFAR-format sets and test fixtures load.
Unpickling is restricted to the few numpy globals the format uses, so a stray file cannot run
code. ``dataset.download=true`` fetches the official archive with torchvision's downloader when
the folder is missing or unreadable; it never replaces a readable set.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..utils.errors import UserError
from .base import Augment, Data, DataSpec, TensorLoader
from .options import data_root, int_option, subset_indices

log = logging.getLogger(__name__)

REFETCH = "set dataset.download=true to re-fetch the official files"


@dataclass(frozen=True)
class CifarLayout:
    """Everything that differs between CIFAR-10 and CIFAR-100 (names and checksums as in
    torchvision's ``CIFAR10``/``CIFAR100``; statistics of the official training sets)."""

    name: str
    title: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str
    num_classes: int
    url: str
    archive_md5: str
    md5: Mapping[str, str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test

    @property
    def archive(self) -> str:
        return self.url.rsplit("/", 1)[-1]


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        name="cifar10", title="CIFAR-10", folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)), test=("test_batch",),
        label_key="labels", num_classes=10,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        archive_md5="c58f30108f718f92721af3b95e74349a",
        md5={"data_batch_1": "c99cafc152244af753f735de768cd75f",
             "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
             "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
             "data_batch_4": "634d18415352ddfa80567beed471001a",
             "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
             "test_batch": "40351d587109b95175f43aff81a1287e"},
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarLayout(
        name="cifar100", title="CIFAR-100", folder="cifar-100-python",
        train=("train",), test=("test",),
        label_key="fine_labels", num_classes=100,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        archive_md5="eb9058c3a382ffc7106e4002c42a8d85",
        md5={"train": "16019d7e3df5f24257cddd939b257f8d",
             "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"},
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals a CIFAR pickle may name: numpy array reconstruction under the module names
    of numpy 1 (the official files), numpy 2, and ``_codecs.encode`` (bytes under protocol 2)."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2 (and 1.26's shim)
    except ImportError:  # pragma: no cover - older numpy
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global but numpy array reconstruction: loading data must not run code."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}") from None


def _read_pickle(path: Path, layout: CifarLayout) -> tuple[dict[str, Any], str]:
    """One CIFAR pickle as a dict with str keys (the official Python 2 files load as bytes or
    str keys depending on the encoding), plus the md5 of its bytes."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{layout.title} file {path} is missing; {REFETCH}") from None
    try:
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # arbitrary bytes can fail in many ways; all mean "not CIFAR"
        raise UserError(f"cannot read {layout.title} file {path}: truncated or not a CIFAR "
                        f"pickle ({type(exc).__name__}: {exc}); {REFETCH}") from None
    if not isinstance(obj, dict):
        raise UserError(f"{layout.title} file {path} holds a {type(obj).__name__}, not the "
                        f"dict of a CIFAR batch; {REFETCH}")
    entries = {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}
    return entries, hashlib.md5(raw, usedforsecurity=False).hexdigest()


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"has dtype {value.dtype} and shape {list(value.shape)}"
    return f"is a {type(value).__name__}"


def _label_array(value: Any) -> np.ndarray | None:
    """Labels as an array (a list of ints in the official files); None if not array-like."""
    try:
        labels = np.asarray(value)
    except (TypeError, ValueError):  # e.g. ragged nested lists
        return None
    return labels.astype(np.int64) if labels.size == 0 else labels


def _validate(entries: Mapping[str, Any], path: Path, layout: CifarLayout
              ) -> tuple[np.ndarray, np.ndarray]:
    """Check one batch file's structure: uint8 data [N, 3072] and N labels in range."""
    where = f"{layout.title} file {path}"
    missing = [k for k in ("data", layout.label_key) if k not in entries]
    if missing:
        raise UserError(f"{where} lacks the {', '.join(repr(k) for k in missing)} entry "
                        f"(has {sorted(entries)}); {REFETCH}")
    data = entries["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise UserError(f"{where}: 'data' {_describe(data)}, expected a uint8 array of "
                        f"shape [N, 3072]; {REFETCH}")
    labels = _label_array(entries[layout.label_key])
    if labels is None or labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        shown = entries[layout.label_key] if labels is None else labels
        raise UserError(f"{where}: {layout.label_key!r} {_describe(shown)}, expected "
                        f"{data.shape[0]} integer labels (one per image); {REFETCH}")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise UserError(f"{where}: labels range from {labels.min()} to {labels.max()}, "
                        f"expected 0..{layout.num_classes - 1}; {REFETCH}")
    return data, labels.astype(np.int64)


@dataclass
class CifarArrays:
    train_x: np.ndarray  # uint8 [N, 3072]
    train_y: np.ndarray  # int64 [N]
    test_x: np.ndarray
    test_y: np.ndarray
    checksum_mismatch: list[str]  # files whose md5 differs from the official release


def read_cifar(layout: CifarLayout, folder: Path) -> CifarArrays:
    """Read and validate every train/test file in ``folder``; raises UserError on any defect."""
    if not folder.is_dir():
        raise UserError(
            f"{layout.title} not found: no directory {folder}; set dataset.download=true to "
            f"fetch it, point dataset.root at the directory that contains {layout.folder}, "
            "or use dataset=digits")
    splits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    mismatch = []
    for split, names in (("train", layout.train), ("test", layout.test)):
        for name in names:
            entries, md5 = _read_pickle(folder / name, layout)
            splits[split].append(_validate(entries, folder / name, layout))
            if md5 != layout.md5[name]:
                mismatch.append(name)
    # concatenate always copies, so tensors made from these arrays own writable memory
    (train_x, train_y), (test_x, test_y) = (
        tuple(np.concatenate(parts) for parts in zip(*splits[s])) for s in ("train", "test"))
    for split, x in (("training", train_x), ("test", test_x)):
        if len(x) == 0:
            raise UserError(f"{layout.title} in {folder} has no {split} images; {REFETCH}")
    return CifarArrays(train_x, train_y, test_x, test_y, mismatch)


def locate(layout: CifarLayout, root: Path) -> Path:
    """The folder holding the files: ``root/<folder>`` (torchvision's convention), or ``root``
    itself when the user pointed at the inner folder."""
    if root.name == layout.folder:
        return root
    inner = root / layout.folder
    if not inner.exists() and any((root / name).is_file() for name in layout.files):
        return root
    return inner


def download_cifar(layout: CifarLayout, folder: Path) -> None:
    """Fetch the official archive with torchvision's downloader into ``folder``.

    Download and extraction happen in a temporary directory beside ``folder``; files are then
    moved in one by one with ``os.replace``, so a failure never leaves half-written files.
    """
    from torchvision.datasets import utils as tv_utils

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{layout.folder}-download-", dir=folder.parent))
    try:
        try:
            tv_utils.download_and_extract_archive(layout.url, str(tmp), filename=layout.archive,
                                                  md5=layout.archive_md5, remove_finished=True)
        except Exception as exc:  # network, HTTP, checksum and archive errors alike
            raise UserError(
                f"could not download {layout.title} from {layout.url} ({type(exc).__name__}: "
                f"{exc}); check the network, or download and extract the archive into "
                f"{folder.parent} by hand") from None
        fetched = tmp / layout.folder
        missing = [name for name in layout.files if not (fetched / name).is_file()]
        if missing:
            raise UserError(f"the downloaded {layout.title} archive lacks {', '.join(missing)}; "
                            f"download {layout.url} by hand and extract it into {folder.parent}")
        folder.mkdir(exist_ok=True)
        for name in layout.files:
            os.replace(fetched / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cifar(layout: CifarLayout, cfg: Mapping[str, Any]) -> tuple[CifarArrays, Path]:
    """Read the set named by ``cfg`` (downloading first if asked and needed)."""
    folder = locate(layout, data_root(cfg, "./data"))
    try:
        return read_cifar(layout, folder), folder
    except UserError:
        if not cfg.get("download", False):
            raise
    log.info("downloading %s into %s", layout.title, folder)
    download_cifar(layout, folder)
    return read_cifar(layout, folder), folder


def _tensors(x: np.ndarray, y: np.ndarray, size: int | None, key: str, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One split as uint8 images [N, 3, 32, 32] on ``device`` plus labels, cut to the
    ``dataset.<key>`` subset (the loader scales to [0, 1] a batch at a time)."""
    images, labels = torch.from_numpy(x), torch.from_numpy(y)
    idx = subset_indices(size, len(labels), key)
    if idx is not None:
        images, labels = images[idx], labels[idx]
    return images.to(device).view(-1, 3, 32, 32), labels


def build_cifar(layout: CifarLayout, cfg: Mapping[str, Any], *, batch_size: int,
                eval_batch_size: int, seed: int, device: torch.device) -> Data:
    """Device-resident CIFAR with pad-4 random crop + flip and per-dataset normalisation."""
    train_size, test_size = (int_option(cfg, key, None) for key in ("train_subset", "test_subset"))
    pad = int_option(cfg, "pad", 4, minimum=0) or 0
    arrays, folder = load_cifar(layout, cfg)
    notes = []
    if arrays.checksum_mismatch:
        message = (f"{layout.title} files in {folder} differ from the official release "
                   f"(md5 of {', '.join(arrays.checksum_mismatch)}); loading them as a "
                   "user-made CIFAR-format set")
        log.warning("%s", message)
        notes.append(message)
    train_x, train_y = _tensors(arrays.train_x, arrays.train_y, train_size, "train_subset", device)
    test_x, test_y = _tensors(arrays.test_x, arrays.test_y, test_size, "test_subset", device)
    augment = Augment(pad=pad, flip=True) if cfg.get("augment", True) else None
    common = dict(mean=layout.mean, std=layout.std, seed=seed, device=device)
    train = TensorLoader(train_x, train_y, batch_size=batch_size, shuffle=True, drop_last=True,
                         augment=augment, **common)
    test = TensorLoader(test_x, test_y, batch_size=eval_batch_size, shuffle=False,
                        drop_last=False, **common)
    spec = DataSpec(layout.name, in_channels=3, num_classes=layout.num_classes, image_size=32)
    return Data(spec, train, test, num_train=len(train_y), num_test=len(test_y), notes=notes)


def build_cifar10(cfg: Mapping[str, Any], **kwargs: Any) -> Data:
    return build_cifar(LAYOUTS["cifar10"], cfg, **kwargs)


def build_cifar100(cfg: Mapping[str, Any], **kwargs: Any) -> Data:
    return build_cifar(LAYOUTS["cifar100"], cfg, **kwargs)
