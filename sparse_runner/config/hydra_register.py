"""Registers sparse-run's Hydra plugins with Hydra by name, whatever the install.

Hydra 1.3 finds plugins by walking the ``hydra_plugins`` namespace package with ``pkgutil``
(``hydra/core/plugins.py``). An editable install (``pip install -e .``) serves this project's
packages through setuptools' import hook, whose path entries ``pkgutil`` cannot list, so that
scan misses ``hydra_plugins.sparse_run_grids`` and every table preset failed with "Unknown
plugin class". Importing the classes normally and handing them to
``Plugins.instance().register`` (Hydra's own route for registering a plugin by hand) works for
editable, regular and wheel installs, from any working directory. A class the scan already
found is left as it is (no second copy).
"""
from __future__ import annotations

import importlib

# every plugin class this project ships (their module must live under ``hydra_plugins.``)
PLUGIN_CLASSES = ("hydra_plugins.sparse_run_grids.grids_sweeper.GridsSweeper",)


def register_hydra_plugins() -> None:
    """Make sure Hydra knows every class of :data:`PLUGIN_CLASSES` (idempotent, cheap)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    for path in PLUGIN_CLASSES:
        if path not in plugins.class_name_to_class:
            module, name = path.rsplit(".", 1)
            plugins.register(getattr(importlib.import_module(module), name))
