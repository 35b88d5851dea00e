"""Orchestration: data -> model -> IFT -> Iso-FLOP search -> method -> train -> summary.

``run(cfg, run_dir)`` is a plain function of the composed config (Hydra stays in cli.py), so
tests and notebooks call it directly. Whatever happens, ``summary.json`` is written atomically
with status ``completed``, ``dry_run`` or ``failed`` (plus a one-line ``error``).
"""
from __future__ import annotations

import math
import random
import time
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from . import summary as sm
from .data import Data, build_data
from .errors import TrainingFailed, UserError, one_line
from .flops import LayerTable, trace_layers
from .ift import build_ift_model, describe_ift
from .isoflop import IsoFlopResult, isoflop_sparsity
from .loggers import Loggers, MetricsFile, WandbMirror
from .models import build_model
from .optim import build_optimizer, lr_schedule
from .sparsity import SetupContext, SparsityMethod, build_method, select_sparse
from .sparsity.backend import BACKENDS, apply_backend
from .train import Interrupted, Trainer, TrainSetup
from .fsio import atomic_write_text
from .resume import resume_trainer
from .runconfig import dense_conflict, trajectory_config
from .rundir import owned, write_summary

FINGERPRINT_KEYS = ("model.name", "dataset.name", "method.name", "ift.name", "s", "seed",
                    "distribution.name", "trainer.batch_size", "trainer.epochs")


def validate(cfg: DictConfig) -> None:
    """Checks that need no data or model; each failure is one line naming the fix."""
    s = cfg.s
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not 0.0 <= float(s) < 1.0:
        raise UserError(f"s={s} is outside [0, 1): s is the fraction of zero weights, e.g. s=0.9")
    for key in ("epochs", "batch_size", "grad_accum", "log_every"):
        value = cfg.trainer[key]
        if not isinstance(value, int) or value < 1:
            raise UserError(f"trainer.{key}={value} must be a positive integer")
    if not isinstance(cfg.seed, int):
        raise UserError(f"seed={cfg.seed} must be an integer")
    if cfg.sparse.backend not in BACKENDS:
        raise UserError(f"sparse.backend={cfg.sparse.backend} is unknown; valid: "
                        f"{', '.join(BACKENDS)}")


AUTO_SPARSE_METHOD = "rigl"  # the Sparse-IFT paper trains every IFT member with RigL


def resolve_method(cfg: DictConfig) -> DictConfig:
    """``method=auto`` (the default): dense when s == 0 and ift=none, else RigL with its defaults."""
    if cfg.method.name != "auto":
        return cfg
    s = cfg.s if isinstance(cfg.s, (int, float)) else 0.0
    name = "dense" if s == 0 and cfg.ift.name == "none" else AUTO_SPARSE_METHOD
    chosen = OmegaConf.load(str(resources.files("sparse_runner.conf") / "method" / f"{name}.yaml"))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.method = chosen
    return cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"run.device={name} but no CUDA device is available; use run.device=cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    return {k: OmegaConf.select(cfg, k) for k in FINGERPRINT_KEYS}


