"""The completion matrix (issue 21): does every method x IFT family x s x backend run?

Each cell is one smoke-size run (a few optimizer steps of a tiny model) through the CLI's own
path, in-process: the composed Hydra config, then ``run.run`` (what ``cli.task`` calls; the
command-line spelling checks are skipped: every cell's command line is valid). A cell ends ``completed``, ``refused`` (a one-line
``UserError``: what ``sparse-run`` prints with exit code 2) or ``crashed`` (anything else: a
bug, with its last traceback line). Cells run in ``--jobs`` worker processes (default 2)::

    python scripts/completion_matrix.py [--jobs 2] [--models digits timm gpt] [--out DIR]

writes ``benchmarks/results/completion_matrix_<date>.json`` and prints a markdown table per
model and backend (rows: methods, columns: IFT families; each entry covers s=0.5 and s=0.9).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import itertools
import json
import os
import random
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable

METHODS = ("dense", "static", "set", "rigl", "srigl", "granet", "snip", "grasp", "force", "nm",
           "l0")
IFTS = ("none", "wide", "parallel", "factorized", "doped")
SPARSITIES = (0.5, 0.9)
BACKENDS = ("masked", "condensed")
STEPS = 4

# model -> the overrides of its smoke size (tiny width, tiny data, STEPS optimizer steps)
MODELS: dict[str, tuple[str, ...]] = {
    "digits": ("model=resnet18", "model.base_width=8", "dataset=digits", "trainer.batch_size=32"),
    "timm": ("model=timm", "model.arch=mobilenetv2_050", "dataset=synthetic",
             "dataset.shape=[3,32,32]", "dataset.num_classes=10", "dataset.num_samples=64",
             "dataset.num_test_samples=32", "trainer.batch_size=16"),
    "gpt": ("model=gpt", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
            "model.block_size=32", "dataset=shakespeare", "dataset.eval_tokens=512",
            "trainer.batch_size=4"),
}
# no spectral metrics: optional (a failure there never fails a run) and half a cell's time
COMMON = (f"trainer.max_steps={STEPS}", "trainer.epochs=1", "trainer.progress=false",
          "run.device=cpu", "schedule.warmup_steps=0", "sparse.spectral=false")
# method -> overrides that make its schedule act within STEPS steps (mask updates, pruning)
METHOD_OPTS: dict[str, tuple[str, ...]] = {
    "set": ("method.delta_t=2",), "rigl": ("method.delta_t=2",),
    "srigl": ("method.delta_t=2",), "granet": ("method.delta_t=1",),
    "nm": ("method.update_every=2",), "l0": ("method.report_every=1",),
    "force": ("method.num_steps=3",), "grasp": ("method.samples_per_class=2",),
}


def cells(models: Iterable[str] = tuple(MODELS)) -> list[dict[str, Any]]:
    """Every cell of the matrix, in a fixed order (models alternate)."""
    return [{"model": m, "method": meth, "ift": ift, "s": s, "backend": b}
            for meth, ift, s, b, m in itertools.product(METHODS, IFTS, SPARSITIES, BACKENDS,
                                                        models)]


def key(cell: dict[str, Any]) -> tuple:
    return tuple(cell[k] for k in ("model", "method", "ift", "s", "backend"))


def sample(n: int, seed: int = 0, models: Iterable[str] = tuple(MODELS)) -> list[dict[str, Any]]:
    """A fixed pseudo-random sample of ``n`` cells (the CI cut)."""
    return random.Random(seed).sample(cells(models), n)


def argv_of(cell: dict[str, Any]) -> list[str]:
    """The ``sparse-run`` command line of a cell (without the output directory)."""
    return [*MODELS[cell["model"]], *COMMON, f"method={cell['method']}", f"ift={cell['ift']}",
            f"s={cell['s']}", f"sparse.backend={cell['backend']}",
            *METHOD_OPTS.get(cell["method"], ())]


def run_cell(cell: dict[str, Any], root: str) -> dict[str, Any]:
    """Run one cell in this process; its outcome (never raises)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from sparse_runner.utils.errors import TrainingFailed, UserError, one_line
    from sparse_runner.config.overrides import normalise
    from sparse_runner.run import run

    name = "_".join(f"{cell[k]}" for k in ("model", "method", "ift", "s", "backend"))
    argv = normalise([*argv_of(cell), f"out_dir={Path(root) / name}"])
    t0 = time.perf_counter()
    out: dict[str, Any] = {**cell, "command": "sparse-run " + " ".join(argv_of(cell))}
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            GlobalHydra.instance().clear()
            with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
                cfg = compose(config_name="config", overrides=argv)
            summary = run(cfg, Path(root) / name)
        out.update(status="completed", steps=(summary.get("metrics") or {}).get("steps"))
    except UserError as exc:
        out.update(status="refused", message=one_line(exc))
    except TrainingFailed as exc:   # a non-finite loss at smoke size: ran, did not learn
        out.update(status="diverged", message=one_line(exc))
    except Exception as exc:  # noqa: BLE001 (a crash is what the matrix records)
        ours = [f for f in traceback.extract_tb(exc.__traceback__) if "sparse_runner" in f.filename]
        tb = (ours or traceback.extract_tb(exc.__traceback__))[-1]
        out.update(status="crashed", message=f"{type(exc).__name__}: {one_line(exc)}",
                   where=f"{tb.filename.split('sparse_runner')[-1]}:{tb.lineno} {tb.name}")
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def _worker_init() -> None:
    import torch
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(1)


