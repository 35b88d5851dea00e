"""Closing-note results of the method zoo: test accuracy on digits vs dense, three seeds each.

Runs sequentially in-process (ResNet-18, trainer.epochs=12) and writes
``benchmarks/results/zoo_digits_<date>.json`` plus a markdown table on stdout::

    python scripts/zoo_digits.py [--seeds 0 1 2] [--only snip nm] [--out DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from sparse_runner.run import run
from sparse_runner.summary import versions

# name -> overrides. GraNet's ΔT is scaled to the 264-step digits run (reference 100-1000 steps
# between updates assumes tens of thousands of steps); everything else uses the method defaults.
CONFIGS = {
    "dense": ["method=dense"],
    "static": ["method=static", "s=0.9"],
    "snip": ["method=snip", "s=0.9"],
    "grasp": ["method=grasp", "s=0.9"],
    "force": ["method=force", "s=0.9"],
    "iter_snip": ["method=force", "method.variant=iter_snip", "s=0.9"],
    "granet": ["method=granet", "s=0.9", "method.delta_t=10"],
    "nm_4of8": ["method=nm", "s=0.5"],
    "nm_1of8": ["method=nm", "s=0.875"],
    "l0": ["method=l0", "s=0.9"],
    # the dynamic core (issue 3): uniform and ERK distributions, and the condensed backend
    "set": ["method=set", "s=0.9"],
    "rigl": ["method=rigl", "s=0.9"],
    "rigl_erk": ["method=rigl", "s=0.9", "distribution=erk"],
    "srigl": ["method=srigl", "s=0.9"],
    "srigl_condensed": ["method=srigl", "s=0.9", "sparse.backend=condensed"],
}


def one(overrides: list[str], seed: int, root: Path) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, f"seed={seed}",
                                                       "trainer.progress=false", "run.device=cpu",
                                                       "trainer.epochs=12"])
    summary = run(cfg, root / f"{'_'.join(overrides)}_{seed}".replace("=", "-"))
    dens = [r["density"] for r in summary["sparsity"]["layers"] if not r["dense"]]
    return {"seed": seed, "layer_density_min": min(dens, default=1.0),
            "layer_density_max": max(dens, default=1.0), "test_acc1": summary["metrics"]["test_acc1"],
            "best_test_acc1": summary["metrics"]["best_test_acc1"],
            "sparsity_sparse_layers": summary["sparsity"]["sparse_layers"],
            "train_flops": summary["flops"]["train_total"], "train_s": summary["time"]["train_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS))
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    args = ap.parse_args()
    started = datetime.datetime.now()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CONFIGS:
            runs = [one(CONFIGS[name], seed, Path(tmp)) for seed in args.seeds]
            acc = [r["test_acc1"] for r in runs]
            rows[name] = {"overrides": CONFIGS[name], "runs": runs, "mean_acc1": statistics.mean(acc),
                          "std_acc1": statistics.stdev(acc) if len(acc) > 1 else 0.0}
            print(f"{name:<10} {rows[name]['mean_acc1']:.2f} ± {rows[name]['std_acc1']:.2f}", flush=True)
    result = {"benchmark": "zoo_digits", "date": started.isoformat(timespec="seconds"),
              "model": "resnet18 (base_width 64)", "dataset": "digits",
              "trainer": "default, trainer.epochs=12",
              "device": "cpu", "machine": {"cpu": platform.machine(), "cores": os.cpu_count(),
                                           "torch_threads": torch.get_num_threads(),
                                           "load_avg_1m": os.getloadavg()[0]},
              "versions": versions(), "results": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"zoo_digits_{started.date().isoformat()}.json"
    if path.exists():  # a partial rerun (--only) adds to the day's file
        old = json.loads(path.read_text())
        result["results"] = {**old["results"], **rows}
        result["reruns"] = [*old.get("reruns", []), {"date": result["date"], "only": list(rows)}]
        result["date"] = old["date"]
    path.write_text(json.dumps(result, indent=2) + "\n")
    dense = result["results"].get("dense", {}).get("mean_acc1")
    print("\n| method | s | test acc1 (mean ± std, 3 seeds) | vs dense |\n|---|---|---|---|")
    for name, r in rows.items():
        s = next((o.split("=")[1] for o in r["overrides"] if o.startswith("s=")), "0")
        delta = f"{r['mean_acc1'] - dense:+.2f}" if dense is not None else ""
        print(f"| {name} | {s} | {r['mean_acc1']:.2f} ± {r['std_acc1']:.2f} | {delta} |")
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
