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
    """Sums of (loss, top-1 hits, top-5 hits, samples) on the device."""

    def __init__(self) -> None:
        self.total: Tensor | None = None

    def update(self, out: Tensor, target: Tensor) -> None:
        loss = F.cross_entropy(out.float(), target, reduction="sum")
        a1, a5 = topk_correct(out, target)
        part = torch.stack([loss.double(), a1.double(), a5.double(),
                            loss.new_tensor(target.numel(), dtype=torch.float64)])
        self.total = part if self.total is None else self.total + part

    def sums(self) -> Tensor:
        return self.total if self.total is not None else torch.zeros(4, dtype=torch.float64)

    def metrics_from(self, sums: Tensor) -> dict[str, float]:
        loss, c1, c5, n = sums.tolist()
        if n == 0:
            return {"loss": float("nan"), "acc1": 0.0, "acc5": 0.0}
        return {"loss": loss / n, "acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n}


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
