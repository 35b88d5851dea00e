"""Every method x IFT family on tiny transformers models (gpt2, llama; 2 layers, width 64) at smoke
size: 6 steps on Shakespeare, in-process. Records completed / error and the Iso-FLOP error.

    python benchmarks/hf_methods_smoke.py --out benchmarks/results/hf_methods_smoke_<date>.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hf_shakespeare import TINY  # noqa: E402

METHODS = ["dense", "static", "set", "rigl", "srigl", "granet", "snip", "grasp", "force", "l0", "nm"]
IFTS = ["none", "wide", "parallel", "factorized", "doped"]
SMOKE = ["dataset=shakespeare", "dataset.block_size=32", "dataset.eval_tokens=1024",
         "trainer.progress=false", "run.device=cpu", "trainer.batch_size=4", "trainer.max_steps=6"]


def overrides(arch: str, method: str, ift: str) -> list[str]:
    dst = ["method.delta_t=2"] if method in ("set", "rigl", "srigl", "granet") else []
    return ["model=hf", f"model.arch={arch}", f"model.config={TINY[arch]}", *SMOKE,
            f"method={method}", "s=0" if method == "dense" else "s=0.5", f"ift={ift}", *dst]


def main() -> int:
    from hydra import compose, initialize_config_module

    from sparse_runner.run import run

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--archs", nargs="+", default=["gpt2", "llama"], choices=list(TINY))
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--ifts", nargs="+", default=IFTS, choices=IFTS)
    args = p.parse_args()
    root, rows = Path(tempfile.mkdtemp()), []
    with initialize_config_module(config_module="sparse_runner.conf", version_base="1.3"):
        for arch in args.archs:
            for method in args.methods:
                for ift in (["none"] if method == "dense" else args.ifts):
                    ov = overrides(arch, method, ift)
                    row = {"command": "sparse-run " + " ".join(ov)}
                    try:
                        s = run(compose(config_name="config", overrides=ov),
                                root / f"{arch}_{method}_{ift}")
                        row |= {"status": s["status"], "test_loss": s["metrics"].get("test_loss"),
                                "isoflop_rel_error": (s.get("isoflop") or {}).get("rel_error")}
                    except Exception as exc:  # noqa: BLE001  (recorded, the sweep goes on)
                        row |= {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
