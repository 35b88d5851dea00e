"""``sparse-run-report export``: a run's sparse weights (CSR; condensed for constant fan-in)
with a storage report.

``sparse-run-report export <run_dir> [--out DIR]`` reads ``checkpoints/last.pt`` and writes:

* ``sparse_weights.pt`` -- per sparse layer (weight viewed as ``[n_out, fan_in]``): ``csr``
  (``crow_indices``, ``col_indices``, ``values``) and, when every nonzero row has the same count
  k, ``condensed`` (``values [n_active, k]``, ``indices [n_active, k]``, ``rows [n_active]``:
  the SRigL / condensed-kernel layout). Loadable with ``torch.load(..., weights_only=True)``.
* ``storage.json`` / ``storage.md`` -- bytes per layer and in total for dense, COO, CSR and
  condensed storage.

``--hf FOLDER`` (``model=hf`` runs) writes a transformers checkpoint instead (export/hf.py).

The structure comes from the masks (an active weight that happens to be 0.0 is still stored).
Storage convention: values keep the weight's dtype; every index array uses the narrowest integer
type that holds its range (int16 / int32 / int64), the same rule for every format, so the
comparison measures the formats, not index-width choices. COO = values + row + col per
nonzero; CSR = values + col per nonzero + (n_out + 1) row pointers; condensed = values + col
per nonzero + one row id per active neuron (omitted when no neuron is ablated).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..outputs import checkpoint as ckpt
from ..utils.errors import UserError
from ..utils.optional import attempt, collect
from ..sparsity.condensed_ckpt import convert_checkpoint
from .formats import index_dtype, to_condensed, to_csr

FORMATS = ("dense", "coo", "csr", "condensed")


def storage_bytes(shape: tuple[int, ...], nnz: int, value_bytes: int,
                  n_active: int | None = None) -> dict[str, int | None]:
    """Bytes of one layer per format (condensed None unless ``n_active`` neurons share one k)."""
    rows, cols = shape[0], math.prod(shape[1:])
    size = lambda n: torch.iinfo(index_dtype(n)).bits // 8  # noqa: E731
    col = size(cols - 1)
    out: dict[str, int | None] = {
        "dense": rows * cols * value_bytes,
        "coo": nnz * (value_bytes + size(rows - 1) + col),
        "csr": nnz * (value_bytes + col) + (rows + 1) * size(nnz),
        "condensed": None,
    }
    if n_active is not None:
        out["condensed"] = nnz * (value_bytes + col) + (n_active * size(rows - 1)
                                                        if n_active < rows else 0)
    return out


def export(model: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> tuple[dict, list[dict]]:
    """(payload for sparse_weights.pt, one storage row per sparse layer)."""
    layers, report = {}, []
    for name, mask in masks.items():
        weight = model[name]
        shape = tuple(weight.shape)
        entry: dict[str, Any] = {"shape": list(shape), "csr": to_csr(weight, mask)}
        cond = attempt("condensed", "the condensed form", to_condensed, weight, mask)
        if cond is not None:
            entry["condensed"] = cond
        layers[name] = entry
        nnz = int(mask.sum())
        n_active = None if cond is None else len(cond["rows"])
        report.append({"name": name, "shape": list(shape), "nnz": nnz,
                       "fan_in": None if cond is None else cond["indices"].shape[1],
                       **storage_bytes(shape, nnz, weight.element_size(), n_active)})
    return {"format_version": 1, "layers": layers}, report


def totals(report: list[dict]) -> dict[str, int | None]:
    """Sum per format; condensed sums only when every layer is constant fan-in."""
    out: dict[str, int | None] = {}
    for f in FORMATS:
        vals = [r[f] for r in report]
        out[f] = None if any(v is None for v in vals) else sum(vals)
    return out


def markdown(report: list[dict]) -> str:
    head = "| layer | shape | nnz | fan-in | " + " | ".join(f"{f} B" for f in FORMATS) + " |"
    lines = [head, "|" + "---|" * (4 + len(FORMATS))]
    fmt = lambda v: "-" if v is None else f"{v:,}"  # noqa: E731
    for r in [*report, {"name": "**total**", "shape": "", "nnz": sum(r["nnz"] for r in report),
                        "fan_in": None, **totals(report)}]:
        shape = "x".join(map(str, r["shape"])) if r["shape"] else ""
        lines.append(f"| {r['name']} | {shape} | {r['nnz']:,} | {fmt(r['fan_in'])} | "
                     + " | ".join(fmt(r[f]) for f in FORMATS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sparse-run-report export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a sparse-run run directory")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default RUN_DIR/export)")
    parser.add_argument("--checkpoint", default=ckpt.LAST, help="file in checkpoints/ (last.pt)")
    parser.add_argument("--hf", type=Path, default=None, metavar="FOLDER",
                        help="model=hf runs: write a transformers checkpoint (save_pretrained) "
                             "with the masks beside it instead (docs/models.md)")
    args = parser.parse_args(argv)
    if args.hf is not None:
        from .hf import export_hf
        masks = export_hf(args.run_dir, args.hf, args.checkpoint)
        print(f"wrote {args.hf} (transformers save_pretrained, {len(masks)} sparse weights)")
        return 0
    path = args.run_dir / "checkpoints" / args.checkpoint
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give a run directory that has trained")
    payload = ckpt.load(path)
    masks = payload.get("masks") or {}
    if not masks:
        raise UserError(f"{path} has no masks (a dense run): nothing sparse to export")
    model = convert_checkpoint({"model": payload["model"], "masks": masks}, "dense")["model"]
    with collect("sparse-run-report export") as skipped:  # the CSR form is the export; the
        data, report = export(model, masks)  # rest optional. A condensed run: dense weights first
    out = args.out or args.run_dir / "export"
    ckpt.save(out / "sparse_weights.pt", data)
    storage: dict[str, Any] = {"layers": report, "total": totals(report)}
    skipped.record(storage)
    ckpt.atomic_write_json(out / "storage.json", storage)
    table = markdown(report)
    ckpt.atomic_write_bytes(out / "storage.md", lambda f: f.write(table.encode()))
    print(table + f"\nwrote {out / 'sparse_weights.pt'} and {out / 'storage.json'}")
    return 0
