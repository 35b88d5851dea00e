"""Optimizer groups and learning-rate schedules (pure functions of the step)."""
from __future__ import annotations

import math

import pytest
import torch

from sparse_runner.utils.errors import UserError
from sparse_runner.models import build_model
from sparse_runner.optim import build_optimizer, lr_schedule


def test_weight_decay_skips_norms_and_biases():
    m = build_model({"name": "resnet18"}, in_channels=1, num_classes=10, image_size=8, width_mult=0.125)
    opt = build_optimizer({"name": "sgd", "lr": 0.1, "weight_decay": 5e-4}, m)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_paper_multistep_schedule():
    lr = lr_schedule({"name": "multistep", "milestones": [60, 120, 160], "gamma": 0.2}, 0.1,
                     steps_per_epoch=10, total_steps=2000)
    assert lr(0) == 0.1 and lr(599) == 0.1
    assert math.isclose(lr(600), 0.02) and math.isclose(lr(1200), 0.004)
    assert math.isclose(lr(1600), 0.0008) and math.isclose(lr(1999), 0.0008)


def test_cosine_with_warmup():
    lr = lr_schedule({"name": "cosine", "warmup_epochs": 1}, 0.1, steps_per_epoch=10, total_steps=110)
    assert [round(lr(i), 6) for i in (0, 4, 9)] == [0.01, 0.05, 0.1]
    assert math.isclose(lr(10), 0.1) and math.isclose(lr(60), 0.05)
    assert lr(109) < 1e-3 and all(lr(i) >= lr(i + 1) for i in range(10, 109))


def test_unknown_schedule_and_optimizer():
    with pytest.raises(UserError, match="valid: constant, cosine, multistep"):
        lr_schedule({"name": "poly"}, 0.1, 10, 100)
    with pytest.raises(UserError, match="valid: adamw, sgd"):
        build_optimizer({"name": "lamb", "lr": 1}, torch.nn.Linear(2, 2))
