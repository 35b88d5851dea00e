"""Which settings define a run's trajectory, and comparing them when a run is resumed or rerun.

The trajectory config is the resolved config minus :data:`NOT_TRAJECTORY`: settings that
change where and how a run reports or executes, never the weights it computes. Everything else
(model, data, method, sparsity, optimizer, schedule, seed, batch sizes, epochs, ...) must match
for a resume to continue the same run bit for bit.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf, open_dict

from ..utils.errors import UserError

# Keys that may differ between the start and a resume of one run (documented in the README).
NOT_TRAJECTORY = (
    "out_dir",                  # where it is written
    "resume",                   # how it was started
    "logger",                   # metrics mirrors (wandb mode, project, tags ...)
    "run",                      # dry_run, device, on_conflict
    "trainer.progress",         # progress bar
    "trainer.log_every",        # how often train events are logged
    "trainer.stop_after_steps", # time slicing of one run into several jobs
    "trainer.eval_batch_size",  # evaluation batching (the training steps are unchanged)
    "trainer.compile",          # torch.compile: the same computation, compiled
    "sparse.backend",           # masked | condensed: the same math (checkpoints are converted)
    "dataset.root",             # where the files are
    "dataset.download",         # whether they may be fetched
)


def trajectory_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without the keys that do not change the trajectory."""
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in NOT_TRAJECTORY:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
        cfg.pop("hydra", None)
    return json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True), default=str))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(saved: Mapping[str, Any], ours: Mapping[str, Any]) -> list[str]:
    """``key: saved -> ours`` for every trajectory setting that differs (sorted by key)."""
    a, b = flatten(saved), flatten(ours)
    missing = object()
    # another option of a group (optimizer.name differs): that one line stands for the group
    swapped = {k[: -len(".name")] for k in set(a) | set(b)
               if k.endswith(".name") and a.get(k, missing) != b.get(k, missing)}
    out = []
    for key in sorted(set(a) | set(b)):
        if key.split(".")[0] in NOT_TRAJECTORY or key in NOT_TRAJECTORY:
            continue
        if not key.endswith(".name") and any(key.startswith(p + ".") for p in swapped):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            out.append(f"{key}: {_show(va, missing)} -> {_show(vb, missing)}")
    return out


def _show(value: Any, missing: object) -> str:
    return "(unset)" if value is missing else json.dumps(value)


def describe(diff: list[str], limit: int = 4) -> str:
    shown = "; ".join(diff[:limit])
    return shown + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")


# The old (pre-config) checkpoints carry only these keys.
FINGERPRINT_KEYS = ("model.name", "dataset.name", "method.name", "ift.name", "s", "seed",
                    "distribution.name", "trainer.batch_size", "trainer.epochs")


def saved_config(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The trajectory config a checkpoint was written under (None if it predates that field)."""
    config = payload.get("config")
    return config if isinstance(config, dict) else None


def check_resume(payload: Mapping[str, Any], cfg: DictConfig, path: Any) -> None:
    """Refuse to resume from a checkpoint written under other trajectory settings."""
    ours = trajectory_config(cfg)
    saved = saved_config(payload)
    if saved is not None:
        diff = differences(saved, ours)
    else:  # an older checkpoint: compare what it recorded
        theirs = payload.get("fingerprint")
        if not isinstance(theirs, dict):
            raise UserError(f"checkpoint {path} was not written by sparse-run (no record of its "
                            "settings); point resume= at a sparse-run run directory")
        flat = flatten(ours)
        diff = [f"{k}: {json.dumps(theirs.get(k))} -> {json.dumps(flat.get(k))}"
                for k in FINGERPRINT_KEYS if theirs.get(k) != flat.get(k)]
    if diff:
        raise UserError(f"checkpoint {path} belongs to a different run ({describe(diff)}); resume "
                        "with the same settings or choose a new out_dir")


REQUIRED = ("model", "masks", "step", "optimizer", "method", "state", "rng")


def check_payload(payload: Any, path: Any) -> None:
    """A loaded checkpoint must be a sparse-run checkpoint with every section a resume needs."""
    if not isinstance(payload, dict):
        raise UserError(f"cannot resume from {path}: it holds a {type(payload).__name__}, not a "
                        "sparse-run checkpoint; point resume= at a run directory or its last.pt")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise UserError(f"cannot resume from {path}: not a complete sparse-run checkpoint "
                        f"(missing {', '.join(missing)}); point resume= at a run directory")

