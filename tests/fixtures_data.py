"""Helpers shared by the dataset tests (plain imports, no conftest magic).

The generated datasets themselves come from ``sparse_runner.data.fake``, which other tests and
users share.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from sparse_runner.data import Data, Loader, build_data
from sparse_runner.utils.errors import UserError

CPU = torch.device("cpu")
CONF = Path(__file__).resolve().parents[1] / "conf"


def dataset_config(name: str, **overrides: Any) -> DictConfig:
    """``conf/dataset/<name>.yaml`` with overrides, in struct mode as Hydra hands it over, so
    the shipped defaults and the keys the code reads are tested together."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "dataset" / f"{name}.yaml"), overrides)
    OmegaConf.set_struct(cfg, True)
    return cfg


def build(cfg: Any, *, batch_size: int = 16, eval_batch_size: int = 32,
          seed: int = 0, num_workers: int = 0) -> Data:
    """``build_data`` on the CPU with small batches."""
    return build_data(cfg, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                      device=CPU, num_workers=num_workers)


def run_epoch(loader: Loader, epoch: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Every batch of one pass (from batch ``start``), concatenated."""
    xs, ys = zip(*loader.batches(epoch, start))
    return torch.cat(xs), torch.cat(ys)


def check_resume_and_order(loader: Loader) -> None:
    """The determinism contract of every loader: a pass is reproducible and leaves the global
    RNG alone, ``batches(epoch, start)`` is exactly the tail of a full pass, and another epoch
    gives another order."""
    rng_state = torch.get_rng_state()
    x0, y0 = run_epoch(loader, 0)
    assert torch.equal(torch.get_rng_state(), rng_state)
    x_again, y_again = run_epoch(loader, 0)
    assert torch.equal(x0, x_again) and torch.equal(y0, y_again)
    x_tail, y_tail = run_epoch(loader, 0, start=1)
    skip = loader.batch_size
    assert torch.equal(x_tail, x0[skip:]) and torch.equal(y_tail, y0[skip:])
    x1, _ = run_epoch(loader, 1)
    assert x1.shape == x0.shape and not torch.equal(x1, x0)


def user_error(cfg: Any, *fragments: str, **kwargs: Any) -> str:
    """Build ``cfg``, expect a one-line UserError containing every fragment; return it."""
    with pytest.raises(UserError) as info:
        data = build(cfg, **kwargs)
        for _ in data.train.batches(0):  # loaders that decode lazily fail while iterating
            pass
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message