def run_all(todo: list[dict[str, Any]], jobs: int, root: str, log=None,
            record: Path | None = None) -> list[dict[str, Any]]:
    """Every cell of ``todo`` in ``jobs`` worker processes; results in ``todo``'s order, each
    also appended to the JSON-lines file ``record`` as it comes (``--resume`` reads it)."""
    results: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                             initializer=_worker_init) as pool:
        futures = {pool.submit(run_cell, c, root): i for i, c in enumerate(todo)}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 (a worker died: a segfault, the OOM killer)
                results[i] = {**todo[i], "status": "crashed", "message": f"worker died: {exc}"}
            if record is not None:
                with record.open("a") as f:
                    f.write(json.dumps(results[i]) + "\n")
            if log is not None:
                r = results[i]
                print(f"[{len(results)}/{len(todo)}] {r['status']:9s} {r.get('seconds', 0):6.1f}s "
                      f"{r['command']}  {r.get('message', '')}", file=log, flush=True)
    return [results[i] for i in range(len(todo))]


MARK = {"completed": "ok", "refused": "refused", "diverged": "nan", "crashed": "**CRASH**"}


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per (model, backend), methods x IFT families; an entry for both sparsities
    (``ok``, ``refused``, ``**CRASH**``, or ``a / b`` when s=0.5 and s=0.9 differ)."""
    by = {(r["model"], r["backend"], r["method"], r["ift"], r["s"]): r["status"] for r in results}
    out = []
    for model, backend in sorted({(r["model"], r["backend"]) for r in results},
                                 key=lambda k: (list(MODELS).index(k[0]), BACKENDS.index(k[1]))):
        out += [f"\n**{model}, sparse.backend={backend}** (s=0.5 / s=0.9)\n",
                "| method | " + " | ".join(IFTS) + " |", "|---" * (len(IFTS) + 1) + "|"]
        for method in METHODS:
            row = []
            for ift in IFTS:
                marks = [MARK.get(by.get((model, backend, method, ift, s), ""), "-")
                         for s in SPARSITIES]
                row.append(marks[0] if len(set(marks)) == 1 else " / ".join(marks))
            out.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(out)


def refusals(results: list[dict[str, Any]]) -> str:
    """Markdown list: each distinct refusal or crash message with the cells that gave it."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in results:
        if r["status"] != "completed":
            key = (r["status"], r.get("message", ""))
            groups.setdefault(key, []).append(
                f"{r['model']}/{r['method']}/{r['ift']}/s={r['s']}/{r['backend']}")
    return "\n".join(f"- {status} ({len(c)} cells, e.g. {c[0]}): {msg}"
                     for (status, msg), c in sorted(groups.items()))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--resume", type=Path, default=None,
                    help="a .jsonl of an interrupted run: its cells are kept, the rest run")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: the record and tables of the cells in --resume")
    args = ap.parse_args(argv)
    todo = [c for c in cells(args.models) if c["method"] in args.methods]
    done = {}
    if args.resume is not None and args.resume.is_file():
        done = {key(r): r for r in map(json.loads, args.resume.read_text().splitlines())}
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="completion_matrix_") as root:
        left = [] if args.report_only else [c for c in todo if key(c) not in done]
        random.Random(0).shuffle(left)   # an interrupted run still covers every method
        ran = run_all(left, args.jobs, root, log=sys.stderr,
                      record=args.resume or args.out / "completion_matrix.jsonl")
    by_key = {**done, **{key(r): r for r in ran}}
    for r in by_key.values():   # records of an older version of this script
        if r["status"] == "crashed" and r.get("message", "").startswith("TrainingFailed: "):
            r.update(status="diverged", message=r["message"][len("TrainingFailed: "):])
    results = [by_key[key(c)] for c in todo if key(c) in by_key]
    from sparse_runner.summary import versions
    record = {"date": datetime.date.today().isoformat(), "steps": STEPS,
              "models": {m: list(MODELS[m]) for m in args.models}, "common": list(COMMON),
              "method_opts": {k: list(v) for k, v in METHOD_OPTS.items()},
              "jobs": args.jobs, "wall_s": round(time.time() - t0, 1), "versions": versions(),
              "cells_run": len(results), "cells_total": len(todo),
              "counts": {s: sum(r["status"] == s for r in results) for s in MARK},
              "cells": results}
    path = args.out / f"completion_matrix_{record['date']}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(table(results))
    print("\nNot completed:\n" + refusals(results))
    print(f"\n{record['counts']} in {record['wall_s']} s -> {path}")


if __name__ == "__main__":
    main()
