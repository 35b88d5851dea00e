"""Next-token prediction: cross-entropy in nats per token, perplexity, bits per character.

Targets are the inputs shifted by one ([B, T] token ids), outputs are logits [B, T, V]. For
character-level tokens (the shipped text datasets) bits per token is bits per character:
``bpc = loss / ln 2``; perplexity is ``exp(loss)``. FLOPs and throughput count tokens.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from .base import Accumulator, Shown, Task


def token_loss(out: Tensor, target: Tensor, reduction: str = "mean",
               label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(out.float().reshape(-1, out.shape[-1]), target.reshape(-1),
                           reduction=reduction, label_smoothing=label_smoothing)


class TokenAccumulator(Accumulator):
    def __init__(self) -> None:
        self.loss: Tensor | None = None
        self.n = 0

    def update(self, out: Tensor, target: Tensor) -> None:
        loss = token_loss(out, target, "sum")
        self.loss = loss if self.loss is None else self.loss + loss
        self.n += target.numel()

    def metrics(self) -> dict[str, float]:
        loss = self.loss.item() / self.n if self.loss is not None and self.n else float("nan")
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
