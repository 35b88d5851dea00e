"""Small generated datasets in the real on-disk formats: fixtures for tests and smoke runs.

``write_fake_cifar`` writes torchvision's CIFAR layout byte-compatibly with the official files:
Python 2-style pickles (protocol 2, keys as Python 2 ``str``), so they load with
``pickle.load(f, encoding="bytes")`` (keys ``b'data'``, as on the CIFAR website) and with
``encoding="latin1"`` (keys ``'data'``, as torchvision reads them). ``write_fake_imagenet``
writes an ImageFolder tree of JPEGs. Images are a per-class colour pattern plus noise, so a
model can learn them and a smoke run shows accuracy above chance. Only the checksums differ
from the official files (the loader warns once about that).
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .cifar import LAYOUTS


class _Py2Str(str):
    """A Python 2 ``str``: pickled as (SHORT_)BINSTRING, which Python 3 decodes per ``encoding``."""


class _Global:
    """A global referenced by name, as the official files name ``numpy.core.multiarray``
    (numpy 2 writes ``numpy._core``, which numpy 1 cannot read)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: it lets us emit opcodes
    """Writes pickles as Python 2's cPickle wrote the CIFAR files (protocol 2)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj: _Py2Str) -> None:
        raw = obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def _save_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    def _save_ndarray(self, arr: np.ndarray) -> None:
        _, (_, shape0, typecode), (version, shape, dtype, fortran, raw) = arr.__reduce__()
        self.save(_Global("numpy.core.multiarray", "_reconstruct"))
        self.save((_Global("numpy", "ndarray"), shape0, _Py2Str(typecode.decode("latin1"))))
        self.write(pickle.REDUCE)
        self.memoize(arr)
        self.save((version, shape, dtype, fortran, _Py2Str(raw.decode("latin1"))))
        self.write(pickle.BUILD)

    dispatch[_Py2Str] = _save_py2str
    dispatch[_Global] = _save_global
    dispatch[np.ndarray] = _save_ndarray


def _py2_pickle(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _write_atomic(path: Path, payload: bytes) -> None:
    """Write via a temporary file and ``os.replace``: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def _class_images(patterns: np.ndarray, labels: np.ndarray, height: int, width: int,
                  rng: np.random.Generator) -> np.ndarray:
    """uint8 [N, H, W, 3]: each class's 4x4 colour pattern scaled up, mixed with noise."""
    rows, cols = np.arange(height) * 4 // height, np.arange(width) * 4 // width
    base = patterns[labels][:, rows][:, :, cols].astype(np.float32)
    noise = rng.integers(0, 256, base.shape).astype(np.float32)
    return (0.7 * base + 0.3 * noise).astype(np.uint8)


def _cifar_batch(layout_key: str, label: str, labels: np.ndarray, images: np.ndarray,
                 start: int) -> dict[_Py2Str, Any]:
    """One batch dict with the official keys and types (labels as a list of Python ints)."""
    p = _Py2Str
    entry: dict[_Py2Str, Any] = {
        p("batch_label"): p(label),
        p(layout_key): [int(v) for v in labels],
        p("data"): np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1),
        p("filenames"): [p(f"fake_s_{start + i:06d}.png") for i in range(len(labels))],
    }
    if layout_key == "fine_labels":  # CIFAR-100 also carries the 20 superclasses
        entry[p("coarse_labels")] = [int(v) // 5 for v in labels]
    return entry


def _cifar_meta(kind: str) -> tuple[str, dict[_Py2Str, Any]]:
    p = _Py2Str
    if kind == "cifar10":
        return "batches.meta", {p("num_cases_per_batch"): 10000, p("num_vis"): 3072,
                                p("label_names"): [p(f"fake_class_{i}") for i in range(10)]}
    return "meta", {p("fine_label_names"): [p(f"fake_class_{i:02d}") for i in range(100)],
                    p("coarse_label_names"): [p(f"fake_superclass_{i:02d}") for i in range(20)]}


def write_fake_cifar(root: str | os.PathLike[str], kind: str = "cifar100", n_train: int = 64,
                     n_test: int = 32, seed: int = 0) -> Path:
    """Write a CIFAR-10/100 set in torchvision's layout under ``root`` (a test fixture).

    Creates ``root/cifar-10-batches-py`` (five training batches, ``test_batch``,
    ``batches.meta``) or ``root/cifar-100-python`` (``train``, ``test``, ``meta``) and returns
    that folder; ``dataset.root`` may be ``root`` or the returned folder. Labels cycle through
    the classes in a shuffled order.
    """
    layout = LAYOUTS[kind]
    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (layout.num_classes, 4, 4, 3))
    folder = Path(root) / layout.folder
    folder.mkdir(parents=True, exist_ok=True)
    for split, names, n in (("training", layout.train, n_train), ("testing", layout.test, n_test)):
        labels = rng.permutation(np.arange(n) % layout.num_classes)
        images = _class_images(patterns, labels, 32, 32, rng)
        chunks = np.array_split(np.arange(n), len(names))
        for i, (name, idx) in enumerate(zip(names, chunks), start=1):
            entry = _cifar_batch(layout.label_key, f"{split} batch {i} of {len(names)}",
                                 labels[idx], images[idx], int(idx[0]) if len(idx) else 0)
            _write_atomic(folder / name, _py2_pickle(entry))
    meta_name, meta = _cifar_meta(kind)
    _write_atomic(folder / meta_name, _py2_pickle(meta))
    return folder


def write_fake_imagenet(root: str | os.PathLike[str], classes: int = 3, per_class: int = 4,
                        val_per_class: int = 2, size: int = 40, seed: int = 0) -> Path:
    """Write an ImageNet-style ImageFolder tree of JPEGs under ``root`` (a test fixture).

    Layout: ``root/train/<wnid>/<wnid>_<k>.JPEG`` and ``root/val/<wnid>/ILSVRC2012_val_<k>.JPEG``
    with WordNet-like class ids ``n00000000``, ``n00000001``, ... Images alternate between
    landscape (``size`` x ``3/4 size``) and portrait, as real photos vary. Returns ``root``.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    patterns = rng.integers(0, 256, (classes, 4, 4, 3))
    root = Path(root)
    counter = 0
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            wnid = f"n{c:08d}"
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                counter += 1
                w, h = (size, size * 3 // 4) if counter % 2 else (size * 3 // 4, size)
                pixels = _class_images(patterns, np.array([c]), h, w, rng)[0]
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
                name = (f"{wnid}_{k}.JPEG" if split == "train"
                        else f"ILSVRC2012_val_{counter:08d}.JPEG")
                _write_atomic(root / split / wnid / name, buf.getvalue())
    return root
