"""``sparse-run-report spectral <sweep dir>``: accuracy against each Ramanujan metric.

The Sparse-IFT analysis (section 3.1, appendix B, Figures 3 and 6) relates the final masks'
graph metrics to the final accuracy. For every completed run with a ``spectral`` section in its
summary.json this plots the final test accuracy against the mean over layers of each metric
(delta_r, delta_r_imdb, lambda, lambda_imsg) and prints Spearman's rank correlation with its
p-value (scipy; NaN with fewer than 3 runs or a constant metric). Writes spectral.{md,csv,html}.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any

from ..outputs.checkpoint import atomic_write_bytes
from ..utils.errors import UserError
from ..sparsity.spectral import METRICS
from .runs import Run, find_runs


def points(runs: list[Run]) -> list[dict[str, Any]]:
    """One point per completed run that has final spectral means."""
    out = []
    for r in runs:
        mean = r.summary.get("spectral", {}).get("mean")
        if not r.ok or not isinstance(mean, dict):
            continue
        row = {"run": r.path, "method": r.method, "acc": r.acc}
        for k in METRICS:
            v = mean.get(k)
            row[k] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        out.append(row)
    return out


def spearman(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(rho, p) of Spearman's rank correlation; NaN when undefined."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan, math.nan
    from scipy.stats import spearmanr

    res = spearmanr(xs, ys)
    return float(res.statistic), float(res.pvalue)


def correlations(pts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for k in METRICS:
        pairs = [(p[k], p["acc"]) for p in pts if p[k] is not None]
        rho, pval = spearman([a for a, _ in pairs], [b for _, b in pairs])
        rows.append({"metric": k, "runs": len(pairs), "spearman_rho": rho, "p_value": pval})
    return rows


def figure(pts: list[dict[str, Any]], corr: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6), squeeze=False)
    methods = sorted({str(p["method"]) for p in pts})
    for ax, c in zip(axes[0], corr):
        k = c["metric"]
        for i, m in enumerate(methods):
            sel = [p for p in pts if str(p["method"]) == m and p[k] is not None]
            ax.scatter([p[k] for p in sel], [p["acc"] for p in sel], s=18, color=f"C{i % 10}",
                       label=m)
        ax.set_title(f"{k}: Spearman ρ = {c['spearman_rho']:.2f}", fontsize=9)
        ax.set_xlabel(f"{k} (mean over layers)")
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def markdown(corr: list[dict[str, Any]], n: int) -> str:
    lines = [f"## Accuracy vs spectral metrics ({n} runs)", "",
             "| metric | runs | Spearman ρ | p |", "|---|---|---|---|"]
    lines += [f"| {c['metric']} | {c['runs']} | {c['spearman_rho']:.3f} | {c['p_value']:.3g} |"
              for c in corr]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sparse-run-report spectral", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = p.parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise UserError(f"{args.sweep_dir} is not a directory; give the sweep directory")
    pts = points(find_runs(args.sweep_dir))
    if not pts:
        raise UserError(f"no completed run with a spectral section under {args.sweep_dir}; "
                        "train sparse runs with sparse.spectral=true (the default)")
    corr = correlations(pts)
    text = markdown(corr, len(pts))
    print(text)
    if not args.no_write:
        root = args.sweep_dir
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["run", "method", "acc", *METRICS])
        w.writeheader()
        w.writerows(pts)
        img = base64.b64encode(figure(pts, corr)).decode()
        page = (f"<!doctype html><html><head><meta charset=utf-8><title>spectral</title></head>"
                f"<body><pre>{html.escape(text)}</pre><img alt='accuracy vs metrics' "
                f"src='data:image/png;base64,{img}'></body></html>\n")
        for name, content in (("spectral.md", text + "\n"), ("spectral.csv", buf.getvalue()),
                              ("spectral.html", page)):
            atomic_write_bytes(root / name, lambda f, c=content: f.write(c.encode()))
    return 0
