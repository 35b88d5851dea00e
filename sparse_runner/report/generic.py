"""The generic sweep report (no table preset): per-run table, mean/std over seeds, one plot.

Accuracies are the *final* test accuracies (best-epoch accuracy is listed separately: picking
the best epoch on the test set flatters a method).
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from ..outputs.checkpoint import atomic_write_bytes
from ..utils.errors import UserError
from ..flops.tables import human
from ..utils.optional import attempt
from .runs import Run, Warn, find_runs, stderr_warn

RUN_COLUMNS = ["run", "status", "model", "ift", "method", "dataset", "s", "s_eff", "seed",
               "test_acc1", "best_acc1", "train_flops", "params_nonzero", "train_s"]
GROUP_KEYS = ("model", "dataset", "ift", "method", "s")


def load_runs(root: Path, warn: Warn = stderr_warn) -> list[dict[str, Any]]:
    """One flat row per run under ``root`` (damaged summaries: one warning each, skipped)."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give the sweep (or run) directory")
    rows = [run_row(r) for r in find_runs(root, warn)]
    if not rows:
        raise UserError(f"no readable summary.json under {root}; is it a sparse-run output "
                        "directory?")
    return rows


def run_row(run: Run) -> dict[str, Any]:
    s = run.summary
    model, sp, fl, m = (s.get(k, {}) for k in ("model", "sparsity", "flops", "metrics"))
    return {
        "run": run.path, "status": run.status,
        "model": model.get("name"), "ift": model.get("ift"), "method": run.method,
        "dataset": run.dataset, "s": sp.get("target"), "s_eff": sp.get("effective"),
        "seed": run.seed, "test_acc1": run.acc, "best_acc1": m.get("best_test_acc1"),
        "train_flops": fl.get("train_total"), "params_nonzero": model.get("params_nonzero"),
        "train_s": s.get("time", {}).get("train_s"),
    }


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std of the final accuracy over seeds for each (model, dataset, ift, method, s)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "completed" and r["test_acc1"] is not None:
            groups.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        accs = [m["test_acc1"] for m in members]
        flops = [m["train_flops"] or 0.0 for m in members]
        out.append({**dict(zip(GROUP_KEYS, key)), "n": len(accs), "acc1_mean": statistics.fmean(accs),
                    "acc1_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "train_flops": statistics.fmean(flops)})
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return human(value) if abs(value) >= 1e5 else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot(groups: list[dict[str, Any]], path: Path) -> bool:
    """Accuracy vs training FLOPs, one series per (ift, method); False if nothing to plot."""
    points = [g for g in groups if g["train_flops"]]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({(g["ift"], g["method"]) for g in points}):
        series = sorted((g for g in points if (g["ift"], g["method"]) == label),
                        key=lambda g: g["train_flops"])
        ax.errorbar([g["train_flops"] for g in series], [g["acc1_mean"] for g in series],
                    yerr=[g["acc1_std"] for g in series], marker="o", capsize=3,
                    label=f"ift={label[0]} method={label[1]}")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))
    return True


def sweep_report(root: Path, write: bool = True) -> str:
    rows = load_runs(root)
    groups = group_rows(rows)
    group_cols = [*GROUP_KEYS, "n", "acc1_mean", "acc1_std", "train_flops"]
    text = "## Runs\n\n" + markdown(rows, RUN_COLUMNS)
    if groups:
        text += "\n\n## Mean over seeds (final test top-1)\n\n" + markdown(groups, group_cols)
    if write:
        atomic_write_bytes(root / "report.md", lambda f: f.write((text + "\n").encode()))
        atomic_write_bytes(root / "report.csv", lambda f: f.write(to_csv(rows, RUN_COLUMNS).encode()))
        attempt("plots", "the report plot (report.png)", plot, groups, root / "report.png")
    return text
