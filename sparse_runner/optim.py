"""Optimizer and learning-rate schedule builders.

Weight decay skips norms and biases (every parameter with fewer than 2 dims): decaying BN
scales fights the normalisation and is the common recipe (timm, the Sparse-IFT reference).
The schedule is a pure function of the optimizer step, so resume needs no scheduler state.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .utils.errors import UserError


def param_groups(model: nn.Module, weight_decay: float, no_decay_1d: bool = True) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_decay_1d and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    name = str(cfg["name"])
    groups = param_groups(model, float(cfg.get("weight_decay", 0.0)),
                          bool(cfg.get("no_decay_bn_bias", True)))
    lr = float(cfg["lr"])
    # Fused kernels: one pass over each parameter instead of ~4 (SGD step on ResNet-18, CPU:
    # 6 ms instead of 13). Same update rule; pruned weights with zero grad and zero state stay 0.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for g in groups for p in g["params"]) or None
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)),
                               nesterov=bool(cfg.get("nesterov", True)), fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))),
                                 eps=float(cfg.get("eps", 1e-8)), fused=fused)
    raise UserError(f"unknown optimizer {name!r}; valid: adamw, sgd")


def lr_schedule(cfg: Mapping[str, Any], base_lr: float, steps_per_epoch: int,
                total_steps: int) -> Callable[[int], float]:
    """``lr(step)``: linear warm-up, then cosine / multi-step / constant (epochs in config)."""
    name = str(cfg["name"])
    steps = cfg.get("warmup_steps")  # steps win over epochs (LM runs count steps)
    warmup = (int(steps) if steps is not None
              else int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch)))
    if name == "cosine":
        floor = float(cfg.get("min_lr_ratio", 0.0)) * base_lr

        def after(step: int) -> float:
            t = (step - warmup) / max(1, total_steps - warmup)
            return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    elif name == "multistep":
        marks = sorted(int(round(float(m) * steps_per_epoch)) for m in cfg.get("milestones", []))
        gamma = float(cfg.get("gamma", 0.1))

        def after(step: int) -> float:
            return base_lr * gamma ** sum(step >= m for m in marks)
    elif name == "constant":
        def after(step: int) -> float:
            return base_lr
    else:
        raise UserError(f"unknown schedule {name!r}; valid: constant, cosine, multistep")

    def lr(step: int) -> float:
        if step < warmup:
            return base_lr * (step + 1) / warmup
        return after(step)

    return lr
