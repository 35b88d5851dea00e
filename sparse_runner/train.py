"""The training loop: epochs of :class:`~sparse_runner.step.TrainStep`, eval, checkpoints.

It knows nothing about which sparsity method runs (the method sees the loop only through the
hooks that the step calls) nor which task: loss, metrics, units and display come from the
:class:`~sparse_runner.tasks.Task`. Every epoch ends with an evaluation and an atomic
``last.pt``; a better value of the task's ``best`` metric also writes ``best.pt``.
``max_steps`` (``trainer.max_steps``) ends training after that many optimizer steps, inside an
epoch if need be.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
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
from .sparsity import SparsityMethod, spectral
from .sparsity.condensed_ckpt import optimizer_names
from .step import TrainStep
from .stop import StopRequest
from .tasks import Classification, Task


def to_channels_last(x: Tensor) -> Tensor:
    """An image batch in channels_last layout; any other input (token ids) as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


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
    best: float | None = None  # best value of the task's ``best`` metric (test acc1, test loss)
    train_s: float = 0.0
    units: int = 0  # samples (or tokens) trained on, for the throughput in summary.json
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
    max_steps: int | None = None  # stop after this many optimizer steps (None: all epochs)
    spectral_every: int = 0  # Ramanujan metrics after every n-th mask update (0: never)
    ranks: dist.Dist = field(default_factory=lambda: dist.SINGLE)  # data-parallel ranks
    mask_sync: str = "verify"      # after mask updates on several ranks (ddp.py)

    @property
    def total_steps(self) -> int:
        full = self.epochs * self.steps_per_epoch
        return full if self.max_steps is None else min(full, self.max_steps)


