"""``sparse-run-bench <name> [options]``: speed benchmarks that print ratios measured side by side.

Each benchmark is a module of this package with ``main(argv) -> int``; ``--help`` after the
name lists its options. Recorded runs go to ``benchmarks/results/*.json``.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys

__all__ = ["main"]


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sparse-run-bench {" + ",".join(names) + "} [options]")
        print(__doc__.strip().splitlines()[0])
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"sparse-run-bench: error: unknown benchmark {name!r}; valid: {', '.join(names)}",
              file=sys.stderr)
        return 2
    return int(importlib.import_module(f"{__name__}.{name}").main(rest) or 0)