class Run:
    """One run; attributes fill in stage by stage so a failure can still report what is known."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.t0 = time.perf_counter()
        self.device = torch.device("cpu")
        self.data: Data | None = None
        self.method: SparsityMethod | None = None
        self.model: torch.nn.Module | None = None
        self.table: LayerTable | None = None
        self.baseline: LayerTable | None = None
        self.sparse: list[str] = []
        self.iso: IsoFlopResult | None = None
        self.s_eff = float(cfg.s) if isinstance(cfg.s, (int, float)) else 0.0
        self.steps_per_epoch = 0
        self.trainer: Trainer | None = None
        self.wandb_id: str | None = None

    # ---- stages -------------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.cfg
        validate(cfg)
        self.device = resolve_device(str(cfg.run.device))
        t = cfg.trainer
        self.data = build_data(cfg.dataset, batch_size=t.batch_size, eval_batch_size=t.eval_batch_size,
                               seed=cfg.seed, device=self.device, num_workers=t.num_workers)
        self.method = build_method(cfg.method)
        s = float(cfg.s)
        if not self.method.sparse and (s > 0 or cfg.ift.name != "none"):
            raise UserError(dense_conflict(s, str(cfg.ift.name)))
        if self.method.sparse and s == 0:
            raise UserError(f"method={cfg.method.name} needs a sparsity s > 0, e.g. s=0.9 "
                            "(s=0 is dense training: method=dense)")
        spec = self.data.spec
        shape = (spec.in_channels, spec.image_size, spec.image_size)

        def build(width_mult: float) -> torch.nn.Module:
            return build_model(cfg.model, in_channels=spec.in_channels, num_classes=spec.num_classes,
                               image_size=spec.image_size, width_mult=width_mult)

        with torch.device("meta"):
            self.baseline = trace_layers(build(1.0), shape)
        seed_everything(int(cfg.seed))
        self.model = build_ift_model(cfg.ift, s, build, shape)
        self.table = trace_layers(self.model, shape)
        if self.method.sparse:
            self.sparse = select_sparse(self.model, self.table, cfg.sparse.dense)
            if not self.sparse:
                raise UserError("no layer is left to sparsify after sparse.dense; keep fewer "
                                "layers dense")
        self.model.to(self.device)
        t = cfg.trainer
        self.steps_per_epoch = len(self.data.train) // t.grad_accum
        if self.steps_per_epoch < 1:
            raise UserError(f"the training set ({self.data.num_train} samples) is smaller than one "
                            f"step of {t.batch_size * t.grad_accum}; lower trainer.batch_size")
        self.method.prepare(self.model, self.context(t.epochs * self.steps_per_epoch))
        self._search_isoflop()

    def _extra_dense(self) -> int:
        if not self.cfg.sparse.respread:
            return 0
        return sum(layer.numel for layer in self.table if layer.name not in set(self.sparse))

    def _search_isoflop(self) -> None:
        cfg, method = self.cfg, self.method
        if (not method.sparse or not method.isoflop_search or cfg.ift.name == "none"
                or not cfg.sparse.isoflop):
            return
        dist, extra = cfg.distribution, self._extra_dense()
        self.iso = isoflop_sparsity(
            lambda x: method.mean_fwd_flops(self.table, self.sparse, x, dist, extra),
            target=float(self.baseline.dense_fwd()),
        )
        self.s_eff = self.iso.sparsity

    def context(self, total_steps: int) -> SetupContext:
        data = self.data
        return SetupContext(
            table=self.table, sparse=self.sparse, s=self.s_eff, total_steps=total_steps,
            seed=int(self.cfg.seed), distribution=self.cfg.distribution,
            extra_dense=self._extra_dense(), batches=lambda: data.train.batches(10**6),
            loss_fn=torch.nn.functional.cross_entropy, device=self.device,
        )

    def setup_training(self) -> None:
        cfg, t = self.cfg, self.cfg.trainer
        data, model = self.data, self.model
        channels_last = _auto(t.channels_last, self.device.type == "cuda")
        if channels_last:
            model.to(memory_format=torch.channels_last)
        steps_per_epoch = self.steps_per_epoch
        total = t.epochs * steps_per_epoch
        ctx = self.context(total)
        self.method.setup(model, ctx)
        optimizer = build_optimizer(cfg.optimizer, model)
        self.method.attach_optimizer(optimizer)
        apply_backend(str(cfg.sparse.backend), model, self.method)
        lr_at = lr_schedule(cfg.schedule, float(cfg.optimizer.lr), steps_per_epoch, total)
        forward = torch.compile(model) if t.compile else model
        setup = TrainSetup(
            epochs=t.epochs, steps_per_epoch=steps_per_epoch, grad_accum=t.grad_accum,
            device=self.device, amp_dtype=_amp_dtype(str(t.precision), self.device),
            channels_last=channels_last, label_smoothing=float(t.label_smoothing),
            log_every=t.log_every, stop_after_steps=t.stop_after_steps,
            progress=None if t.progress == "auto" else bool(t.progress),
            checkpoint_dir=self.run_dir / "checkpoints",
            extra={"fingerprint": fingerprint(cfg), "config": trajectory_config(cfg),
                   "s_effective": self.s_eff},
        )
        self.trainer = Trainer(model, data, self.method, optimizer, lr_at, self.table, setup,
                               Loggers(MetricsFile(self.run_dir / "metrics.jsonl")), forward)

    def resume_if_asked(self) -> None:
        payload = resume_trainer(self.trainer, self.cfg, self.run_dir)
        self.wandb_id = payload.get("wandb_id") if payload else None

    def attach_wandb(self) -> None:
        if self.cfg.logger.name != "wandb":
            return
        mirror = WandbMirror(self.cfg.logger, self.run_dir,
                             OmegaConf.to_container(self.cfg, resolve=True), self.wandb_id)
        self.trainer.loggers.mirrors.append(mirror)
        self.trainer.setup.extra["wandb_id"] = mirror.run_id

    # ---- reporting ----------------------------------------------------------------------------
    def summary(self, status: str, error: str | None = None) -> dict[str, Any]:
        cfg = self.cfg
        out: dict[str, Any] = {"status": status}
        if error:
            out["error"] = error
        out["method"] = str(cfg.method.name)
        out["dataset"] = str(cfg.dataset.name)
        if self.data is not None and self.data.notes:
            out["data_notes"] = list(self.data.notes)
        out["seed"] = int(cfg.seed) if isinstance(cfg.seed, int) else cfg.seed
        if self.table is not None and self.model is not None:
            density = self.method.density() if self.method is not None else {}
            rows = sm.layer_rows(self.table, density, self.sparse)
            total, nonzero = sm.params(self.model, rows)
            out["model"] = {"name": str(cfg.model.name), "ift": str(cfg.ift.name),
                            "params_total": total, "params_nonzero": nonzero,
                            "ift_info": describe_ift(cfg.ift, float(cfg.s), self.model)}
            out["sparsity"] = sm.sparsity_section(float(cfg.s), self.s_eff, rows)
            out["sparsity"]["distribution"] = str(cfg.distribution.name)
            backend = getattr(self.method, "backend", None)
            out["sparsity"]["backend"] = {"name": str(cfg.sparse.backend),
                                          "condensed_layers": backend.names() if backend else []}
            out["flops"] = {
                "dense_baseline_fwd": self.baseline.dense_fwd(),
                "model_dense_fwd": self.table.dense_fwd(),
                "sparse_fwd": self.table.sparse_fwd(density),
                "train_total": self.trainer.state.train_flops if self.trainer else 0.0,
            }
            if self.iso is not None:
                out["isoflop"] = {"target_fwd": self.iso.target, "found_fwd": self.iso.flops,
                                  "rel_error": self.iso.rel_error, "iterations": self.iso.iterations}
        if self.trainer is not None and self.trainer.state.epoch_s:
            st = self.trainer.state
            out["metrics"] = {"test_acc1": st.last_eval.get("acc1"), "test_acc5": st.last_eval.get("acc5"),
                              "best_test_acc1": st.best_acc1, "train_loss": st.last_train_loss,
                              "test_loss": st.last_eval.get("loss"), "steps": st.step}
            out["time"] = {"train_s": st.train_s, "per_epoch_s": st.train_s / len(st.epoch_s)}
        out.setdefault("time", {})["wall_s"] = time.perf_counter() - self.t0
        out["device"] = sm.device_name(self.device)
        out["versions"] = sm.versions()
        out["run_dir"] = str(self.run_dir)
        return out

    def dry_run(self) -> dict[str, Any]:
        rows = sm.layer_rows(self.table, self.method.density(), self.sparse, baseline=self.baseline)
        atomic_write_text(self.run_dir / "layers.csv", sm.layer_table_csv(rows))
        print(sm.layer_table_text(rows))
        if self.iso is not None:
            print(f"Iso-FLOP: s={self.cfg.s} -> effective sparsity {self.iso.sparsity:.6f}; sparse "
                  f"fwd {self.iso.flops:.6g} vs dense baseline {self.iso.target:.6g} FLOPs "
                  f"(rel. error {self.iso.rel_error:.2e})")
        return self.summary("dry_run")


def _auto(value: Any, default: bool) -> bool:
    return default if value == "auto" else bool(value)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("trainer.precision=fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision == "fp32":
        return None
    raise UserError(f"trainer.precision={precision!r}; valid: auto, fp32, bf16, fp16")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Execute one configured run in ``run_dir``; returns the summary that was written.

    The directory is owned first (:mod:`rundir`): a busy directory or one holding another run
    is refused before anything is written, and a completed identical run is left untouched
    (its summary is returned). User errors, NaN losses and interruptions still write a
    ``failed`` summary and are then re-raised for the CLI to turn into an exit code; bugs keep
    their traceback.
    """
    cfg = resolve_method(cfg)
    with owned(cfg, Path(run_dir)) as own:
        if own.done is not None:
            print(f"{own.path} already holds this run, completed; nothing to do")
            return own.done
        return _execute(Run(cfg, own.path))


