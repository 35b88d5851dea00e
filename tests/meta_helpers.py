"""Every method's real training step on the CPU and on the ``meta`` device (tests/test_meta_step.py).

A run is set up on the CPU (masks, pruning-at-init scores, the condensed backend's indices),
then either trained there under :class:`HostReads` (a dispatch mode that counts the ops that
read device data on the host) or moved, model, method state and optimizer, to ``meta`` by
:func:`to_meta` and trained there: a meta tensor has no data, so any ``.item()``, ``bool()``,
``.tolist()``, ``nonzero`` or CPU tensor mixed into its math raises. The explicit host reads of
``sparse_runner.sparsity.host`` are recorded on the CPU run and replayed on the meta run (the
same values in the same order, checked by their reason), so both runs take the same path
across the mask updates.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sparse_runner.flops.tables import trace_layers
from sparse_runner.methods import build_method
from sparse_runner.optim import build_optimizer
from sparse_runner.precision import Precision
from sparse_runner.sparsity import SetupContext, host
from sparse_runner.sparsity.backend import apply_backend
from sparse_runner.step import TrainStep

SPARSE = ["c1.weight", "c2.weight", "fc.weight"]
SHAPE, CLASSES, BATCH, STEPS = (4, 8, 8), 8, 4, 10
aten = torch.ops.aten
# ops whose result the host must wait for (a sync on a GPU): reads and data-dependent shapes
HOST_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default,
            aten.item.default, aten.equal.default, aten.masked_select.default,
            aten._unique2.default, aten.unique_consecutive.default, aten.unique_dim.default,
            aten.repeat_interleave.Tensor}
# per method: options that make several mask updates happen in STEPS optimizer steps
OPTIONS: dict[str, dict[str, Any]] = {
    "dense": {}, "static": {}, "snip": {}, "grasp": {"samples_per_class": 1, "max_batches": 4},
    "force": {"num_steps": 3}, "set": {"delta_t": 2}, "rigl": {"delta_t": 2},
    "srigl": {"delta_t": 2}, "granet": {"delta_t": 2, "prune_end": 0.6},
    "nm": {"m": 4, "update_every": 2}, "l0": {"report_every": 3, "harden_at": 0.8},
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


def batch(i: int, device: str = "cpu") -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    x, y = torch.randn(BATCH, *SHAPE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)
    return x.to(device), y.to(device)


@dataclass
class Config:
    method: str
    backend: str = "masked"
    optimizer: str = "sgd"
    accum: int = 1
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)

    def precision_object(self) -> Precision | None:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        return None if dtype is None else Precision("cpu", dtype)


def build(cfg: Config) -> tuple[nn.Module, Any, torch.optim.Optimizer]:
    """Model, set-up method (backend installed) and optimizer, on the CPU."""
    torch.manual_seed(0)
    model = Net()
    method = build_method({"name": cfg.method, **OPTIONS[cfg.method], **cfg.options})
    data = [batch(-1 - i) for i in range(4)]
    sparse = SPARSE if method.sparse else []
    method.setup(model, SetupContext(table=trace_layers(model, SHAPE), sparse=sparse,
                                     s=0.0 if not method.sparse else 0.5, total_steps=STEPS,
                                     seed=0, batches=lambda: iter(data),
                                     loss_fn=nn.functional.cross_entropy))
    opt = build_optimizer({"name": cfg.optimizer, "lr": 0.01, "weight_decay": 1e-4}, model)
    method.attach_optimizer(opt)
    apply_backend(cfg.backend, model, method)
    if method.masks is not None:   # counted again at the first read: same on CPU and meta
        method.masks._nnz = [None] * len(method.masks)   # noqa: SLF001
    return model, method, opt


# ---------------------------------------------------------------- moving a set-up run to meta
def to_meta(*roots: Any) -> None:
    """Every tensor reachable from ``roots`` (modules, the method's objects, optimizers) replaced
    in place by a meta tensor; one tensor object maps to one meta tensor (shared references
    stay shared, a Parameter stays a Parameter with its attributes)."""
    memo: dict[int, Any] = {}
    for root in roots:
        _walk(root, memo)


def _meta(t: Tensor, memo: dict[int, Any]) -> Tensor:
    if id(t) not in memo:
        new = t.detach().to("meta")
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
            new.__dict__.update(t.__dict__)
        elif t.requires_grad:
            new.requires_grad_(True)
        memo[id(t)] = new
    return memo[id(t)]


def _convert(v: Any, memo: dict[int, Any]) -> Any:
    if isinstance(v, Tensor):
        return _meta(v, memo)
    _walk(v, memo)
    return v


def _walk(obj: Any, memo: dict[int, Any]) -> None:
    if id(obj) in memo or obj is None or isinstance(obj, (str, int, float, bool, type)):
        return
    memo[id(obj)] = obj
    if isinstance(obj, list):
        obj[:] = [_convert(v, memo) for v in obj]
    elif isinstance(obj, dict):
        for k, v in list(obj.items()):
            obj[k] = _convert(v, memo)
    elif isinstance(obj, tuple):
        for v in obj:
            _walk(v, memo)
    elif isinstance(obj, torch.optim.Optimizer):
        assert not obj.state, "to_meta moves optimizers before their first step"
        for group in obj.param_groups:
            group["params"] = [_meta(p, memo) for p in group["params"]]
            group["fused"] = False if group.get("fused") else group.get("fused")
        obj.defaults["fused"] = False
        obj._step_supports_amp_scaling = False   # noqa: SLF001 (unfused on meta)
    elif isinstance(obj, nn.Module):
        for store in (obj._parameters, obj._buffers):  # noqa: SLF001
            for k, v in store.items():
                store[k] = None if v is None else _meta(v, memo)
        for k, v in list(vars(obj).items()):
            if not k.startswith("_") or k == "_condensed":
                _set(obj, k, v, memo)
        for m in obj._modules.values():  # noqa: SLF001
            _walk(m, memo)
    elif type(obj).__module__.startswith("sparse_runner") and hasattr(obj, "__dict__"):
        for k, v in list(vars(obj).items()):
            _set(obj, k, v, memo)


def _set(obj: Any, key: str, value: Any, memo: dict[int, Any]) -> None:
    new = _convert(value, memo)
    if new is not value:
        object.__setattr__(obj, key, new)


# ---------------------------------------------------------------- counting and replaying reads
class HostReads(TorchDispatchMode):
    """Counts :data:`HOST_OPS` and indexing by bool masks (an implicit nonzero) outside the
    explicit reads of sparsity/host.py."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside and (func in HOST_OPS or _bool_index(func, args)):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _bool_index(func: Any, args: tuple) -> bool:
    if func not in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default):
        return False
    return any(isinstance(t, Tensor) and t.dtype == torch.bool for t in tree_leaves(args[1]))


