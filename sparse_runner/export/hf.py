"""``sparse-run-report export <run> --hf <folder>``: a ``model=hf`` run as a transformers
checkpoint that ``AutoModelForCausalLM.from_pretrained(<folder>)`` loads.

The folder holds what ``save_pretrained`` writes (``config.json``, ``model.safetensors``, ...)
with the pruned weights exact zeros, ``sparse_masks.safetensors`` (one bool mask per sparse
weight, under the transformers parameter name and in its layout: GPT-2's Conv1D masks are
transposed like its weights) and ``sparse_run_config.yaml`` (the run's whole config);
``config.json`` gets a ``sparse_run`` entry (method, s, ift, the mask file). The model is rebuilt
from the run's config (the vocabulary from the checkpoint), so ``ift=none`` and ``ift=wide``
runs export; the other families replace Linear layers with modules transformers does not have.
The folder is written beside the target and renamed into place, so it appears complete or not at
all.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from torch import Tensor

from ..outputs import checkpoint as ckpt
from ..utils.errors import UserError
from ..ift.wide import Width
from ..outputs.fsio import atomic_write_text
from ..models.hf import HFCausalLM, build_hf, to_transformers
from ..models.hf_config import pretrained_folder, transformers_module
from ..sparsity.condensed_ckpt import convert_checkpoint

MASKS_FILE = "sparse_masks.safetensors"
CONFIG_FILE = "sparse_run_config.yaml"
_PREFIX = "hf."


def run_config(run_dir: Path) -> Any:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} has no .hydra/config.yaml; give a sparse-run run directory")
    cfg = OmegaConf.load(path)
    if cfg.model.name != "hf":
        raise UserError(f"--hf exports model=hf runs; {run_dir} trained model={cfg.model.name} "
                        "(export it without --hf)")
    if cfg.ift.name not in ("none", "wide"):
        raise UserError(f"--hf exports ift=none or ift=wide runs; ift={cfg.ift.name} replaces "
                        "Linear layers with modules transformers does not have")
    return cfg


def rebuild(cfg: Any, state: Mapping[str, Tensor]) -> HFCausalLM:
    """The run's model with the checkpoint's weights (dense layout)."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
    vocab = int(state[f"{_PREFIX}lm_head.weight"].shape[0])
    width = Width(float(cfg.s)) if cfg.ift.name == "wide" else 1.0
    options["pretrained"], pretrained = None, options.get("pretrained")
    if pretrained:  # the architecture only: every weight comes from the checkpoint
        options["config_path"] = str(_pretrained_config(pretrained))
    model = build_hf(num_classes=vocab, seq_len=0, width_mult=width, **options)
    model.load_state_dict(state)
    return model


def _pretrained_config(name: Any) -> Path:
    return pretrained_folder(transformers_module(), name) / "config.json"


def hf_masks(model: HFCausalLM, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Masks under transformers' parameter names and layout (Conv1D: transposed)."""
    out = {}
    for name, mask in masks.items():
        module = name.rsplit(".", 1)[0][len(_PREFIX):]
        m = mask.bool()
        out[name[len(_PREFIX):]] = (m.t() if module in model.transposed else m).contiguous()
    return out


def export_hf(run_dir: Path, out: Path, checkpoint: str = ckpt.LAST) -> dict[str, Tensor]:
    """Write the folder; returns the masks as written."""
    cfg = run_config(run_dir)
    path = run_dir / "checkpoints" / checkpoint
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; give a run directory that has trained")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--hf {out} exists and is not empty; give a new folder")
    payload = ckpt.load(path)
    masks = payload.get("masks") or {}
    state = convert_checkpoint({"model": payload["model"], "masks": masks}, "dense")["model"]
    model = rebuild(cfg, state)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))  # pruned weights exact zeros
    hf = to_transformers(model)
    written = hf_masks(model, masks)
    hf.config.sparse_run = {"method": str(cfg.method.name), "s": float(cfg.s),
                            "ift": str(cfg.ift.name), "masks": MASKS_FILE if masks else None,
                            "config": CONFIG_FILE}
    _write(out, hf, written, OmegaConf.to_yaml(cfg))
    return written


def _write(out: Path, hf: Any, masks: dict[str, Tensor], cfg_yaml: str) -> None:
    from safetensors.torch import save_file
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hf.save_pretrained(str(tmp))
        if masks:
            save_file(masks, str(tmp / MASKS_FILE))
        atomic_write_text(tmp / CONFIG_FILE, cfg_yaml)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; pick another --hf "
                        "folder") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
