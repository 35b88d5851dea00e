"""summary.json (the output contract) and the tables printed at the end of a run or a dry run.

Sparsity numbers are measured from the masks, never copied from the config: ``sparsity.global``
is the sparsity over every Conv/Linear weight (dense stem and head included),
``sparsity.sparse_layers`` the sparsity over the layers that are sparse, and ``sparsity.layers``
lists every Conv/Linear weight with its nonzero count. ``model.params_nonzero`` counts all
parameters minus the masked-out weights (structural nonzeros).
"""
from __future__ import annotations

from pathlib import Path
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import nn

from .outputs.checkpoint import atomic_write_json
from .utils.environment import device_name, peak_memory, versions
from .outputs.fsio import atomic_write_text
from .flops.tables import LayerTable, human, origins, train_flops_per_sample
from .ift import describe_ift
from .sparsity.condensed_params import dense_param_count
from .tasks import build_task

if TYPE_CHECKING:
    from .plan import RunPlan
    from .train import TrainState

SUMMARY = "summary.json"


def build(plan: RunPlan, state: TrainState | None, status: str, error: str | None, t0: float,
          run_dir: Path, spectral: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """summary.json from the plan and the trainer's state (either may be incomplete);
    ``spectral``: the Ramanujan metrics of the final masks (sparse.spectral)."""
    cfg = plan.cfg
    out: dict[str, Any] = {"status": status}
    if error:
        out["error"] = error
    out["method"] = str(cfg.method.name)
    out["dataset"] = str(cfg.dataset.name)
    if plan.data is not None and plan.data.notes:
        out["data_notes"] = list(plan.data.notes)
    out["seed"] = int(cfg.seed) if isinstance(cfg.seed, int) else cfg.seed
    if plan.table is not None and plan.model is not None:
        out.update(_model_sections(plan, state))
    if plan.task is not None:
        out["task"] = {"name": plan.task.name, "unit": plan.task.unit}
    if state is not None and state.epoch_s:
        task = plan.task
        out["metrics"] = {**task.summary_metrics(state.last_eval),
                          f"best_test_{task.best}": state.best,
                          "train_loss": state.last_train_loss, "steps": state.step}
        out["time"] = {"train_s": state.train_s, "per_epoch_s": state.train_s / len(state.epoch_s),
                       task.throughput_key: state.units / max(state.train_s, 1e-9)}
    if spectral is not None:
        out["spectral"] = dict(spectral)
    out.setdefault("time", {})["wall_s"] = time.perf_counter() - t0
    out["memory"] = peak_memory(plan.device)
    out["device"] = device_name(plan.device)
    out["versions"] = versions()
    out["run_dir"] = str(run_dir)
    return out


def _model_sections(plan: RunPlan, state: TrainState | None) -> dict[str, Any]:
    cfg, method = plan.cfg, plan.method
    density = method.density() if method is not None else {}
    rows = layer_rows(plan.table, density, plan.sparse)
    total, nonzero = params(plan.model, rows)
    backend = getattr(method, "backend", None)
    sparsity = sparsity_section(plan.s, plan.s_eff, rows)
    sparsity["distribution"] = str(cfg.distribution.name)
    sparsity["backend"] = {"name": str(cfg.sparse.backend),
                           "condensed_layers": backend.names() if backend else [],
                           "layers": backend.choices if backend else []}
    out: dict[str, Any] = {
        "model": {"name": str(cfg.model.name), "ift": str(cfg.ift.name), "params_total": total,
                  "params_nonzero": nonzero, "ift_info": describe_ift(cfg.ift, plan.s, plan.model)},
        "sparsity": sparsity,
        "flops": {"unit": plan.table.unit,
                  "dense_baseline_fwd": plan.baseline.dense_fwd(),
                  "other_fwd": plan.table.other_fwd(),
                  "model_dense_fwd": plan.table.dense_fwd(),
                  "sparse_fwd": plan.table.sparse_fwd(density),
                  "train_total": state.train_flops if state is not None else 0.0}}
    if plan.iso is not None:
        out["isoflop"] = {"budget": str(cfg.sparse.flop_budget),
                          "target_fwd": plan.iso.target, "found_fwd": plan.iso.flops,
                          "rel_error": plan.iso.rel_error, "iterations": plan.iso.iterations}
    return out


def dry_run(plan: RunPlan, run_dir: Path, t0: float) -> dict[str, Any]:
    """Print and save the layer table of a dry run; its summary (status ``dry_run``)."""
    rows = layer_rows(plan.table, plan.method.density(), plan.sparse, baseline=plan.baseline)
    atomic_write_text(run_dir / "layers.csv", layer_table_csv(rows))
    print(layer_table_text(rows))
    if plan.iso is not None:
        print(f"Iso-FLOP: s={plan.s} -> effective sparsity {plan.iso.sparsity:.6f}; sparse "
              f"fwd {plan.iso.flops:.6g} vs dense baseline {plan.iso.target:.6g} FLOPs "
              f"(rel. error {plan.iso.rel_error:.2e})")
    return build(plan, None, "dry_run", None, t0, run_dir)


def layer_rows(table: LayerTable, density: Mapping[str, float], sparse: Sequence[str],
               baseline: LayerTable | None = None) -> list[dict[str, Any]]:
    """One row per Conv/Linear weight: shape, density and nnz from the masks, dense flag.

    With the untransformed ``baseline``, ``fwd_flops_baseline`` holds the dense FLOPs of the
    baseline layer a row stands in for, on the first row of that layer's group (None on the
    others, so the column sums to the baseline's total)."""
    sparse_set = set(sparse)
    origin = origins(table, baseline) if baseline is not None else {}
    seen: set[str] = set()
    rows = []
    for layer in table:
        d = density.get(layer.name, 1.0)
        row = {"name": layer.name, "shape": list(layer.shape), "density": d,
               "nnz": int(round(d * layer.numel)), "dense": layer.name not in sparse_set,
               "fwd_flops_dense": layer.fwd_flops, "fwd_flops_sparse": layer.fwd_flops * d}
        if baseline is not None:
            src = origin[layer.name]
            row["fwd_flops_baseline"] = None if src is None or src in seen else baseline[src].fwd_flops
            seen.add(src)
        rows.append(row)
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
    total = dense_param_count(model)   # condensed layers count as their dense weight
    masked_out = sum(_numel(r) - r["nnz"] for r in rows)
    return total, total - masked_out


def write(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = run_dir / SUMMARY
    atomic_write_json(path, summary)
    return path


def layer_table_text(rows: list[dict[str, Any]]) -> str:
    """The dry-run layer table: name, shape, density, baseline / dense / sparse forward FLOPs
    per sample, and the training FLOPs per sample the sparse forward implies."""
    has_base = any("fwd_flops_baseline" in r for r in rows)
    width = max([40, *(len(r["name"]) + 8 for r in rows)])
    flops_cols = (["baseline FLOPs"] if has_base else []) + ["dense FLOPs", "sparse FLOPs"]
    head = f"{'layer':<{width}} {'shape':<20} {'density':>8} " + " ".join(f"{c:>14}" for c in flops_cols)
    lines = [head, "-" * len(head)]

    def cells(values: list[Any]) -> str:
        return " ".join(f"{'' if v is None else human(v):>14}" for v in values)

    keys = (["fwd_flops_baseline"] if has_base else []) + ["fwd_flops_dense", "fwd_flops_sparse"]
    for r in rows:
        mark = " (dense)" if r["dense"] else ""
        lines.append(f"{r['name'] + mark:<{width}} {'x'.join(map(str, r['shape'])):<20} "
                     f"{r['density']:>8.4f} " + cells([r.get(k) for k in keys]))
    totals = [sum(r.get(k) or 0 for r in rows) for k in keys]
    lines.append(f"{'total (forward, per sample)':<{width}} {'':<20} {'':>8} " + cells(totals))
    lines.append(f"training FLOPs per sample: {human(train_flops_per_sample(totals[-1]))} "
                 "(forward + backward = 3 x sparse forward; method extras such as RigL's dense "
                 "gradients are added on their steps and logged as train_flops)")
    return "\n".join(lines)


def layer_table_csv(rows: list[dict[str, Any]]) -> str:
    cols = ["name", "shape", "density", "nnz", "dense", "fwd_flops_dense", "fwd_flops_sparse"]
    if any("fwd_flops_baseline" in r for r in rows):
        cols.insert(5, "fwd_flops_baseline")
    out = [",".join(cols)]
    for r in rows:
        out.append(",".join('"' + "x".join(map(str, r[c])) + '"' if c == "shape"
                            else "" if r[c] is None else str(r[c]) for c in cols))
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
        (f"fwd FLOPs per {fl.get('unit', 'sample')} baseline / dense / sparse",
         " / ".join(human(fl.get(k, 0)) for k in ("dense_baseline_fwd", "model_dense_fwd",
                                                   "sparse_fwd"))),
        ("train FLOPs", human(fl.get("train_total", 0))),
    ]
    if m:
        task = build_task(summary.get("task", {}).get("name", "classification"))
        rows += [(f"test {sh.label.removeprefix('test ')}", _fmt(m.get(f"test_{sh.key}"), 4))
                 for sh in task.shown_eval]
        rows += [(f"best test {task.best}", _fmt(m.get(f"best_test_{task.best}"))),
                 ("train loss", _fmt(m.get("train_loss"))),
                 (task.throughput_key, _fmt(summary.get("time", {}).get(task.throughput_key), 0)),
                 ("train time", f"{summary.get('time', {}).get('train_s', 0):.1f}s")]
    if summary.get("error"):
        rows.append(("error", summary["error"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _fmt(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)
