"""The task interface: what a dataset's targets mean (loss, metrics, FLOP unit, display).

The training loop and the result table know tasks only through this interface, so they never
branch on which task runs: the dataset names its task (``DataSpec.task``) and
:func:`~sparse_runner.tasks.build_task` returns it. Evaluation accumulates on the device
(no host sync per batch) and turns into a metrics dict once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor


@dataclass(frozen=True)
class Shown:
    """One metric the progress bar / result table shows: key in the metrics dict, label, format."""

    key: str
    label: str
    fmt: str = "{:.4f}"


class Accumulator:
    """Running sums of one evaluation; ``metrics()`` is the only host sync."""

    def update(self, out: Tensor, target: Tensor) -> None:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError


class Task:
    """Loss and metrics of one kind of target.

    ``unit`` is what FLOPs and throughput count ("sample" or "token"); ``best`` names the
    metric that decides ``best.pt`` and ``higher_is_better`` its direction; ``shown_train`` /
    ``shown_eval`` the metrics the progress bar and the end-of-run table print.
    """

    name: ClassVar[str]
    unit: ClassVar[str] = "sample"
    best: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    shown_train: ClassVar[tuple[Shown, ...]] = ()
    shown_eval: ClassVar[tuple[Shown, ...]] = ()

    def loss(self, out: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
        """Mean loss of a batch (what backward runs on)."""
        raise NotImplementedError

    def units(self, target: Tensor) -> int:
        """How many units (samples or tokens) a batch holds: FLOPs and throughput count these."""
        return int(target.numel())

    def train_stats(self, out: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Cheap per-batch sums the loop accumulates on the device during training."""
        return {}

    def train_metrics(self, loss_sum: float, stats: dict[str, float], n: int) -> dict[str, float]:
        """Training metrics of the running sums over ``n`` units."""
        return {"loss": loss_sum / max(n, 1)}

    def eval_accumulator(self) -> Accumulator:
        raise NotImplementedError

    def is_better(self, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new > old if self.higher_is_better else new < old

    def summary_metrics(self, ev: dict[str, float]) -> dict[str, float]:
        """The ``metrics`` section of summary.json: ``test_<key>`` for every eval metric."""
        return {f"test_{k}": v for k, v in ev.items()}

    @property
    def throughput_key(self) -> str:
        return "tok_per_s" if self.unit == "token" else "img_per_s"

    def format(self, metrics: dict[str, float], shown: tuple[Shown, ...]) -> str:
        return "  ".join(f"{s.label} {s.fmt.format(metrics[s.key])}" for s in shown
                         if s.key in metrics)
