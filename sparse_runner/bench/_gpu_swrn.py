"""gpu_check stage swrn: the Sparse Wide ResNet-18 (s=0.9, RigL) through the Triton sparse
convolutions, whole training steps.

Correctness: two training steps (TrainStep: forward, backward, masking, SGD) of the model
with ``sparse.backend=condensed`` and every supported layer on the kernels (no dense fallback
chosen), on the GPU in fp32 (TF32 off), against the same two steps of the masked backend in
float64 on the CPU (same seed: same weights, masks and batch); the dense weights after the
steps must agree to fp32 rounding. Timing: the training step of that model on the GPU
(condensed) against dense ResNet-18 through cuDNN, CUDA-event medians at CIFAR batch 128.
"""
from __future__ import annotations

import argparse
import warnings
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ._gpu_stage import Check

S, CHECK_BATCH, TIME_BATCH, TIME_STEPS = 0.9, 4, 128, 6
OPT = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def plan(s: float, backend: str, device: str, width: int = 64, batch: int = CHECK_BATCH):
    """The set-up run ``sparse-run dataset=synthetic ift=wide s=<s> method=rigl`` would train
    (dense ResNet-18 at s=0), on ``device``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ..plan import RunPlan, build_plan, requested_sparsity

    GlobalHydra.instance().clear()
    overrides = ["dataset=synthetic", "dataset.shape=[3,32,32]", f"s={s}",
                 f"ift={'wide' if s else 'none'}", f"method={'rigl' if s else 'dense'}",
                 f"model.base_width={width}", f"trainer.batch_size={batch}",
                 f"sparse.backend={backend}", f"dataset.num_samples={4 * batch}",
                 f"run.device={device}", "seed=0"]
    with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    p = build_plan(RunPlan(cfg=cfg, s=requested_sparsity(cfg)))
    with warnings.catch_warnings():   # "no mask update will happen": none is wanted here
        warnings.simplefilter("ignore", UserWarning)
        p.method.setup(p.model, p.context())
    return p


def stepper(p, dtype: torch.dtype = torch.float32) -> Callable[[int, tuple], None]:
    """``one(step, batch)``: a TrainStep of the plan's model (every supported layer on the
    kernels: no timed per-layer choice)."""
    from ..optim import build_optimizer
    from ..sparsity.backend import apply_backend
    from ..step import TrainStep

    p.model.to(dtype)
    optimizer = build_optimizer(OPT, p.model)
    p.method.attach_optimizer(optimizer)
    apply_backend(str(p.cfg.sparse.backend), p.model, p.method)
    train_step = TrainStep(p.model, p.method, optimizer, F.cross_entropy)
    return lambda step, b: train_step(step, iter([b]))


def batch(n: int, device: str, dtype: torch.dtype, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g, dtype=torch.float64)
    return x.to(device, dtype), torch.randint(0, 10, (n,), generator=g).to(device)


def two_steps(device: str, dtype: torch.dtype, backend: str, width: int) -> dict:
    """Dense weights (by name) after two training steps from the same seed."""
    from ..sparsity.condensed_params import dense_weights

    p = plan(S, backend, device, width)
    one = stepper(p, dtype)
    for step in range(2):   # RigL's first mask update is at delta_t: none here
        one(step, batch(CHECK_BATCH, device, dtype, seed=step))
    return {n: w.detach().double().cpu() for n, w in dense_weights(p.model).items()}


def correctness(device: str = "cuda", width: int = 64, stage: str = "swrn") -> Check:
    """Condensed kernels on ``device`` (fp32) vs masked float64 on the CPU, two steps."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        got = two_steps(device, torch.float32, "condensed", width)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    want = two_steps("cpu", torch.float64, "masked", width)
    worst, where = 0.0, ""
    for name, w in want.items():
        err = float((got[name] - w).abs().max()) / max(float(w.abs().max()), 1e-12)
        if err > worst:
            worst, where = err, name
    ok = got.keys() == want.keys() and worst < 1e-4
    return Check(stage, "two steps vs float64", "ok" if ok else "fail", worst, "",
                 f"max relative error of the weights, at {where}; batch {CHECK_BATCH}")


def step_time(device: str = "cuda") -> Iterator[Check]:
    """Training-step medians: Sparse Wide condensed (Triton) vs dense ResNet-18 (cuDNN)."""
    from ._gpu_timing import cuda_time

    b = batch(TIME_BATCH, device, torch.float32)
    ms = {}
    for name, s, backend in (("dense cuDNN", 0.0, "masked"), ("wide condensed", S, "condensed")):
        one = stepper(plan(s, backend, device, batch=TIME_BATCH))
        counter = iter(range(1, 10_000))    # no mask update in the timed steps
        ms[name] = cuda_time(lambda: one(next(counter), b), [()], reps=TIME_STEPS, warmup=2)
        yield Check("swrn", f"step {name}", "info", round(ms[name], 2), " ms",
                    f"batch {TIME_BATCH}, SGD, fp32")
    yield Check("swrn", "wide condensed / dense step", "info",
                round(ms["wide condensed"] / ms["dense cuDNN"], 3), "x", f"s={S}, Iso-FLOP")


def swrn(args: argparse.Namespace) -> Iterator[Check]:
    yield correctness()
    yield from step_time()
