"""Checking the command line before Hydra sees it, so mistakes are one line with the fix.

Hydra reports an unknown key as a five-line trace with exit code 1 and suggests ``+key=value``,
which it then accepts silently although nothing reads the key. Here every ``key=value`` is
looked up in the config the run would compose (for every option a sweep names), and a
misspelt key gets the closest valid one ("did you mean trainer.epochs?"). The keys the run reads
are exactly the keys of that composed config: every option declares its keys with defaults in
``conf/``, so ``+key`` is only needed for the entries of open maps (such as
``distribution.overrides``); ``+group=option`` for a config group is accepted as ``group=option``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import UserError, one_line

CONF_PACKAGE = "sparse_runner.conf"
OPEN_MAPS = ("distribution.overrides",)  # maps whose entries the user names (``+k.glob=v``)
# Hydra flags that take the next argument as their value.
VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--info",
               "-i", "--experimental-rerun", "--shell-completion", "-sc", "--cfg", "-c",
               "--package", "-p"}
_MISSING = object()


def group_options(group: str) -> list[str]:
    """Option names of a config group: the yaml files in ``conf/<group>/`` and the structured
    configs registered in Hydra's ConfigStore (every ``method=<name>``)."""
    from hydra.core.config_store import ConfigStore

    folder = resources.files(CONF_PACKAGE) / group  # importing it registers the schemas
    names = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")} \
        if folder.is_dir() else set()
    try:
        names |= {n.removesuffix(".yaml") for n in ConfigStore.instance().list(group)}
    except OSError:  # no such group in the store
        pass
    return sorted(names)


def groups() -> list[str]:
    """The config groups: folders of ``conf/`` and groups of the ConfigStore (``method``)."""
    from hydra.core.config_store import ConfigStore

    root = resources.files(CONF_PACKAGE)
    names = {p.name for p in root.iterdir()
             if p.is_dir() and not p.name.startswith("_") and p.name != "hydra"}
    names |= {n for n in ConfigStore.instance().list("") if "." not in n and n != "hydra"}
    return sorted(names)


@dataclass
class Arg:
    text: str
    prefix: str          # "", "+", "++", "~"
    key: str
    values: list[str]
    sweep: bool = False  # a sweep override (a,b / choice(...) / range(...)), even of one value

    @property
    def is_group(self) -> bool:
        return "." not in self.key and self.key in groups()


def parse(argv: list[str]) -> list[Arg]:
    """The overrides among ``argv`` (flags and their values skipped; malformed ones left to
    Hydra, which reports them in one line itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out, skip = OverridesParser.create(), [], False
    for arg in argv:
        if skip or arg.startswith("-"):
            skip = not skip and arg.split("=")[0] in VALUE_FLAGS and "=" not in arg
            continue
        if "=" not in arg and not arg.startswith("~"):
            continue
        try:
            (ov,) = parser.parse_overrides([arg])
        except Exception:
            continue
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        if ov.is_sweep_override():
            values = [str(v) for v in ov.sweep_string_iterator()]
        else:
            value = ov.value() if "=" in arg else None
            values = [] if value is None else [str(value)]
        out.append(Arg(arg, prefix, ov.key_or_group, values, ov.is_sweep_override()))
    return out


def defer_swept_group_keys(argv: list[str]) -> list[str]:
    """Make the keys of a swept group per-job overrides.

    In ``sparse-run -m method=rigl,set method.delta_t=50`` every job reads ``method.delta_t``,
    but Hydra first composes the sweep's own config with the group's *default* option, which may
    lack the key (``method=dense``), and fails. A one-value sweep, ``method.delta_t=choice(50)``,
    is not applied there, only to each job. (:func:`check_keys` has checked the key against
    every option the sweep names.)"""
    if not any(a in ("-m", "--multirun") for a in argv):
        return argv
    args = {a.text: a for a in parse(argv)}
    swept = {a.key for a in args.values() if a.is_group and a.sweep}
    out = []
    for arg in argv:
        a = args.get(arg)
        if a is not None and not a.sweep and not a.prefix and a.values \
                and a.key.split(".")[0] in swept:
            key, _, value = arg.partition("=")
            arg = f"{key}=choice({value})"
        out.append(arg)
    return out


def normalise(argv: list[str]) -> list[str]:
    """``+group=option`` for a group of the defaults list means ``group=option``."""
    args = {a.text: a for a in parse(argv)}
    return [arg[1:] if arg in args and args[arg].prefix == "+" and args[arg].is_group else arg
            for arg in argv]


def check_group_options(args: list[Arg]) -> None:
    for a in args:
        options = group_options(a.key) if a.is_group else []
        for value in a.values:
            if options and value not in options and value != "null":
                raise UserError(f"unknown {a.key} {value!r}; valid: {', '.join(options)}")


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONF_PACKAGE, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__   # Hydra wraps OmegaConf's reason
        reason = f" ({one_line(cause).split(' full_key:')[0]})" if cause is not None else ""
        raise UserError(f"cannot compose the config: {one_line(exc)}{reason}; fix the value "
                        "(sparse-run --help lists every group and key)") from None
    finally:
        GlobalHydra.instance().clear()


def variants(args: list[Arg]) -> list[list[str]]:
    """Group choices to check keys against: the first of every sweep, then each other option
    of a swept group in turn (a key must exist for every job of the sweep)."""
    chosen = [a for a in args if a.is_group and a.prefix != "~" and a.values]
    first = [f"{a.key}={a.values[0]}" for a in chosen]
    out = [first]
    for i, a in enumerate(chosen):
        for value in a.values[1:]:
            out.append(first[:i] + [f"{a.key}={value}"] + first[i + 1:])
    return out


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            path = f"{prefix}{k}"
            keys.append(path)
            keys += all_keys(cfg._get_node(k), f"{path}.")
    return keys


def _suggest(key: str, cfg: DictConfig) -> str:
    close = difflib.get_close_matches(key, all_keys(cfg) + groups(), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "; `sparse-run --help` lists the groups"


def _under_open_map(key: str) -> bool:
    return any(key.startswith(m + ".") for m in OPEN_MAPS)


def check_key(a: Arg, cfg: DictConfig, choice: str) -> None:
    where = f" (with {choice})" if choice else ""
    exists = OmegaConf.select(cfg, a.key, default=_MISSING) is not _MISSING
    if a.prefix == "+" and exists:
        raise UserError(f"{a.text}: {a.key} is already set{where}; drop the '+' "
                        f"({a.text.lstrip('+')})")
    if exists or (a.prefix in ("+", "++") and _under_open_map(a.key)):
        return
    if a.prefix in ("+", "++"):
        raise UserError(f"{a.text}: the run does not read {a.key}{where}{_suggest(a.key, cfg)}")
    raise UserError(f"unknown key {a.key}{where}{_suggest(a.key, cfg)}")


def check_keys(argv: list[str]) -> None:
    """Raise UserError for unknown group options and keys the run does not read."""
    args = parse(argv)
    check_group_options(args)
    keys = [a for a in args if not a.is_group and not a.key.startswith("hydra")]
    if not keys:
        return
    choices = variants(args)
    for choice in choices:
        cfg = compose(choice)
        for a in keys:
            check_key(a, cfg, " ".join(choice) if len(choices) > 1 else "")
    first = [a.text if not a.values or len(a.values) < 2 else f"{a.prefix}{a.key}={a.values[0]}"
             for a in args if not a.key.startswith("hydra")]
    compose(first)  # anything else Hydra would reject (e.g. a value of the wrong type)
