"""A newcomer adds a method by copying one file (docs/architecture.md, "Adding a method"):
a method registered from a new file outside the package composes, validates its options and
trains through the real loop, in-process and from the command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparse_runner.utils.errors import UserError
from sparse_runner.config.plugins import load
from conftest import run_tiny

# What the guide tells a newcomer to write: methods/rigl.py copied, renamed, growth changed.
PLUGIN = '''
from dataclasses import dataclass

from torch import Tensor

from sparse_runner.sparsity.dst import DSTOptions, DynamicSparse
from sparse_runner.sparsity.method import register
from sparse_runner.sparsity.options import check


@dataclass
class MagnitudeOptions(DSTOptions):
    noise: float = 0.5          # weight of the random part of the growth score


@register("{name}")
class GrowByGradAndNoise(DynamicSparse):
    """RigL whose growth score adds uniform noise to |dense grad|."""

    Options = MagnitudeOptions

    def check_options(self) -> None:
        super().check_options()
        check(self.opts.noise >= 0, self.name, "noise must be >= 0")

    def grow_score(self, layer: int, step: int) -> Tensor:
        import torch
        g = self.dense_grad(layer).abs()
        noise = torch.rand(g.shape, generator=self.rng(step, layer)).to(g.device)
        return g / (g.max() + 1e-12) + self.opts.noise * noise
'''


def write_plugin(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(PLUGIN.replace("{name}", name))
    return path


def test_method_from_a_new_file_trains_in_process(tmp_path):
    load(str(write_plugin(tmp_path, "noisy_rigl")))
    summary = run_tiny(tmp_path, "method=noisy_rigl", "s=0.9", "method.delta_t=2",
                       "method.noise=0.25", "trainer.batch_size=256")
    assert summary["status"] == "completed" and summary["method"] == "noisy_rigl"
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    updates = [e for e in events if e["event"] == "mask_update"]
    assert updates and all(e["changed"] >= 0 for e in updates)
    masks = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["masks"]
    nnz = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs(1 - nnz / total - 0.9) < 1e-3       # exact budget kept through the updates
    with pytest.raises(UserError, match="noise must be >= 0"):
        run_tiny(tmp_path, "method=noisy_rigl", "s=0.9", "method.noise=-1", name="bad")


# From the command line (the installed `sparse-run` with SPARSE_RUN_PLUGINS, from a folder of the
# user's own): tests/test_user_path.py::test_method_from_the_users_file.
