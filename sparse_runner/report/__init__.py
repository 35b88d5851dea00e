"""``sparse-run-report``: turn a sweep directory into tables (markdown, CSV, HTML) and plots.

    sparse-run-report <sweep dir>            a table preset's sweep: the paper's layout beside the
                                             published numbers (report.{md,csv,html}); any other
                                             sweep: per-run table + mean/std, report.{md,csv,png}
    sparse-run-report <subcommand> [...]     other reports (``sparse-run-report --help`` lists them)

The preset is detected from the runs' Hydra configs (the ``preset`` block every
``conf/experiment/sift_*`` / ``srigl_*`` preset sets). Accuracies are the *final* test
accuracies (picking the best epoch on the test set flatters a method). A damaged summary.json
costs one warning line, never the report.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

from ..outputs.checkpoint import atomic_write_bytes
from ..utils.errors import UserError, one_line
from ..utils.optional import collect
from . import html as html_page
from .claims import claims_markdown
from .generic import group_rows, load_runs, markdown, plot, sweep_report, to_csv  # noqa: F401
from .runs import Run, Warn, find_runs, stderr_warn
from .tables import build_table, load_published
from .tables import markdown as table_markdown
from .tables import to_csv as table_csv

# subcommand -> "module:function" taking argv and returning an exit code
SUBCOMMANDS: dict[str, str] = {}


def register_subcommand(name: str, target: str) -> None:
    SUBCOMMANDS[name] = target


def detect_presets(runs: list[Run]) -> list[str]:
    """Preset names found in the runs' configs, most runs first."""
    names = Counter(str(r.coord("name")) for r in runs if r.coord("name"))
    return [n for n, _ in names.most_common()]


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def preset_report(root: Path, runs: list[Run], names: list[str], write: bool,
                  warn: Warn = stderr_warn) -> str:
    """The paper-layout report of each preset found (one file set per preset)."""
    parts = []
    for name in names:
        pub = load_published(name)
        if pub is None:
            warn(f"preset {name!r} has no published numbers (sparse_runner/report/published/); "
                 "its runs are in the generic report")
            continue
        mine = [r for r in runs if r.coord("name") == name]
        table = build_table(mine, pub)
        claims = claims_markdown(table)
        text = table_markdown(table) + (f"\n\n{claims}" if claims else "")
        parts.append(text)
        if write:
            stem = "report" if len(names) == 1 else f"report_{name}"
            _write(root / f"{stem}.md", text + "\n")
            _write(root / f"{stem}.csv", table_csv(table))
            _write(root / f"{stem}.html", html_page.page(table))
            figure = html_page.flops_figure(table) if claims else None
            if figure is not None:   # the claim presets' accuracy-vs-FLOPs plot, as a file too
                atomic_write_bytes(root / f"{stem}_flops.png", lambda f: f.write(figure))
    return "\n\n".join(parts)


def report(root: Path, write: bool = True, warn: Warn = stderr_warn) -> str:
    """The report of a sweep directory: the paper layout when a preset is detected."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give the sweep (or run) directory")
    runs = find_runs(root, warn)
    names = detect_presets(runs)
    text = preset_report(root, runs, names, write, warn) if names else ""
    return text or sweep_report(root, write=write)


def _dispatch(target: str) -> Callable[[list[str]], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return int(_dispatch(SUBCOMMANDS[argv[0]])(argv[1:]) or 0)
        parser = argparse.ArgumentParser(
            prog="sparse-run-report", description=__doc__.split("\n\n")[0],
            epilog="subcommands: " + (", ".join(sorted(SUBCOMMANDS)) or "none"))
        parser.add_argument("sweep_dir", type=Path, help="a sparse-run sweep or run directory")
        parser.add_argument("--no-write", action="store_true", help="print only; write no files")
        args = parser.parse_args(argv)
        with collect("sparse-run-report"):  # a failing plot costs one warning line
            print(report(args.sweep_dir, write=not args.no_write))
        return 0
    except UserError as exc:
        print(f"sparse-run-report: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code


register_subcommand("ift-table", "sparse_runner.ift.tables:main")
register_subcommand("export", "sparse_runner.export.report:main")
register_subcommand("spectral", "sparse_runner.report.spectral:main")
register_subcommand("convert", "sparse_runner.sparsity.condensed_ckpt:main")

if __name__ == "__main__":
    sys.exit(main())
