"""Next-token prediction: cross-entropy in nats per token, perplexity, bits per character.

Targets are the inputs shifted by one ([B, T] token ids), outputs are logits [B, T, V]. For
character-level tokens (the shipped text datasets) bits per token is bits per character:
``bpc = loss / ln 2``; perplexity is ``exp(loss)``. FLOPs and throughput count tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Accumulator, Shown, Task


def token_loss(out: Tensor, target: Tensor, reduction: str = "mean",
               label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), target.reshape(-1),
                           reduction=reduction, label_smoothing=label_smoothing)


class TokenAccumulator(Accumulator):
    """Sums of (loss in nats, tokens) on the device."""

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def update(self, out: Tensor, target: Tensor) -> None:
        loss = token_loss(out, target, "sum")
        part = torch.stack([loss.double(), loss.new_tensor(target.numel(), dtype=torch.float64)])
        self.total = part if self.total is None else self.total + part

    def sums(self) -> Tensor:
        return self.total if self.total is not None else torch.zeros(2, dtype=torch.float64)

    def metrics_from(self, sums: Tensor) -> dict[str, float]:
        loss_sum, n = sums.tolist()
        loss = loss_sum / n if n else float("nan")
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpc": loss / math.log(2)}


class LanguageModel(Task):
    name = "language_model"
    unit = "token"
    best = "loss"
    higher_is_better = False
    shown_train = (Shown("loss", "loss", "{:.3f}"),)
    shown_eval = (Shown("loss", "test loss"), Shown("ppl", "ppl", "{:.2f}"),
                  Shown("bpc", "bpc", "{:.3f}"))

    def loss(self, out: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return token_loss(out, target, label_smoothing=label_smoothing)

    def eval_accumulator(self) -> Accumulator:
        return TokenAccumulator()


__all__ = ["LanguageModel", "TokenAccumulator", "token_loss"]
