"""Checkpoints across backends: dense <-> condensed storage of the sparse layers, model AND
optimizer state, so that a run resumes on either ``sparse.backend``.

A masked (dense) checkpoint holds ``<layer>.weight``; a condensed one holds ``<layer>.values``
and ``<layer>.index`` for every layer that ran a kernel (condensed_params.py). Both hold the
masks, and the masked backend keeps weights and optimizer state exactly zero off the mask,
so nothing is lost either way: condensed = gather at ``ell_from_mask(mask)`` (the index the
condensed backend builds), dense = scatter into zeros. Optimizer state tensors shaped like
the parameter (momentum, Adam moments) are converted the same way; scalars (``step``) are
kept. Which optimizer entry is which parameter: ``param_names`` (recorded in checkpoints, in
the optimizer's order) or the resuming run's own order (:func:`optimizer_names`).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..kernels import ell_from_mask
from .condensed_params import gather_ell, scatter_ell, store_of

DENSE, CONDENSED = "dense", "condensed"


def _base(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _weight_of(name: str) -> str:
    """The dense weight name a stored parameter stands for ("" for any other parameter)."""
    base, _, leaf = name.rpartition(".")
    return f"{base}.weight" if leaf in ("weight", "values") else ""


def optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names of ``model`` in ``optimizer``'s order (its state_dict's ids)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names.get(id(p), "") for g in optimizer.param_groups for p in g["params"]]


def live_layout(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, str]:
    """How ``model`` stores each masked weight: dense or condensed."""
    modules = dict(model.named_modules())
    return {n: CONDENSED if store_of(modules.get(_base(n), nn.Module())) is not None else DENSE
            for n in masks}


def stored_layout(model_state: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, str]:
    """How a checkpoint's model state stores each masked weight."""
    return {n: CONDENSED if f"{_base(n)}.values" in model_state else DENSE for n in masks}


def _converter(target: str, index: Tensor, shape: tuple[int, ...]) -> Any:
    if target == CONDENSED:
        return lambda t: gather_ell(t, index)
    return lambda t: scatter_ell(t, index, shape)


def _convert_optimizer(opt: Mapping[str, Any], names: list[str], shapes: Mapping[str, Any],
                       jobs: Mapping[str, tuple[str, Tensor, tuple[int, ...]]]) -> dict[str, Any]:
    """Convert the state entries of the parameters in ``jobs`` (weight name -> (target,
    index, dense shape)); ``shapes``: each parameter's shape as stored before conversion."""
    ids = [i for g in opt["param_groups"] for i in g["params"]]
    if len(ids) != len(names):
        raise ValueError(f"the optimizer has {len(ids)} parameters, the names list {len(names)}")
    state = dict(opt["state"])
    for pid, pname in zip(ids, names):
        weight = _weight_of(pname)
        if weight not in jobs or pid not in state or pname not in shapes:
            continue
        fn, shape = _converter(*jobs[weight]), shapes[pname]
        state[pid] = {k: fn(v) if torch.is_tensor(v) and v.shape == shape else v
                      for k, v in state[pid].items()}
    return {**opt, "state": state}


def convert(payload: Mapping[str, Any], layout: Mapping[str, str],
            names: list[str] | None = None) -> dict[str, Any]:
    """The checkpoint ``payload`` with every masked weight stored as ``layout`` says
    (weight name -> dense | condensed; absent names are left as stored). ``names``: the
    optimizer's parameter names when the checkpoint does not record ``param_names``."""
    masks = payload["masks"]
    model = dict(payload["model"])
    have = stored_layout(model, masks)
    todo = {n: t for n, t in layout.items() if n in masks and have[n] != t}
    if not todo:
        return dict(payload)
    jobs, new_model = {}, dict(model)
    for weight, target in todo.items():
        base, mask = _base(weight), masks[weight].bool()
        if target == CONDENSED:
            index = ell_from_mask(mask)
            w = new_model.pop(weight)
            new_model[f"{base}.values"] = gather_ell(w, index)
            new_model[f"{base}.index"] = index
        else:
            index = new_model.pop(f"{base}.index")
            new_model[weight] = scatter_ell(new_model.pop(f"{base}.values"), index,
                                            tuple(mask.shape))
        jobs[weight] = (target, index, tuple(mask.shape))
    out = {**payload, "model": new_model}
    order = list(payload.get("param_names") or names or [])
    if "optimizer" in payload and payload["optimizer"].get("state"):
        if not order:
            raise ValueError("the checkpoint does not record which optimizer state belongs to "
                             "which parameter (param_names)")
        shapes = {n: t.shape for n, t in model.items()}
        out["optimizer"] = _convert_optimizer(payload["optimizer"], order, shapes, jobs)
    if order:
        out["param_names"] = [_renamed(n, todo) for n in order]
    return out


def _renamed(name: str, todo: Mapping[str, str]) -> str:
    weight = _weight_of(name)
    if weight not in todo:
        return name
    return f"{_base(name)}.values" if todo[weight] == CONDENSED else weight


def convert_checkpoint(payload: Mapping[str, Any], to: str,
                       names: list[str] | None = None) -> dict[str, Any]:
    """Every masked weight of ``payload`` stored ``to`` = dense | condensed (the converter)."""
    if to not in (DENSE, CONDENSED):
        raise ValueError(f"to={to!r}; valid: {DENSE}, {CONDENSED}")
    return convert(payload, {n: to for n in payload["masks"]}, names)


def adapt(payload: Mapping[str, Any], model: nn.Module,
          optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The checkpoint converted to how the resuming run stores each layer (its backend and
    per-layer choice may differ from the run that wrote it)."""
    masks = payload.get("masks") or {}
    return convert(payload, live_layout(model, masks), optimizer_names(model, optimizer))


def main(argv: list[str] | None = None) -> int:
    """``sparse-run-report convert CHECKPOINT --to dense|condensed [--out PATH]``."""
    import argparse
    from pathlib import Path

    from ..outputs import checkpoint as ckpt
    from ..utils.errors import UserError

    parser = argparse.ArgumentParser(
        prog="sparse-run-report convert",
        description="Store a checkpoint's sparse layers dense (sparse.backend=masked) or "
                    "condensed (values + index), model and optimizer state; resume converts "
                    "by itself, this is for other tools.")
    parser.add_argument("checkpoint", type=Path, help="a .pt file written by sparse-run")
    parser.add_argument("--to", required=True, choices=(DENSE, CONDENSED))
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: CHECKPOINT with .<to>.pt)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        raise UserError(f"no checkpoint at {args.checkpoint}; give a .pt file")
    payload = ckpt.load(args.checkpoint)
    if not isinstance(payload, dict) or not payload.get("masks") or "model" not in payload:
        raise UserError(f"{args.checkpoint} holds no masked model (a dense run or not a "
                        "sparse-run checkpoint): nothing to convert")
    try:
        out = convert_checkpoint(payload, args.to)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot convert {args.checkpoint}: {exc}") from None
    path = args.out or args.checkpoint.with_suffix(f".{args.to}.pt")
    ckpt.save(path, out)
    print(f"wrote {path} ({args.to})")
    return 0
