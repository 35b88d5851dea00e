"""Record a table preset's sweep as a benchmark result: the commands, the paper-layout cells
(ours mean/std/n beside the published numbers), the mean spectral metrics per cell and their
Spearman correlation with accuracy, the machine and versions.

    python scripts/record_table.py <sweep dir> --name table2_digits \
        --command "sparse-run -m experiment=sift_table2 ..." --note "what it shows and cannot"

writes ``benchmarks/results/<name>_<date>.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
from pathlib import Path

from sparse_runner.utils.environment import versions
from sparse_runner.report import detect_presets
from sparse_runner.report.claims import evaluate, load_claims
from sparse_runner.report.runs import find_runs
from sparse_runner.report.spectral import correlations, points
from sparse_runner.report.tables import build_table, load_published


def cells(table) -> list[dict]:
    out = []
    for row in table.rows:
        for col, cell in row.cells.items():
            if not (cell.n or cell.failed):
                continue
            out.append({"row": row.key, "s": col, "n": cell.n, "failed": cell.failed,
                        "acc_mean": cell.mean, "acc_std": cell.std if cell.n > 1 else None,
                        "accs": cell.accs, "paper": list(cell.paper) if cell.paper else None,
                        "train_flops": statistics.fmean(cell.flops) if cell.flops else None})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("sweep", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--command", action="append", default=[])
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--wall-s", type=float)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    runs = find_runs(args.sweep)
    (preset,) = detect_presets(runs)[:1]
    table = build_table([r for r in runs if r.coord("name") == preset], load_published(preset))
    pts = points(runs)
    date = datetime.date.today().isoformat()
    result = {
        "benchmark": args.name, "date": date, "preset": preset, "commands": args.command,
        "wall_s": args.wall_s, "cells": cells(table), "notes": args.note,
        "claims": [evaluate(table, c) for c in load_claims(table.published.info)],
        "spectral": {"points": pts, "spearman": correlations(pts)},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "versions": versions(),
    }
    path = args.out / f"{args.name}_{date}.json"
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(path)


if __name__ == "__main__":
    main()