def _execute(r: Run) -> dict[str, Any]:
    cfg = r.cfg
    status, error, raised = "completed", None, None
    try:
        r.build()
        if cfg.run.dry_run:
            r.method.setup(r.model, r.context(r.cfg.trainer.epochs * r.steps_per_epoch))
            out = r.dry_run()
            sm.write(r.run_dir, out)
            return out
        r.setup_training()
        r.resume_if_asked()
        r.attach_wandb()
        r.trainer.fit()
    except Interrupted as exc:
        status, error, raised = "failed", f"interrupted ({exc}); resume with resume={r.run_dir}", exc
    except (UserError, TrainingFailed) as exc:
        status, error, raised = "failed", one_line(exc), exc
    except KeyboardInterrupt as exc:
        status, error, raised = "failed", "interrupted by the user (Ctrl-C)", exc
    except Exception as exc:  # a bug: still leave a failed summary, keep the traceback
        status, error, raised = "failed", f"{type(exc).__name__}: {one_line(exc)}", exc
    out = r.summary(status, error)
    write_summary(r.run_dir, out, failing=raised is not None)
    if r.trainer is not None:
        r.trainer.loggers.close(_flat(out))
    if r.model is not None:  # a run that never got a model: the one-line error says it all
        print(sm.result_text(out))
    if raised is not None:
        raise raised
    return out


def _flat(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, Mapping):
            flat.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str)) and not (isinstance(v, float) and math.isnan(v)):
            flat[f"{prefix}{k}"] = v
    return flat
