"""summary.json (the output contract) and the tables printed at the end of a run or a dry run.

Sparsity numbers are measured from the masks, never copied from the config: ``sparsity.global``
is the sparsity over every Conv/Linear weight (dense stem and head included),
``sparsity.sparse_layers`` the sparsity over the layers that are sparse, and ``sparsity.layers``
lists every Conv/Linear weight with its nonzero count. ``model.params_nonzero`` counts all
parameters minus the masked-out weights (structural nonzeros).
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import __version__
from .checkpoint import atomic_write_json
from .flops import LayerTable, human

SUMMARY = "summary.json"


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "sparse_runner": __version__, "cuda": str(torch.version.cuda)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def layer_rows(table: LayerTable, density: Mapping[str, float],
               sparse: Sequence[str]) -> list[dict[str, Any]]:
    """One row per Conv/Linear weight: shape, density and nnz from the masks, dense flag."""
    sparse_set = set(sparse)
    rows = []
    for layer in table:
        d = density.get(layer.name, 1.0)
        rows.append({"name": layer.name, "shape": list(layer.shape), "density": d,
                     "nnz": int(round(d * layer.numel)), "dense": layer.name not in sparse_set,
                     "fwd_flops_dense": layer.fwd_flops, "fwd_flops_sparse": layer.fwd_flops * d})
    return rows


def sparsity_section(target: float, effective: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    total = sum(_numel(r) for r in rows)
    nnz = sum(r["nnz"] for r in rows)
    sparse_rows = [r for r in rows if not r["dense"]]
    sparse_total = sum(_numel(r) for r in sparse_rows)
    sparse_nnz = sum(r["nnz"] for r in sparse_rows)
    return {
        "target": target,
        "effective": effective,
        "global": 1.0 - nnz / total if total else 0.0,
        "sparse_layers": 1.0 - sparse_nnz / sparse_total if sparse_total else 0.0,
        "layers": [{k: r[k] for k in ("name", "shape", "density", "nnz", "dense")} for r in rows],
    }


def _numel(row: Mapping[str, Any]) -> int:
    n = 1
    for d in row["shape"]:
        n *= int(d)
    return n


def params(model: nn.Module, rows: list[dict[str, Any]]) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    masked_out = sum(_numel(r) - r["nnz"] for r in rows)
    return total, total - masked_out


def write(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = run_dir / SUMMARY
    atomic_write_json(path, summary)
    return path


def layer_table_text(rows: list[dict[str, Any]]) -> str:
    """The dry-run layer table: name, shape, density, dense and sparse forward FLOPs."""
    head = f"{'layer':<40} {'shape':<20} {'density':>8} {'dense FLOPs':>12} {'sparse FLOPs':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = " (dense)" if r["dense"] else ""
        lines.append(f"{r['name'] + mark:<40} {'x'.join(map(str, r['shape'])):<20} "
                     f"{r['density']:>8.4f} {human(r['fwd_flops_dense']):>12} "
                     f"{human(r['fwd_flops_sparse']):>12}")
    total_d = sum(r["fwd_flops_dense"] for r in rows)
    total_s = sum(r["fwd_flops_sparse"] for r in rows)
    lines.append(f"{'total':<40} {'':<20} {'':>8} {human(total_d):>12} {human(total_s):>12}")
    return "\n".join(lines)


def layer_table_csv(rows: list[dict[str, Any]]) -> str:
    cols = ["name", "shape", "density", "nnz", "dense", "fwd_flops_dense", "fwd_flops_sparse"]
    out = [",".join(cols)]
    for r in rows:
        out.append(",".join('"' + "x".join(map(str, r[c])) + '"' if c == "shape" else str(r[c])
                            for c in cols))
    return "\n".join(out) + "\n"


def result_text(summary: Mapping[str, Any]) -> str:
    """The one-screen result table printed at the end of a run."""
    m, sp, fl = summary.get("metrics", {}), summary.get("sparsity", {}), summary.get("flops", {})
    model = summary.get("model", {})
    rows = [
        ("status", summary.get("status")),
        ("model", f"{model.get('name')} ift={model.get('ift')} method={summary.get('method')}"),
        ("params (total / nonzero)", f"{model.get('params_total', 0):,} / "
                                     f"{model.get('params_nonzero', 0):,}"),
        ("sparsity target / effective", f"{sp.get('target')} / {_fmt(sp.get('effective'))}"),
        ("sparsity global / sparse layers", f"{_fmt(sp.get('global'))} / "
                                            f"{_fmt(sp.get('sparse_layers'))}"),
        ("fwd FLOPs baseline / dense / sparse",
         " / ".join(human(fl.get(k, 0)) for k in ("dense_baseline_fwd", "model_dense_fwd",
                                                   "sparse_fwd"))),
        ("train FLOPs", human(fl.get("train_total", 0))),
    ]
    if m:
        rows += [("test acc1 / acc5", f"{_fmt(m.get('test_acc1'), 2)} / {_fmt(m.get('test_acc5'), 2)}"),
                 ("best test acc1", _fmt(m.get("best_test_acc1"), 2)),
                 ("train loss", _fmt(m.get("train_loss"))),
                 ("train time", f"{summary.get('time', {}).get('train_s', 0):.1f}s")]
    if summary.get("error"):
        rows.append(("error", summary["error"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)
