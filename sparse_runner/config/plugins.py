"""User plugins: modules that register a method (or any component) from outside the package.

``SPARSE_RUN_PLUGINS=my_methods,/path/to/other.py sparse-run method=mine ...`` imports each
entry (a module name or a ``.py`` path) before Hydra composes the config, so a method defined
in the user's own file is as much ``method=<name>`` as the built-in ones.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from ..utils.errors import UserError

ENV = "SPARSE_RUN_PLUGINS"


def load(entry: str) -> ModuleType:
    """Import one plugin: a dotted module name or the path of a ``.py`` file."""
    if entry.endswith(".py"):
        path = Path(entry).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"{ENV}: no file {path}; give a .py path or a module name")
        name = f"sparse_run_plugin_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(entry)
    except ImportError as exc:
        raise UserError(f"{ENV}: cannot import {entry!r} ({exc}); check the name or PYTHONPATH") \
            from None


def load_from_env() -> list[ModuleType]:
    """Import every plugin listed in ``$SPARSE_RUN_PLUGINS`` (comma-separated)."""
    entries = [e.strip() for e in os.environ.get(ENV, "").split(",") if e.strip()]
    return [load(e) for e in entries]
