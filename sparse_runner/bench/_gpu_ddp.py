"""gpu_check stage ddp (only when more than one GPU is visible): one ``torchrun`` data-parallel
run over every GPU, nccl, SyncBatchNorm, RigL with mask updates and gradient accumulation
(DDP ``no_sync``), checked from its summary.json: completed, the world size, and every rank's
mask hash equal after the last update.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from ._gpu_stage import Check

RUN_TIMEOUT_S = 26   # inside the stage's 30 s
STEPS, BATCH = 40, 128


def command(nproc: int, out_dir: Path) -> list[str]:
    """``torchrun --standalone --nproc_per_node=<nproc> -m sparse_runner ...``."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "sparse_runner", "method=rigl", "s=0.9",
            "method.delta_t=10", "dataset=synthetic", "dataset.shape=[3,32,32]",
            "dataset.num_classes=10", f"dataset.num_samples={STEPS * BATCH * nproc}",
            "dataset.num_test_samples=512", "trainer.epochs=1", f"trainer.batch_size={BATCH}",
            "trainer.grad_accum=2", "trainer.sync_bn=true", "trainer.progress=false",
            "distributed.backend=nccl", "run.device=cuda", "logger=local", "resume=never",
            f"out_dir={out_dir}"]


def verdict(summary: dict, nproc: int) -> tuple[str, str]:
    """(status, detail) of a finished run's summary.json."""
    dist = summary.get("distributed") or {}
    hashes = dist.get("mask_hashes") or []
    if summary.get("status") != "completed":
        return "fail", f"status {summary.get('status')}: {summary.get('error', '')}"[:200]
    if dist.get("world_size") != nproc or len(hashes) != nproc:
        return "fail", f"world_size {dist.get('world_size')}, {len(hashes)} mask hashes"
    if len(set(hashes)) != 1:
        return "fail", f"ranks hold different masks: {hashes}"
    return "ok", f"{nproc} ranks, nccl, SyncBatchNorm, no_sync x2, masks agree"


def ddp(args: argparse.Namespace) -> Iterator[Check]:
    nproc = int(args.nproc)
    run_dir = args.out / "ddp_run"
    try:
        r = subprocess.run(command(nproc, run_dir), capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        yield Check("ddp", "torchrun", "timeout", float(RUN_TIMEOUT_S), " s")
        return
    summary_file = run_dir / "summary.json"
    if r.returncode != 0 or not summary_file.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
        yield Check("ddp", "torchrun", "fail", detail=f"exit {r.returncode}: {tail[0][:200]}")
        return
    status, detail = verdict(json.loads(summary_file.read_text()), nproc)
    yield Check("ddp", "torchrun", status, nproc, " GPUs", detail)
