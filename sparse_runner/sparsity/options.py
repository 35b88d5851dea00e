"""Typed method options: one dataclass per method, its defaults written once, there.

A method declares ``Options`` (a dataclass whose fields are its ``method.*`` keys). The same
dataclass is the Hydra schema of ``method=<name>`` (registered in the ConfigStore by
:func:`~sparse_runner.sparsity.method.register`), so the command line, experiment presets and
the Python API all see the same keys and defaults, and a misspelt key is an error, never ignored.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping, TypeVar

from ..utils.errors import UserError

O = TypeVar("O")


@dataclasses.dataclass
class MethodOptions:
    """Keys every method has: ``name`` (the registry key of ``method=<name>``)."""

    name: str = ""


def parse_options(cls: type[O], method: str, cfg: Mapping[str, Any]) -> O:
    """``cls`` from ``cfg`` (defaults for missing keys); an unknown key is a one-line error."""
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in cfg:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean method.{close[0]}? " if close else ""
            raise UserError(f"method={method} has no option {key!r}; {hint}valid: "
                            f"{', '.join(k for k in valid if k != 'name')}")
    values = {k: v for k, v in cfg.items() if v is not None or _optional(cls, k)}
    values["name"] = method
    return cls(**values)


def _optional(cls: type, key: str) -> bool:
    field = next(f for f in dataclasses.fields(cls) if f.name == key)
    return "None" in str(field.type) or "Optional" in str(field.type)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check(ok: bool, method: str, message: str) -> None:
    """Raise the one-line ``method=<name>: <message>`` error unless ``ok``."""
    if not ok:
        raise UserError(f"method={method}: {message}")


def check_choice(method: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    check(value in choices, method, f"{key}={value!r}; valid: {', '.join(choices)}")


def check_bool(method: str, key: str, value: Any) -> None:
    check(isinstance(value, bool), method, f"{key} must be true or false")
