"""``sparse-run-bench gpu_check <stage> --out DIR``: the Python half of scripts/gpu_check.sh.

GPU time is rare, so one prepared command validates and benchmarks everything in one go.
The shell script runs each stage in its own process under its own timeout; a stage prints
one line per check as it finishes and writes ``DIR/stage_<stage>.json``; ``table`` merges the
stage files into ``DIR/results.json`` (device, versions, date, every check) and prints the
final table (``record`` adds the rows the script knows of: timeouts, sanitizer errors).
Stages: env, build, correct, kernels, sconv, swrn, train, sync, ddp (see their modules:
_gpu_checks.py, _gpu_timing.py, _gpu_sconv.py, _gpu_swrn.py, _gpu_train.py, _gpu_ddp.py;
ddp runs only where more than one GPU is visible). ``correct --small`` (the
Linear kernels' small shapes and four sparse-convolution ones) is what the script runs under
compute-sanitizer.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable

from ._gpu_stage import STATUSES, Check, merge, record, run_stage, table, write_json


def _stages() -> dict[str, Callable[[argparse.Namespace], Iterable[Check]]]:
    from . import _gpu_checks, _gpu_ddp, _gpu_sconv, _gpu_swrn, _gpu_timing, _gpu_train

    return {"env": _gpu_checks.env, "build": _gpu_checks.build, "correct": _gpu_checks.correct,
            "kernels": _gpu_timing.kernels, "sconv": _gpu_sconv.sconv, "swrn": _gpu_swrn.swrn,
            "train": _gpu_train.train, "sync": _gpu_train.sync, "ddp": _gpu_ddp.ddp}


ORDER = ("env", "build", "correct", "sanitizer_memcheck", "sanitizer_racecheck", "kernels",
         "sconv", "swrn", "train", "sync", "ddp")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sparse-run-bench gpu_check", description=__doc__.split(
        "\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=[*_stage_names(), "table", "record"])
    p.add_argument("--out", type=Path, required=True, help="results directory")
    p.add_argument("--small", action="store_true", help="correct: small shapes only")
    p.add_argument("--nproc", type=int, default=2, help="ddp: processes (GPUs) of torchrun")
    p.add_argument("--name", default=None, help="stage file name (default: the stage)")
    p.add_argument("--status", choices=STATUSES, default="fail", help="record: its status")
    p.add_argument("--value", default="", help="record: its value")
    p.add_argument("--detail", default="", help="record: what happened")
    args = p.parse_args(argv)
    if args.stage == "record":
        record(args.name or "unknown", args.status, args.value, args.detail, args.out)
        return 0
    if args.stage == "table":
        results = merge(args.out, ORDER)
        write_json(args.out / "results.json", results)
        for row in table(results):
            print(row)
        return 1 if results["counts"]["fail"] + results["counts"]["timeout"] else 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; run this on a GPU machine",
              file=sys.stderr)
        return 3
    return run_stage(args.name or args.stage, _stages()[args.stage](args), args.out)


def _stage_names() -> tuple[str, ...]:
    return ("env", "build", "correct", "kernels", "sconv", "swrn", "train", "sync", "ddp")


if __name__ == "__main__":
    sys.exit(main())
