"""MNIST-1D (Greydanus, "Scaling Down Deep Learning", 2020): 40-sample 1-D signals, 10 classes.

Generated offline by the ``mnist1d`` package (``mnist1d.data.make_dataset``; never its
``get_dataset``, which downloads a pickle). The defaults are the package's own arguments, so the
standard 4,000 / 1,000 split is what ``dataset=mnist1d`` gives; every generator argument is a
``dataset.<key>`` option, so a larger or harder variant is one override. The generator is
deterministic in its arguments (it seeds Python's and NumPy's global generators from
``dataset.seed``; we restore both afterwards so the run's own seeding is untouched), takes a
few CPU seconds, and is cached under ``<dataset.root>/mnist1d/<key>.npz`` keyed by the
arguments and the package version (written atomically). The signals are already centred and
scaled to unit standard deviation by the generator, so the loader does not normalise again.
Samples are ``[1, length]`` (one channel): ``DataSpec(kind="signal", seq_len=length)``.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..utils.errors import UserError
from ..outputs.fsio import atomic_write
from .base import Data, DataSpec, TensorLoader
from .options import data_root

# The generator's arguments and the package's defaults (mnist1d 0.0.2, get_dataset_args()).
GENERATOR_DEFAULTS: dict[str, Any] = {
    "num_samples": 5000, "train_split": 0.8, "template_len": 12, "padding": [36, 60],
    "scale_coeff": 0.4, "max_translation": 48, "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2, "shear_scale": 0.75, "shuffle_seq": False,
    "final_seq_length": 40, "seed": 42,
}
OWN_KEYS = ("name", "root")


def generator_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The generator's arguments from ``cfg`` (missing keys: the package's defaults); an
    unknown key is a one-line error naming the valid ones."""
    unknown = sorted(set(cfg) - set(GENERATOR_DEFAULTS) - set(OWN_KEYS))
    if unknown:
        raise UserError(f"dataset=mnist1d has no option {unknown[0]!r}; valid: "
                        f"{', '.join([*OWN_KEYS[1:], *GENERATOR_DEFAULTS])}")
    args = {k: cfg.get(k, v) if cfg.get(k) is not None else v
            for k, v in GENERATOR_DEFAULTS.items()}
    args["padding"] = [int(p) for p in args["padding"]]
    n, split = int(args["num_samples"]), float(args["train_split"])
    if n < 20 or not 0 < split < 1 or int(args["final_seq_length"]) < 1:
        raise UserError(f"dataset=mnist1d: num_samples={n}, train_split={split}, "
                        f"final_seq_length={args['final_seq_length']} are invalid; use "
                        "num_samples >= 20, 0 < train_split < 1, final_seq_length >= 1")
    return args


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("mnist1d")
    except PackageNotFoundError:
        raise UserError("dataset=mnist1d needs the mnist1d package; pip install mnist1d") from None


def generate(args: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run the package's generator offline (x float32, y int64); global RNGs left as found."""
    from mnist1d.data import get_dataset_args, make_dataset

    view = get_dataset_args()
    for key, value in args.items():
        setattr(view, key, value)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(view)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}


def cache_path(root: Path, args: Mapping[str, Any]) -> Path:
    """``<root>/mnist1d/<sha256 of the arguments and package version>.npz``."""
    key = json.dumps({"args": dict(args), "mnist1d": _package_version()}, sort_keys=True)
    return root / "mnist1d" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_or_generate(root: Path, args: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The arrays for ``args``: from the cache if present and readable, else generated and
    cached (atomically, so a concurrent or interrupted run never sees half a file)."""
    path = cache_path(root, args)
    if path.is_file():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            pass   # a damaged cache file is regenerated and replaced
    arrays = generate(args)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue(), "cache MNIST-1D")
    return arrays


def build_mnist1d(cfg: Mapping[str, Any], *, batch_size: int, eval_batch_size: int, seed: int,
                  device: torch.device) -> Data:
    """Train/test loaders of MNIST-1D signals ``[N, 1, length]`` on ``device``."""
    args = generator_args(cfg)
    arrays = load_or_generate(data_root(cfg, "./data"), args)
    common = dict(mean=[0.0], std=[1.0], seed=seed, device=device)
    tr_x, te_x = (torch.from_numpy(arrays[k])[:, None] for k in ("x", "x_test"))
    tr_y, te_y = torch.from_numpy(arrays["y"]), torch.from_numpy(arrays["y_test"])
    train = TensorLoader(tr_x, tr_y, batch_size=batch_size, shuffle=True, drop_last=True,
                         **common)
    test = TensorLoader(te_x, te_y, batch_size=eval_batch_size, shuffle=False, drop_last=False,
                        **common)
    spec = DataSpec("mnist1d", in_channels=1, num_classes=10, image_size=0, kind="signal",
                    seq_len=int(tr_x.shape[-1]))
    return Data(spec, train, test, num_train=len(tr_y), num_test=len(te_y))
