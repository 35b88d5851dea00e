"""transformers causal LMs (model=hf) on held-out Shakespeare: tiny gpt2 / llama / qwen2 configs
(2 layers, width 64), dense and Sparse Wide RigL at s=0.5, a few hundred steps; plus the
training-feature checks of issue 25 (condensed backend, bf16 autocast, gradient accumulation,
torchrun with 2 CPU ranks) and the export round trip (``sparse-run-report export --hf``, loaded
by transformers alone, must give the run's held-out loss).

    python benchmarks/hf_shakespeare.py --out benchmarks/results/hf_shakespeare_<date>.json \
        [--runs gpt2_dense llama_wide_rigl ...] [--dir /tmp/hf_runs]

Each run is the CLI itself, one after another; the JSON keeps each run's command, held-out
loss, FLOPs, Iso-FLOP error and parameter counts. The unigram entropy of the corpus's
characters is 3.33 nats; a model that learned anything is well below it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

TINY = {
    "gpt2": "{n_embd: 64, n_layer: 2, n_head: 4, n_positions: 64}",
    "llama": "{hidden_size: 64, intermediate_size: 172, num_hidden_layers: 2, "
             "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}",
    "qwen2": "{hidden_size: 64, intermediate_size: 172, num_hidden_layers: 2, "
             "num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}",
}
RECIPE = ["dataset=shakespeare", "trainer.max_steps=300", "optimizer.lr=3e-3",
          "schedule.warmup_steps=20", "dataset.eval_tokens=16384", "trainer.progress=false"]
WIDE = ["ift=wide", "s=0.5", "method=rigl"]
RUNS: dict[str, tuple[str, list[str], int]] = {  # name -> (model_type, overrides, ranks)
    **{f"{a}_dense": (a, [], 1) for a in TINY},
    **{f"{a}_wide_rigl": (a, WIDE, 1) for a in TINY},
    "llama_wide_rigl_condensed": ("llama", [*WIDE, "sparse.backend=condensed"], 1),
    "llama_wide_rigl_bf16": ("llama", [*WIDE, "trainer.precision=bf16"], 1),
    "llama_wide_rigl_accum2": ("llama", [*WIDE, "trainer.grad_accum=2", "trainer.batch_size=6"], 1),
    "gpt2_wide_rigl_ddp2": ("gpt2", [*WIDE, "trainer.batch_size=6"], 2),
}


def command(name: str, root: Path) -> list[str]:
    arch, extra, ranks = RUNS[name]
    launch = (["sparse-run"] if ranks == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", "-m", "sparse_runner"])
    return [*launch, "model=hf", f"model.arch={arch}", f"model.config={TINY[arch]}", *RECIPE,
            *extra, f"out_dir={root / name}"]


def export_check(run_dir: Path) -> dict:
    """Export with ``--hf``, load with transformers alone, and recompute the held-out loss:
    it must be the run's final test loss (the same weights, the same windows)."""
    import torch
    import transformers
    from omegaconf import OmegaConf

    from sparse_runner.data import build_data, dataset_with_model_defaults
    from sparse_runner.tasks.language_model import TokenAccumulator

    folder = run_dir / "hf_export"
    proc = subprocess.run(["sparse-run-report", "export", str(run_dir), "--hf", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"export_error": proc.stderr.strip().splitlines()[-1:]}
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data = build_data(dataset_with_model_defaults(cfg.dataset, cfg.model), batch_size=1,
                      eval_batch_size=cfg.trainer.eval_batch_size, seed=cfg.seed,
                      device=torch.device("cpu"), num_workers=0)
    acc = TokenAccumulator()
    with torch.no_grad():
        for x, y in data.test.batches(0):
            acc.update(model(input_ids=x).logits, y)
    return {"export_test_loss": acc.metrics_from(acc.sums())["loss"]}


def one(name: str, root: Path, export_only: bool = False) -> dict:
    cmd = command(name, root)
    proc = subprocess.CompletedProcess(cmd, 0, "", "") if export_only else \
        subprocess.run(cmd, capture_output=True, text=True)
    row: dict = {"run": name, "command": " ".join(c if " " not in c else f"'{c}'" for c in cmd[:-1])}
    summary_path = root / name / "summary.json"
    if proc.returncode != 0 or not summary_path.is_file():
        return {**row, "error": proc.stderr.strip().splitlines()[-1:] or ["no summary"]}
    s = json.loads(summary_path.read_text())
    m, fl = s["metrics"], s["flops"]
    return {**row, "wall_s": round(s["time"]["wall_s"], 1), "tok_per_s": round(s["time"]["tok_per_s"]),
            "test_loss": m["test_loss"], "test_bpc": m["test_bpc"], "steps": m["steps"],
            "train_flops": fl["train_total"], "fwd_flops_per_token": fl["sparse_fwd"],
            "dense_baseline_fwd_per_token": fl["dense_baseline_fwd"],
            "isoflop_rel_error": s.get("isoflop", {}).get("rel_error"),
            "params_total": s["model"]["params_total"], "params_nonzero": s["model"]["params_nonzero"],
            "world_size": (s.get("distributed") or {}).get("world_size", 1),
            **export_check(root / name)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--dir", default="hf_runs")
    p.add_argument("--export-only", action="store_true",
                   help="only the export check of finished runs under --dir")
    args = p.parse_args()
    rows = []
    for name in args.runs:
        rows.append(one(name, Path(args.dir), args.export_only))
        print(json.dumps(rows[-1]), flush=True)
    import transformers
    result = {"date": time.strftime("%Y-%m-%d"), "host_cpus": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "python": sys.version.split()[0], "transformers": transformers.__version__,
              "unigram_entropy_nats": 3.33, "runs": rows}
    path = Path(args.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