@dataclass
class Record:
    """The explicit host reads of a CPU run: (step, reason, value or index shape)."""

    reads: list[tuple[int, str, Any]] = field(default_factory=list)
    step: int = -1


@contextlib.contextmanager
def recording(rec: Record, mode: HostReads) -> Iterator[None]:
    """sparsity.host's reads run (uncounted by ``mode``) and are recorded in ``rec``."""
    read, nonzero = host.read, host.nonzero

    def rec_read(t: Tensor, why: str) -> Any:
        mode.inside += 1
        try:
            value = read(t, why)
        finally:
            mode.inside -= 1
        rec.reads.append((rec.step, why, value))
        return value

    def rec_nonzero(t: Tensor, why: str) -> Tensor:
        mode.inside += 1
        try:
            out = nonzero(t, why)
        finally:
            mode.inside -= 1
        rec.reads.append((rec.step, why, tuple(out.shape)))
        return out

    host.read, host.nonzero = rec_read, rec_nonzero
    try:
        yield
    finally:
        host.read, host.nonzero = read, nonzero


@contextlib.contextmanager
def replaying(rec: Record, fp16_unfused: list[int]) -> Iterator[None]:
    """sparsity.host's reads answer with the CPU run's values, in order, reason checked; the
    GradScaler's inf check of an unfused optimizer (fused ones, which the runner builds on
    cpu/cuda, hand the flag to the kernel) is counted in ``fp16_unfused`` and steps."""
    read, nonzero, opt_step = host.read, host.nonzero, torch.amp.GradScaler._maybe_opt_step
    queue = list(rec.reads)

    def next_read(why: str) -> Any:
        assert queue, f"meta run made a host read the CPU run did not: {why}"
        step, want, value = queue.pop(0)
        assert (want, step) == (why, rec.step), f"host reads diverged: {why} at {rec.step}"
        return value

    def meta_nonzero(t: Tensor, why: str) -> Tensor:
        return torch.empty(next_read(why), dtype=torch.long, device=t.device)

    def maybe_opt_step(self, optimizer, optimizer_state, *args, **kwargs):
        fp16_unfused.append(rec.step)
        return optimizer.step(*args, **kwargs)

    host.read, host.nonzero = (lambda t, why: next_read(why)), meta_nonzero
    torch.amp.GradScaler._maybe_opt_step = maybe_opt_step
    try:
        yield
        assert not queue, f"meta run skipped host reads: {queue[:3]}"
    finally:
        host.read, host.nonzero = read, nonzero
        torch.amp.GradScaler._maybe_opt_step = opt_step


def run_steps(cfg: Config, model: nn.Module, method: Any, opt: torch.optim.Optimizer,
              rec: Record, device: str, mode: HostReads | None = None
              ) -> list[tuple[bool, list[str]]]:
    """STEPS optimizer steps through the real TrainStep; per step (mask event?, host ops)."""
    step = TrainStep(model, method, opt, nn.functional.cross_entropy, grad_accum=cfg.accum,
                     precision=cfg.precision_object())
    data = (batch(i, device) for i in range(STEPS * cfg.accum))
    out = []
    for i in range(STEPS):
        rec.step = i
        if mode is not None:
            mode.seen.clear()
        result = step(i, data)
        assert result.loss_sum.device.type == device
        out.append((result.event is not None, list(mode.seen) if mode is not None else []))
    return out
