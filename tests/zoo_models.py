"""Builders for the model-zoo tests (timm, torchvision, custom, GPT), on the meta device when
only shapes matter, and a tiny training loop through the task interface."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from sparse_runner.models import build_model
from sparse_runner.tasks import Task

PRESETS = {  # preset -> (model config, input (C, size) of its dry run)
    "resnet18": ({"name": "resnet18"}, (3, 32)),
    "mobilenetv2": ({"name": "timm", "arch": "mobilenetv2_100"}, (3, 32)),
    "mobilevit_s": ({"name": "timm", "arch": "mobilevit_s"}, (3, 32)),
    "botnet50": ({"name": "timm", "arch": "botnet50ts_256", "input_size": 256}, (3, 256)),
}
GPT_SMALL = {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}
GPT3_SMALL = {"name": "gpt", "n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024}


def image_builder(cfg: dict[str, Any], channels: int = 3, classes: int = 100,
                  size: int = 32) -> Callable[[float], nn.Module]:
    def build(width_mult: float) -> nn.Module:
        return build_model(cfg, in_channels=channels, num_classes=classes, image_size=size,
                           width_mult=width_mult)
    return build


def text_builder(cfg: dict[str, Any], vocab: int = 84, seq_len: int | None = None
                 ) -> Callable[[float], nn.Module]:
    def build(width_mult: float) -> nn.Module:
        return build_model(cfg, in_channels=0, num_classes=vocab, image_size=0,
                           width_mult=width_mult, kind="text",
                           seq_len=seq_len or cfg.get("block_size", 128))
    return build


def train_steps(model: nn.Module, task: Task, batches: list[tuple[torch.Tensor, torch.Tensor]],
                steps: int, lr: float = 1e-3) -> list[float]:
    """AdamW on the same few batches: the loss must fall (the model and task are wired up)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = task.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
