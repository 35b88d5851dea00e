"""The mixed-precision policy of a training step (``trainer.precision``).

One object answers the three questions a step asks: which autocast context the forward runs
in, how the loss is backpropagated, and how the optimizer steps. fp16 has a narrow exponent
range, so its gradients underflow to zero without loss scaling: it gets a
``torch.amp.GradScaler`` (scaled backward, unscale, skip the step on inf/NaN, adapt the scale);
bf16 and fp32 need none and the scaler is a disabled no-op. With the fused optimizers of
optim.py the scaler hands its scale and inf flag to the optimizer kernel, so a skipped-step
check costs no host sync; with an unfused optimizer ``GradScaler.step`` reads the flag (one
sync per step, fp16 only).

Methods that read dense gradients (RigL/SRigL/GraNet growth scores) get them unscaled: on
those steps the training step calls :meth:`unscale_` (and :meth:`inv_scale` for the dense
views the optimizer does not hold) before the method's ``before_optimizer_step``; entries an
overflow made inf/NaN count as zero in the growth scores (``DynamicSparse._accumulate``).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

from .utils.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of ``trainer.precision`` on ``device`` (None: no autocast, fp32)."""
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
    raise UserError(f"trainer.precision={precision!r}; valid: {', '.join(PRECISIONS)}")


class Precision:
    """Autocast + (fp16 only) gradient scaling for one device type."""

    def __init__(self, device_type: str, dtype: torch.dtype | None) -> None:
        self.device_type, self.dtype = device_type, dtype
        self.scaler = torch.amp.GradScaler(device_type, enabled=dtype == torch.float16)

    @classmethod
    def from_config(cls, precision: str, device: torch.device) -> Precision:
        return cls(device.type, amp_dtype(precision, device))

    @property
    def scaling(self) -> bool:
        """Whether losses are scaled (fp16)."""
        return self.scaler.is_enabled()

    def autocast(self) -> ContextManager[Any]:
        """The context the forward and the loss run in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled under fp16 (gradients accumulate scaled)."""
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the scale now (before clipping or reading them); once per
        step, before :meth:`step`."""
        if self.scaling:
            self.scaler.unscale_(optimizer)

    def inv_scale(self) -> torch.Tensor | None:
        """1/scale as a device tensor (no host read; ``GradScaler.get_scale`` would sync);
        None when not scaling or before the first scaled backward."""
        scale = getattr(self.scaler, "_scale", None)   # private, read-only: see the docstring
        if not self.scaling or scale is None:
            return None
        return scale.double().reciprocal().float()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; under fp16 skipped when a gradient is inf/NaN, then the scale
        adapts (halved after a skip, doubled after 2000 clean steps)."""
        if not self.scaling:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (scale, growth tracker) for checkpoints; empty when disabled."""
        return self.scaler.state_dict() if self.scaling else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaling and state:
            self.scaler.load_state_dict(state)
