"""Dense GPT vs Sparse Wide GPT on held-out Shakespeare at equal training FLOPs (3 seeds).

    python benchmarks/gpt_shakespeare.py --out benchmarks/results/gpt_shakespeare_<date>.json \
        [--runs default dense_500 wide_rigl_500] [--seeds 0 1 2] [--dir /tmp/gpt_runs]
    # or in parallel: --print-commands | xargs -P 4 -I{} sh -c {}; then the same with --collect

Each run is the CLI itself (``sparse-run ...``), one process after another; the JSON keeps each
run's command, held-out loss / bpc, training FLOPs, Iso-FLOP error, wall time and tokens/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = {  # name -> overrides (after model=gpt dataset=shakespeare)
    "default": [],
    # dense vs Sparse Wide at equal training FLOPs on a 2-layer, 64-wide GPT (cheap enough for
    # 3 seeds each on a shared 2-core machine); Sparse Wide widens it to d_model 92 at s=0.5
    "dense_small": ["model.n_layer=2", "model.n_embd=64", "trainer.max_steps=1000"],
    "wide_rigl_small": ["model.n_layer=2", "model.n_embd=64", "trainer.max_steps=1000",
                        "ift=wide", "s=0.5", "method=rigl"],
}


def command(name: str, seed: int, root: Path) -> list[str]:
    return ["sparse-run", "model=gpt", "dataset=shakespeare", *RUNS[name], f"seed={seed}",
            "trainer.progress=false", f"out_dir={root / f'{name}_s{seed}'}"]


def one(name: str, seed: int, root: Path, collect: bool) -> dict:
    """Run (or, with ``collect``, read the finished run of) one configuration and seed."""
    cmd = command(name, seed, root)
    out = root / f"{name}_s{seed}"
    if not collect:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}")
    summary = json.loads((out / "summary.json").read_text())
    m, fl = summary["metrics"], summary["flops"]
    return {"run": name, "seed": seed, "command": " ".join(cmd[:-1]),
            "wall_s": round(summary["time"]["wall_s"], 1),
            "train_s": round(summary["time"]["train_s"], 1),
            "tok_per_s": round(summary["time"]["tok_per_s"]), "test_loss": m["test_loss"],
            "test_bpc": m["test_bpc"], "test_ppl": m["test_ppl"], "steps": m["steps"],
            "train_flops": fl["train_total"], "fwd_flops_per_token": fl["sparse_fwd"],
            "dense_baseline_fwd_per_token": fl["dense_baseline_fwd"],
            "isoflop_rel_error": summary.get("isoflop", {}).get("rel_error"),
            "params_total": summary["model"]["params_total"],
            "params_nonzero": summary["model"]["params_nonzero"]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--dir", default="gpt_runs")
    p.add_argument("--collect", action="store_true",
                   help="read finished runs under --dir (run them in parallel yourself)")
    p.add_argument("--print-commands", action="store_true")
    args = p.parse_args()
    if args.print_commands:
        for name in args.runs:
            for seed in args.seeds:
                print(" ".join(command(name, seed, Path(args.dir))))
        return 0
    rows = []
    for name in args.runs:
        for seed in args.seeds:
            rows.append(one(name, seed, Path(args.dir), args.collect))
            print(json.dumps(rows[-1]), flush=True)
    groups = {}
    for name in args.runs:
        losses = [r["test_loss"] for r in rows if r["run"] == name]
        groups[name] = {"test_loss_mean": statistics.mean(losses),
                        "test_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                        "train_flops_mean": statistics.mean(r["train_flops"] for r in rows if r["run"] == name)}
    result = {"date": time.strftime("%Y-%m-%d"), "host_cpus": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "python": sys.version.split()[0], "runs": rows, "groups": groups}
    path = Path(args.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    print(json.dumps(groups, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
