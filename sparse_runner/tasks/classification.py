"""Image classification: cross-entropy, top-1 / top-5 accuracy (percent)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Accumulator, Shown, Task


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is within the top-k predictions, per k (capped at classes)."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hit = pred.eq(target[:, None])
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


class ClassAccumulator(Accumulator):
    def __init__(self) -> None:
        self.loss = self.c1 = self.c5 = None
        self.n = 0

    def update(self, out: Tensor, target: Tensor) -> None:
        loss = F.cross_entropy(out.float(), target, reduction="sum")
        a1, a5 = topk_correct(out, target)
        if self.loss is None:
            self.loss, self.c1, self.c5 = torch.zeros_like(loss), torch.zeros_like(a1), torch.zeros_like(a5)
        self.loss, self.c1, self.c5 = self.loss + loss, self.c1 + a1, self.c5 + a5
        self.n += target.numel()

    def metrics(self) -> dict[str, float]:
        n = max(self.n, 1)
        if self.loss is None:
            return {"loss": float("nan"), "acc1": 0.0, "acc5": 0.0}
        return {"loss": self.loss.item() / n, "acc1": 100.0 * self.c1.item() / n,
                "acc5": 100.0 * self.c5.item() / n}


class Classification(Task):
    name = "classification"
    unit = "sample"
    best = "acc1"
    higher_is_better = True
    shown_train = (Shown("loss", "loss", "{:.3f}"), Shown("acc1", "acc", "{:.1f}"))
    shown_eval = (Shown("loss", "test loss"), Shown("acc1", "acc1", "{:.2f}"),
                  Shown("acc5", "acc5", "{:.2f}"))

    def loss(self, out: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(out.float(), target, label_smoothing=label_smoothing)

    def train_stats(self, out: Tensor, target: Tensor) -> dict[str, Tensor]:
        return {"correct": topk_correct(out, target, (1,))[0]}

    def train_metrics(self, loss_sum: float, stats: dict[str, float], n: int) -> dict[str, float]:
        n = max(n, 1)
        return {"loss": loss_sum / n, "acc1": 100.0 * stats.get("correct", 0) / n}

    def eval_accumulator(self) -> Accumulator:
        return ClassAccumulator()
