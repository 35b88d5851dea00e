"""``sparse-run-bench isoflop``: wall time of the Iso-FLOP search (target: < 1 s for ResNet-18).

    sparse-run-bench isoflop [--model resnet18] [--dataset cifar100] [--s 0.5 0.75 0.9]
                             [--distributions uniform erk] [--methods static] [--repeats 5]
                             [--out benchmarks/results/isoflop_cpu_<date>.json]

For every member x distribution x s (x method), the search the run performs before training is
timed ``--repeats`` times; the median is reported with the effective sparsity, the iteration
count and the relative FLOP error. Models are built on the meta device and excluded from the
timing: only the search (layer shapes + distribution -> sparsity) is measured. Methods whose
FLOPs vary over training (e.g. GraNet) can be added with ``--methods`` once registered.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ..outputs.checkpoint import atomic_write_json
from ..ift.survey import MEMBERS, PAPER_S, Survey, search
from ..methods import build_method
from ..summary import versions


def machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_avg_1m": os.getloadavg()[0]}


def measure(survey: Survey, member: str, s: float, distribution: str, method: str,
            repeats: int) -> dict[str, Any]:
    m = survey.member(member, s)
    target = float(survey.baseline.dense_fwd())
    meth, dist = build_method({"name": method}), {"name": distribution}
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = search(m, target, meth, dist)
        times.append(time.perf_counter() - t0)
    return {"ift": member, "s": s, "distribution": distribution, "method": method,
            "layers": len(m.table), "sparse_layers": len(m.sparse),
            "median_s": statistics.median(times), "min_s": min(times),
            "s_effective": result.sparsity, "rel_error": result.rel_error,
            "iterations": result.iterations}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparse-run-bench isoflop",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--dataset", default="cifar100")
    parser.add_argument("--s", type=float, nargs="+", default=list(PAPER_S))
    parser.add_argument("--members", nargs="+", default=list(MEMBERS), choices=list(MEMBERS))
    parser.add_argument("--distributions", nargs="+", default=["uniform", "erk"])
    parser.add_argument("--methods", nargs="+", default=["static"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    survey = Survey.for_dataset(args.model, args.dataset)
    results = []
    print(f"{'ift':<11}{'dist':<9}{'method':<8}{'s':>6}{'sparse L':>9}{'median ms':>11}"
          f"{'s_eff':>10}{'rel.err':>10}{'iters':>7}")
    for member in args.members:
        for dist in args.distributions:
            for method in args.methods:
                for s in args.s:
                    r = measure(survey, member, s, dist, method, args.repeats)
                    results.append(r)
                    print(f"{member:<11}{dist:<9}{method:<8}{s:>6}{r['sparse_layers']:>9}"
                          f"{r['median_s'] * 1e3:>11.2f}{r['s_effective']:>10.5f}"
                          f"{r['rel_error']:>10.1e}{r['iterations']:>7}")
    worst = max(r["median_s"] for r in results)
    print(f"slowest median: {worst * 1e3:.1f} ms (target < 1000 ms); "
          f"largest rel. error {max(r['rel_error'] for r in results):.1e}")
    if args.out:
        atomic_write_json(args.out, {
            "benchmark": "isoflop", "date": dt.datetime.now().isoformat(timespec="seconds"),
            "model": args.model, "dataset": args.dataset, "repeats": args.repeats,
            "device": "cpu", "machine": machine(), "versions": versions(), "results": results,
        })
        print(f"wrote {args.out}")
    return 0
