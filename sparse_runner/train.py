"""The training loop: epochs of :class:`~sparse_runner.step.TrainStep`, eval, checkpoints.

It knows nothing about which sparsity method runs: the method sees the loop only through the
hooks that the step calls. Every epoch ends with an evaluation and an atomic ``last.pt``; a
better test accuracy also writes ``best.pt``.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import ddp
from . import distributed as dist
from .data import Data, Loader
from .errors import TrainingFailed
from .flops import LayerTable, train_flops_per_sample
from .loggers import Loggers
from .precision import Precision
from .sparsity import SparsityMethod
from .step import TrainStep
from .stop import StopRequest


class Interrupted(Exception):
    """Training stopped on request (signal or ``trainer.stop_after_steps``) after a checkpoint;
    ``signum`` is the signal that asked (0 for ``stop_after_steps``)."""

    def __init__(self, message: str, signum: int = 0) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class TrainState:
    """Counters that survive a resume (saved in every checkpoint)."""

    step: int = 0
    train_flops: float = 0.0
    best_acc1: float = -1.0
    train_s: float = 0.0
    epoch_s: list[float] = field(default_factory=list)
    last_train_loss: float = float("nan")
    last_eval: dict[str, float] = field(default_factory=dict)
    partial: dict[str, float] = field(default_factory=dict)  # running sums of an unfinished epoch


@dataclass
class TrainSetup:
    """Static facts of the run the loop needs (from the plan, resolved by run.py)."""

    epochs: int
    steps_per_epoch: int
    grad_accum: int
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    label_smoothing: float
    log_every: int
    stop_after_steps: int | None
    progress: bool | None
    checkpoint_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)  # saved with every checkpoint
    ranks: dist.Dist = field(default_factory=lambda: dist.SINGLE)  # data-parallel ranks
    mask_sync: str = "verify"      # after mask updates on several ranks (ddp.py)


def _train_stats(out: Tensor, y: Tensor) -> dict[str, Tensor]:
    return {"correct": topk_correct(out, y, (1,))[0]}


def topk_correct(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is within the top-k predictions, per k (capped at classes)."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hit = pred.eq(target[:, None])
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


class Trainer:
    def __init__(self, model: nn.Module, data: Data, method: SparsityMethod,
                 optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float],
                 table: LayerTable, setup: TrainSetup, loggers: Loggers,
                 forward: nn.Module | None = None) -> None:
        self.model, self.data, self.method, self.optimizer = model, data, method, optimizer
        self.forward = model if forward is None else forward  # possibly torch.compile'd (no bool())
        self.lr_at, self.table, self.setup, self.loggers = lr_at, table, setup, loggers
        self.state = TrainState()
        self.precision = Precision(setup.device.type, setup.amp_dtype)
        self.train_step = TrainStep(
            model, method, optimizer, self._loss, grad_accum=setup.grad_accum,
            forward=self.forward, lr_at=lr_at, stats=_train_stats, prep=self._prep,
            precision=self.precision,
            mask_sync=setup.mask_sync if setup.ranks.enabled else None)
        self._fwd_flops = table.sparse_fwd(method.density())
        # a signal on any rank stops every rank after the same step (checked on the CPU every
        # step; on GPUs every log_every steps, where the loop synchronises anyway)
        every = 1 if setup.device.type == "cpu" else setup.log_every
        self.stop = StopRequest(setup.device, every)
        self.mask_hashes: list[str] = []   # per rank, as of the last check
        # DDP's forward is a collective (buffer broadcast): ranks with ragged test shards run
        # different numbers of eval batches, so evaluation uses the plain module
        self.eval_forward = model if setup.ranks.enabled else self.forward
        self._epoch_t0: float | None = None

    # ---- public --------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train from ``self.state.step`` to the end; evaluation and checkpoint every epoch."""
        s = self.setup
        with self.stop:
            first = self.state.step // s.steps_per_epoch
            for epoch in range(first, s.epochs):
                self._epoch_t0 = time.perf_counter()
                train_metrics = self._train_epoch(epoch)
                spent = self._epoch_elapsed()
                self._epoch_t0 = None
                self.state.train_s += spent
                self.state.epoch_s.append(spent)
                self.state.last_train_loss = train_metrics["loss"]
                ev = self.evaluate(self.data.test)
                self.state.last_eval = ev
                self._log("test", epoch + 1, ev)
                improved = ev["acc1"] > self.state.best_acc1
                self.state.best_acc1 = max(self.state.best_acc1, ev["acc1"])
                self.save(ckpt.LAST)
                if improved and s.ranks.is_main():  # the same bytes as last.pt: link
                    ckpt.link_or_copy(self.setup.checkpoint_dir / ckpt.LAST,
                                      self.setup.checkpoint_dir / ckpt.BEST)
                self._print_epoch(epoch, train_metrics, ev)
        return self.state

    @torch.no_grad()
    def evaluate(self, loader: Loader) -> dict[str, float]:
        """Loss, top-1 and top-5 over the whole test set (each rank scores its shard with rank
        0's BatchNorm statistics; the sums are all-reduced)."""
        self.model.eval()
        dist.broadcast_(list(self.model.buffers()))
        sums = torch.zeros(4, device=self.setup.device, dtype=torch.float64)  # loss, c1, c5, n
        for x, y in loader.batches(0):
            with self._autocast():
                out = self.eval_forward(self._prep(x))
            a1, a5 = topk_correct(out, y)
            sums += torch.stack([F.cross_entropy(out.float(), y, reduction="sum").double(),
                                 a1.double(), a5.double(), sums.new_tensor(y.numel())])
        self.model.train()
        loss, c1, c5, n = dist.all_reduce_(sums).tolist()
        return {"loss": loss / n, "acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n}

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "masks": self.method.mask_state(),
            "step": self.state.step,
            "epoch": self.state.step // self.setup.steps_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "method": self.method.state_dict(),
            "state": {**asdict(self.state), "train_s": self.state.train_s + self._epoch_elapsed()},
            "rng": ckpt.rng_state(),
            "rng_ranks": ddp.rank_rng_states(),
            "precision": self.precision.state_dict(),
            **self.setup.extra,
        }

    def save(self, name: str) -> None:
        """Every rank takes part (RNG states, a mask check); rank 0 writes."""
        self.mask_hashes = dist.sync_masks(getattr(self.method, "masks", None),
                                           self.setup.mask_sync,
                                           f"at the checkpoint of step {self.state.step}")
        payload = self.checkpoint_payload()
        if self.setup.ranks.is_main():
            ckpt.save(self.setup.checkpoint_dir / name, payload)

    def restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        self.method.load_state_dict(payload["method"], payload["masks"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.method.attach_optimizer(self.optimizer)
        self.state = TrainState(**payload["state"])
        ddp.restore_rank_rng(payload)
        self.precision.load_state_dict(payload.get("precision", {}))
        self._fwd_flops = self.table.sparse_fwd(self.method.density())

    # ---- internals -----------------------------------------------------------------------------
    def _prep(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.setup.channels_last else x

    def _autocast(self):
        return self.precision.autocast()

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        s, st = self.setup, self.state
        self.model.train()
        start_step = st.step - epoch * s.steps_per_epoch
        part = st.partial if start_step > 0 else {}
        run_loss = torch.tensor(part.get("loss_sum", 0.0), device=s.device)
        run_correct = torch.tensor(int(part.get("correct", 0)), device=s.device)
        run_n = int(part.get("n", 0))
        st.partial = {}
        bad = torch.zeros((), dtype=torch.bool, device=s.device)
        bar = tqdm(total=s.steps_per_epoch, initial=start_step, desc=f"epoch {epoch + 1}/{s.epochs}",
                   disable=not s.progress if s.progress is not None else None, leave=False,
                   unit="step", dynamic_ncols=True)
        t_last, n_last = time.perf_counter(), 0
        batches = self.data.train.batches(epoch, start_step * s.grad_accum)
        for _ in range(start_step, s.steps_per_epoch):
            res = self.train_step(st.step, batches)
            bad |= ~res.finite
            run_loss += res.loss_sum
            run_correct += res.stats["correct"]
            batch_n = res.samples
            run_n += batch_n
            self._account(batch_n, res.event)
            bar.update(1)
            check = s.device.type == "cpu" or st.step % s.log_every == 0
            if check and self._any(bad):
                self._fail(float(run_loss / max(run_n, 1)), epoch)
            if st.step % s.log_every == 0 or st.step % s.steps_per_epoch == 0:
                loss_sum, correct, seen = self._global(run_loss, run_correct, run_n)
                now = time.perf_counter()
                ips = (seen - n_last) / max(now - t_last, 1e-9)
                t_last, n_last = now, seen
                self._log("train", st.step / s.steps_per_epoch,
                          {"loss": loss_sum / seen, "acc1": 100.0 * correct / seen,
                           "lr": self.optimizer.param_groups[0]["lr"], "img_per_s": ips})
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}",
                                img_s=f"{ips:.0f}")
            if self.stop.due(st.step) or (s.stop_after_steps is not None
                                          and st.step >= s.stop_after_steps):
                bar.close()
                st.partial = {"loss_sum": run_loss.item(), "correct": run_correct.item(), "n": run_n}
                self.save(ckpt.LAST)
                raise Interrupted(f"stopped at step {st.step}", self.stop.signum)
        bar.close()
        if self._any(bad):
            self._fail(float(run_loss / max(run_n, 1)), epoch)
        loss_sum, correct, seen = self._global(run_loss, run_correct, run_n)
        return {"loss": loss_sum / max(seen, 1), "acc1": 100.0 * correct / max(seen, 1)}

    def _any(self, flag: Tensor) -> bool:
        """Whether ``flag`` is set on any rank (the same answer everywhere)."""
        if not self.setup.ranks.enabled:
            return bool(flag)
        return bool(dist.all_reduce_(flag.to(torch.int32).reshape(1), "max"))

    def _global(self, loss_sum: Tensor, correct: Tensor, n: int) -> tuple[float, float, int]:
        """Running (loss sum, correct, samples) of this epoch over all ranks."""
        sums = torch.stack([loss_sum.double(), correct.double(),
                            torch.tensor(float(n), dtype=torch.float64, device=loss_sum.device)])
        loss, c, seen = dist.all_reduce_(sums).tolist()
        return loss, c, int(seen)

    def _loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y, label_smoothing=self.setup.label_smoothing)

    def _account(self, batch_n: int, event: dict[str, Any] | None) -> None:
        """Training FLOPs of the step just taken; a mask change re-prices the forward."""
        st = self.state
        batch_n *= self.setup.ranks.world_size   # every rank trains on as many samples
        st.train_flops += train_flops_per_sample(self._fwd_flops) * batch_n
        st.train_flops += self.method.extra_flops(st.step, batch_n)
        st.step += 1
        if event is not None:
            self._fwd_flops = self.table.sparse_fwd(self.method.density())
            self._log("mask_update", st.step / self.setup.steps_per_epoch, event, event="mask_update")

    def _log(self, split: str, epoch: float, metrics: dict[str, Any], event: str | None = None) -> None:
        density = self.method.density()
        record = {"event": event or split, "step": self.state.step, "epoch": round(epoch, 4),
                  "split": split if event is None else None, **metrics,
                  "train_flops": self.state.train_flops,
                  "sparsity": self._global_sparsity(density),
                  "wall_time": round(self.state.train_s + self._epoch_elapsed(), 3)}
        self.loggers.log({k: v for k, v in record.items() if v is not None})

    def _epoch_elapsed(self) -> float:
        return 0.0 if self._epoch_t0 is None else time.perf_counter() - self._epoch_t0

    def _global_sparsity(self, density: dict[str, float]) -> float:
        if not density:
            return 0.0
        total = sum(self.table[n].numel for n in density)
        return 1.0 - sum(self.table[n].numel * d for n, d in density.items()) / total

    def _fail(self, loss: float, epoch: int) -> None:
        kept = (f"checkpoints/{ckpt.LAST} holds the last good epoch"
                if (self.setup.checkpoint_dir / ckpt.LAST).is_file() else "no checkpoint was saved")
        raise TrainingFailed(
            f"loss became {loss} at step {self.state.step} (epoch {epoch + 1}); training stopped "
            f"and {kept}; lower optimizer.lr or add warm-up (schedule.warmup_epochs)"
        )

    def _print_epoch(self, epoch: int, tr: dict[str, float], ev: dict[str, float]) -> None:
        if not self.setup.ranks.is_main():
            return
        tqdm.write(f"epoch {epoch + 1:>3}/{self.setup.epochs}  train loss {tr['loss']:.4f} "
                   f"acc {tr['acc1']:.2f}  |  test loss {ev['loss']:.4f} acc1 {ev['acc1']:.2f} "
                   f"acc5 {ev['acc5']:.2f}  |  {self.state.epoch_s[-1]:.1f}s")