class Trainer:
    def __init__(self, model: nn.Module, data: Data, method: SparsityMethod,
                 optimizer: torch.optim.Optimizer, lr_at: Callable[[int], float],
                 table: LayerTable, setup: TrainSetup, loggers: Loggers,
                 forward: nn.Module | None = None, task: Task | None = None) -> None:
        self.model, self.data, self.method, self.optimizer = model, data, method, optimizer
        self.forward = model if forward is None else forward  # possibly torch.compile'd (no bool())
        self.lr_at, self.table, self.setup, self.loggers = lr_at, table, setup, loggers
        self.state = TrainState()
        self.task = task or Classification()
        self.precision = Precision(setup.device.type, setup.amp_dtype)
        self.train_step = TrainStep(
            model, method, optimizer, self._loss, grad_accum=setup.grad_accum,
            forward=self.forward, lr_at=lr_at, stats=self.task.train_stats, prep=self._prep,
            precision=self.precision, units=self.task.units,
            mask_sync=setup.mask_sync if setup.ranks.enabled else None)
        self._fwd_flops = table.sparse_fwd(method.density())
        # a signal on any rank stops every rank after the same step (checked on the CPU every
        # step; on GPUs every log_every steps, where the loop synchronises anyway)
        self.stop = StopRequest(setup.device, 1 if setup.device.type == "cpu" else setup.log_every)
        self.mask_hashes: list[str] = []   # per rank, as of the last check
        # DDP's forward is a collective (buffer broadcast): ranks with ragged test shards run
        # different numbers of eval batches, so evaluation uses the plain module
        self.eval_forward = model if setup.ranks.enabled else self.forward
        self._epoch_t0: float | None = None
        self._mask_updates = 0
        self.spectral_final: dict[str, Any] | None = None  # the metrics of the final masks

    # ---- public --------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train from ``self.state.step`` to the end; evaluation and checkpoint every epoch."""
        s = self.setup
        if self.state.step == 0:
            self._spectral("setup")
        with self.stop:
            first = self.state.step // s.steps_per_epoch
            for epoch in range(first, s.epochs):
                if self.state.step >= s.total_steps:
                    break
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
                improved = self.task.is_better(ev[self.task.best], self.state.best)
                if improved:
                    self.state.best = ev[self.task.best]
                self.save(ckpt.LAST)
                if improved and s.ranks.is_main():  # the same bytes as last.pt: link
                    ckpt.link_or_copy(self.setup.checkpoint_dir / ckpt.LAST,
                                      self.setup.checkpoint_dir / ckpt.BEST)
                self._print_epoch(epoch, train_metrics, ev)
        self.spectral_final = self._spectral("end")
        return self.state

    @torch.no_grad()
    def evaluate(self, loader: Loader) -> dict[str, float]:
        """The task's metrics over the whole test set (each rank scores its shard with rank 0's
        BatchNorm statistics; the sums are all-reduced)."""
        self.model.eval()
        dist.broadcast_(list(self.model.buffers()))
        acc = self.task.eval_accumulator()
        for x, y in loader.batches(0):
            with self._autocast():
                out = self.eval_forward(self._prep(x))
            acc.update(out, y)
        self.model.train()
        return acc.metrics_from(dist.all_reduce_(acc.sums().to(self.setup.device)))

    def checkpoint_payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "masks": self.method.mask_state(),
            "step": self.state.step,
            "epoch": self.state.step // self.setup.steps_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "param_names": optimizer_names(self.model, self.optimizer),  # backend converter
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
        return to_channels_last(x) if self.setup.channels_last else x

    def _autocast(self):
        return self.precision.autocast()

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        s, st, task = self.setup, self.state, self.task
        self.model.train()
        start_step = st.step - epoch * s.steps_per_epoch
        end_step = min(s.steps_per_epoch, s.total_steps - epoch * s.steps_per_epoch)
        part = st.partial if start_step > 0 else {}
        run_loss = torch.tensor(part.get("loss_sum", 0.0), device=s.device)
        run_stats = {k: torch.tensor(v, device=s.device) for k, v in part.get("stats", {}).items()}
        run_n = int(part.get("n", 0))
        st.partial = {}
        bad = torch.zeros((), dtype=torch.bool, device=s.device)
        bar = tqdm(total=end_step, initial=start_step, desc=f"epoch {epoch + 1}/{s.epochs}",
                   disable=not s.progress if s.progress is not None else None, leave=False,
                   unit="step", dynamic_ncols=True)
        t_last, n_last = time.perf_counter(), 0
        batches = self.data.train.batches(epoch, start_step * s.grad_accum)

        def host() -> dict[str, float]:   # running train metrics over all ranks
            loss, stats, seen = self._global(run_loss, run_stats, run_n)
            return {**task.train_metrics(loss, stats, seen), "_seen": seen}

        for _ in range(start_step, end_step):
            res = self.train_step(st.step, batches)
            bad |= ~res.finite
            run_loss += res.loss_sum
            for k, v in res.stats.items():
                run_stats[k] = v if k not in run_stats else run_stats[k] + v
            run_n += res.samples
            self._account(res.samples, res.event)
            bar.update(1)
            check = s.device.type == "cpu" or st.step % s.log_every == 0
            if check and self._any(bad):
                self._fail(float(run_loss / max(run_n, 1)), epoch)
            if st.step % s.log_every == 0 or st.step % s.steps_per_epoch == 0:
                now, metrics = time.perf_counter(), host()
                seen = metrics.pop("_seen")
                ups = (seen - n_last) / max(now - t_last, 1e-9)
                t_last, n_last = now, seen
                self._log("train", st.step / s.steps_per_epoch,
                          {**metrics, "lr": self.optimizer.param_groups[0]["lr"],
                           task.throughput_key: ups})
                bar.set_postfix_str(f"{task.format(metrics, task.shown_train)}  "
                                    f"{task.throughput_key} {ups:.0f}")
            if self.stop.due(st.step) or (s.stop_after_steps is not None
                                          and st.step >= s.stop_after_steps):
                bar.close()
                st.partial = {"loss_sum": run_loss.item(), "n": run_n,
                              "stats": {k: v.item() for k, v in run_stats.items()}}
                self.save(ckpt.LAST)
                raise Interrupted(f"stopped at step {st.step}", self.stop.signum)
        bar.close()
        if self._any(bad):
            self._fail(float(run_loss / max(run_n, 1)), epoch)
        metrics = host()
        metrics.pop("_seen")
        return metrics

    def _any(self, flag: Tensor) -> bool:
        """Whether ``flag`` is set on any rank (the same answer everywhere)."""
        if not self.setup.ranks.enabled:
            return bool(flag)
        return bool(dist.all_reduce_(flag.to(torch.int32).reshape(1), "max"))

    def _global(self, loss_sum: Tensor, stats: dict[str, Tensor],
                n: int) -> tuple[float, dict[str, float], int]:
        """Running (loss sum, stats, units) of this epoch over all ranks (one host sync)."""
        keys = sorted(stats)
        sums = torch.stack([loss_sum.double(), *(stats[k].double() for k in keys),
                            loss_sum.new_tensor(float(n), dtype=torch.float64)])
        values = dist.all_reduce_(sums).tolist()
        return values[0], dict(zip(keys, values[1:-1])), int(values[-1])

    def _loss(self, out: Tensor, y: Tensor) -> Tensor:
        return self.task.loss(out, y, self.setup.label_smoothing)

    def _account(self, batch_n: int, event: dict[str, Any] | None) -> None:
        """Training FLOPs of the step just taken (all ranks); a mask change re-prices the forward."""
        st = self.state
        batch_n *= self.setup.ranks.world_size   # every rank trains on as many units
        st.train_flops += train_flops_per_sample(self._fwd_flops) * batch_n
        st.train_flops += self.method.extra_flops(st.step, batch_n)
        st.units += batch_n
        st.step += 1
        if event is not None:
            self._fwd_flops = self.table.sparse_fwd(self.method.density())
            self._log("mask_update", st.step / self.setup.steps_per_epoch, event, event="mask_update")
            self._mask_updates += 1
            if self.setup.spectral_every and self._mask_updates % self.setup.spectral_every == 0:
                self._spectral("update")

    def _spectral(self, when: str) -> dict[str, Any] | None:
        """Log a ``spectral`` event (per layer and mean over layers) for the current masks."""
        if not self.setup.spectral_every:
            return None
        metrics = spectral.section(self.model, self.method.mask_state())
        if metrics is not None:
            self._log("spectral", self.state.step / self.setup.steps_per_epoch,
                      {"when": when, **metrics["mean"], "layers": metrics["layers"]},
                      event="spectral")
        return metrics

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
        task = self.task
        tqdm.write(f"epoch {epoch + 1:>3}/{self.setup.epochs}  train "
                   f"{task.format(tr, task.shown_train)}  |  {task.format(ev, task.shown_eval)}  "
                   f"|  {self.state.epoch_s[-1]:.1f}s")
