"""``sparse-run-report ift-table``: the paper's Table 1 and the size of every Sparse-IFT member.

    sparse-run-report ift-table [--model resnet18] [--dataset cifar100] [--s 0.5 0.75 0.9]
                                [--distribution uniform] [--members wide parallel ...]
    sparse-run-report ift-table model=mobilenetv2 dataset=cifar100 --s 0.5 0.75
    sparse-run-report ift-table model=gpt3_small dataset=shakespeare model.block_size=256

Table 1 (search-space cardinality) is given per layer by the paper's formulas and summed here
over the model's sparse layers (stem and head stay dense; Doped counts its sparse matrix, its
low-rank factors are dense and not searched). The second table lists, for each member at each
s, its structure (width, branches, ranks), parameters, nonzeros and forward FLOPs per sample
after the Iso-FLOP search. Everything is built on the meta device: seconds, no data, no GPU.
"""
from __future__ import annotations

import argparse
import sys
from importlib import resources
from typing import Any, Mapping, Sequence

from ..utils.errors import UserError
from ..flops.tables import human
from ..methods import build_method
from ..sparsity import planned_nnz
from . import describe_ift
from .survey import MEMBERS, PAPER_S, Member, Survey, search

CARDINALITY = {"none": "Din·Dout", "wide": "k_sw²·Din·Dout", "parallel": "k_sp·Din·Dout",
               "factorized": "d_sf·(Din+Dout)", "doped": "Din·Dout"}


def structure(member: Member) -> str:
    """Width, branch count or rank range of a member, as the paper parameterises it."""
    info = describe_ift({"name": member.ift}, member.s, member.model)
    if member.ift in ("none", "wide"):
        first = member.table.layers[0].shape
        # a model without a stem (GPT) is described by its first layer's input width (d_model)
        has_stem = "stem" in getattr(member.model, "dense_layers", ("stem",))
        width = f"stem {first[0]}" if has_stem else f"d_model {first[1]}"
        return width + (f" (k_sw={info['k_sw']:.3f})" if member.ift == "wide" else "")
    layers = info.get("layers", {}).values()
    if member.ift == "parallel":
        return f"b={info['branches']}"
    ranks = sorted(v["rank"] for v in layers)
    return f"d={ranks[0]}..{ranks[-1]}" if ranks else "d=0"


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_tables(survey: Survey, s_values: Sequence[float], members: Sequence[str],
                 distribution: str = "uniform") -> str:
    method, dist = build_method({"name": "static"}), {"name": distribution}
    target = survey.baseline.dense_fwd()
    dense = survey.member("none", 0.0)
    card_rows = [["dense", CARDINALITY["none"], *[human(dense.sparse_weights())] * len(s_values)]]
    size_rows = [["dense", "-", structure(dense), human(dense.params()), human(dense.params()),
                  human(target), human(target), "-", "-"]]
    for ift in members:
        card = [CARDINALITY[ift]]
        for s in s_values:
            m = survey.member(ift, s)
            card.append(f"{human(m.sparse_weights())} ({m.sparse_weights() / dense.sparse_weights():.2f}x)")
            iso = search(m, target, method, dist, survey)
            nnz = planned_nnz(m.table, m.sparse, iso.sparsity, dist, trim=iso.trim)
            nonzero = m.params() - sum(m.table[n].numel - nnz[n] for n in m.sparse)
            size_rows.append([ift, s, structure(m), human(m.params()), human(nonzero),
                              human(m.table.dense_fwd()), human(iso.flops),
                              f"{iso.sparsity:.4f}", f"{iso.rel_error:.1e}"])
        card_rows.append([ift, *card])
    title = (f"Sparse-IFT members of {model_label(survey.model_cfg)} for input "
             f"{'x'.join(map(str, survey.shape))}, {survey.num_classes} classes; stem and head "
             f"dense, {distribution} distribution, sparsity from the Iso-FLOP search")
    return "\n\n".join([
        title,
        "Table 1: search-space cardinality (weights a sparse method explores), summed over the "
        "sparse layers",
        markdown(["member", "per layer", *[f"s={s}" for s in s_values]], card_rows),
        "Parameters (all, incl. norms) and forward FLOPs per sample",
        markdown(["member", "s", "structure", "params", "nonzero", "dense fwd", "sparse fwd",
                  "s effective", "rel. error"], size_rows),
    ])


def model_label(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get("arch") or cfg["name"])


def model_config(name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """``model=<preset or family>`` plus ``model.<key>=<value>`` overrides, as the run's
    config group would compose them (conf/model/<name>.yaml when it exists)."""
    import yaml

    path = resources.files("sparse_runner.conf") / "model" / f"{name}.yaml"
    cfg = dict(yaml.safe_load(path.read_text()) or {}) if path.is_file() else {"name": name}
    for item in overrides:
        key, _, value = item.partition("=")
        if not key.startswith("model.") or not _:
            raise UserError(f"ift-table does not understand {item!r}; use model=<name>, "
                            "model.<key>=<value> or dataset=<name>")
        cfg[key[len("model."):]] = yaml.safe_load(value)
    return cfg


def split_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str], list[str]]:
    """Hydra-style ``model=...``/``dataset=...`` and ``model.key=value`` tokens out of argv."""
    flags, groups, keys = [], {}, []
    for item in argv:
        key, eq, value = item.partition("=")
        if item.startswith("-") or not eq:
            flags.append(item)
        elif key in ("model", "dataset"):
            groups[key] = value
        else:
            keys.append(item)
    return flags, groups, keys


def main(argv: list[str] | None = None) -> int:
    """``sparse-run-report ift-table [model=<preset> model.<key>=<v> dataset=<name>] [--s ...]``."""
    flags, groups, keys = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="sparse-run-report ift-table",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=groups.get("model", "resnet18"))
    parser.add_argument("--dataset", default="cifar100",
                        help="sets input channels, classes and image size")
    parser.add_argument("--s", type=float, nargs="+", default=list(PAPER_S))
    parser.add_argument("--distribution", default="uniform", choices=["uniform", "er", "erk"])
    parser.add_argument("--members", nargs="+", default=list(MEMBERS), choices=list(MEMBERS))
    args = parser.parse_args(flags)
    dataset = groups.get("dataset", args.dataset)
    survey = Survey.for_dataset(model_config(args.model, keys), dataset)
    print(build_tables(survey, args.s, args.members, args.distribution))
    return 0
