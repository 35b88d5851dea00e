"""A paper table rebuilt from a preset's runs: rows = methods or members, columns = s.

The published numbers live in ``published/<preset>.yaml`` (table, source, page, metric, dense
baseline(s), rows with their cells as [mean, std]). A cell shows ``ours mean ± std (paper,
Δ difference)``; cells with no run are ``missing``, cells whose runs all failed ``k failed``,
job directories without a summary (running or killed) ``k without summary``.
Runs outside the published rows still get a row (marked "not in the paper").
"""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import yaml

from .runs import Run, column_key

PUBLISHED = "sparse_runner.report.published"
Pair = tuple[float, float | None]


def published_names() -> list[str]:
    folder = resources.files(PUBLISHED)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _pairs(cells: Any) -> dict[float, Pair]:
    out = {}
    for col, value in (cells or {}).items():
        mean, std = (value + [None])[:2] if isinstance(value, list) else (value, None)
        out[column_key(col)] = (float(mean), None if std is None else float(std))
    return out


@dataclass
class PaperRow:
    key: str
    label: str
    baseline: str | None
    cells: dict[float, Pair]
    reference: bool = False  # published only: not in the preset's grid


@dataclass
class Published:
    name: str
    info: dict[str, Any]
    dense: dict[str, Pair]
    rows: list[PaperRow]

    @property
    def comparable(self) -> bool:
        return bool(self.info.get("metric_comparable", True))


def load_published(name: str) -> Published | None:
    path = resources.files(PUBLISHED) / f"{name}.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    rows = []
    for section, ref in (("rows", False), ("reference_rows", True)):
        for key, row in (data.get(section) or {}).items():
            rows.append(PaperRow(str(key), str(row.get("label", key)), row.get("baseline"),
                                 _pairs(row.get("cells")), ref))
    dense = {str(k): _pairs({0: v})[0.0] for k, v in (data.get("dense") or {}).items()}
    info = {k: v for k, v in data.items() if k not in ("rows", "reference_rows", "dense")}
    return Published(name, info, dense, rows)


@dataclass
class Cell:
    accs: list[float] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)
    failed: int = 0
    unfinished: int = 0  # job dirs without a summary: still running, or killed
    paper: Pair | None = None
    decimals: int = 1   # of our mean and std in the table (``decimals`` of the published file)

    @property
    def n(self) -> int:
        return len(self.accs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accs) if self.accs else None

    @property
    def std(self) -> float:
        return statistics.stdev(self.accs) if len(self.accs) > 1 else 0.0

    def add(self, run: Run, key: str = "test_acc1") -> None:
        """Count one run; ``key`` is the summary metric the table shows (``metric_key``)."""
        value = run.metric(key)
        if run.status == "completed" and value is not None:
            self.accs.append(value)
            if run.train_flops:
                self.flops.append(run.train_flops)
        elif run.status == "no summary":
            self.unfinished += 1
        else:
            self.failed += 1


@dataclass
class TableRow:
    key: str
    label: str
    baseline: str | None
    cells: dict[float, Cell]
    dense: bool = False
    in_paper: bool = True
    reference: bool = False


@dataclass
class Table:
    published: Published
    columns: list[float]
    rows: list[TableRow]
    datasets: list[str]

    @property
    def notes(self) -> list[str]:
        info, out = self.published.info, []
        theirs = info.get("dataset")
        ours = [d for d in self.datasets if d != theirs]
        if theirs and ours:
            out.append(f"ours ran on {', '.join(sorted(set(self.datasets)))}, the paper on "
                       f"{theirs}: the numbers are not comparable (a smoke run?)")
        if not self.published.comparable:
            out.append(f"the paper's metric ({info.get('metric')}) is not what sparse-run "
                       "measures: its numbers are for reference only")
        out += [str(n) for n in info.get("notes", [])]
        return out


def build_table(runs: Sequence[Run], pub: Published) -> Table:
    """Group the preset's runs into the published layout (dense rows first per baseline).
    The cells hold ``metric_key`` of the published file (default ``test_acc1``)."""
    key = str(pub.info.get("metric_key", "test_acc1"))
    sparse: dict[str, dict[float, Cell]] = {}
    dense: dict[str, Cell] = {}
    for run in runs:
        if run.method == "dense" or (run.method is None and column_key(run.coord("column")) == 0):
            dense.setdefault(str(run.coord("baseline")), Cell()).add(run, key)
            continue
        row, col = run.coord("row"), column_key(run.coord("column"))
        if row is None or col is None:
            continue
        sparse.setdefault(str(row), {}).setdefault(col, Cell()).add(run, key)
    columns = sorted({c for r in pub.rows if not r.reference for c in r.cells}
                     | {c for cells in sparse.values() for c in cells})
    used = {r.baseline or "dense" for r in pub.rows if not r.reference}
    keys = [k for k in pub.dense if k in dense or k in used] + [k for k in dense if k not in pub.dense]
    rows = [_dense_row(k, dense.get(k, Cell()), pub.dense.get(k)) for k in keys]
    known = set()
    for prow in pub.rows:
        known.add(prow.key)
        if prow.reference and prow.key not in sparse:
            continue
        cells = sparse.get(prow.key, {})
        rows.append(TableRow(prow.key, prow.label, prow.baseline,
                             {c: _with_paper(cells.get(c), prow.cells.get(c)) for c in columns},
                             reference=prow.reference and prow.key not in sparse))
    for key in sorted(set(sparse) - known):
        rows.append(TableRow(key, key, None, {c: sparse[key].get(c, Cell()) for c in columns},
                             in_paper=False))
    datasets = sorted({r.dataset for r in runs if r.dataset})
    for row in rows:
        for cell in row.cells.values():
            cell.decimals = int(pub.info.get("decimals", 1))
    return Table(pub, columns, rows, datasets)


def _with_paper(cell: Cell | None, paper: Pair | None) -> Cell:
    cell = cell or Cell()
    cell.paper = paper
    return cell


def _dense_row(key: str, cell: Cell, paper: Pair | None) -> TableRow:
    cell.paper = paper
    label = "Dense" if key in ("dense", "None") else f"Dense {key}"
    return TableRow(key, label, key, {0.0: cell}, dense=True)


def fmt_pair(mean: float, std: float | None) -> str:
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def cell_text(cell: Cell, in_grid: bool = True) -> str:
    paper = "" if cell.paper is None else fmt_pair(*cell.paper)
    extra = ([f"{cell.failed} failed"] if cell.failed else []) + (
        [f"{cell.unfinished} without summary"] if cell.unfinished else [])
    if cell.n == 0:
        ours = (", ".join(extra) if extra else ("missing" if in_grid else "not run"))
        return f"{ours} ({paper})" if paper else ours
    d = cell.decimals
    ours = f"{cell.mean:.{d}f} ± {cell.std:.{d}f}" if cell.n > 1 else f"{cell.mean:.{d}f}"
    if extra:
        ours += " +" + ", ".join(extra)
    if cell.paper is None:
        return ours
    return f"{ours} ({paper}, Δ {cell.mean - cell.paper[0]:+.1f})"


def _seeds(row: TableRow) -> str:
    ns = sorted({c.n for c in row.cells.values() if c.n or c.failed or c.unfinished or c.paper})
    return "–" if not ns else (str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}")


def markdown(table: Table) -> str:
    info = table.published.info
    head = ["row", *(f"s={c:g}" for c in table.columns), "seeds"]
    lines = [f"## {info.get('table', table.published.name)}: {info.get('metric', '')}", "",
             f"Source: {info.get('source', '?')}; page: {info.get('page', '?')}. Cells: ours "
             f"mean ± std over seeds (paper{', ' + str(info['spread']) if info.get('spread') else ''}"
             ", Δ = ours − paper).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        label = row.label + ("" if row.in_paper else " (not in the paper)")
        label += " (paper only)" if row.reference else ""
        if row.dense:
            body = [cell_text(row.cells[0.0])] + [""] * (len(table.columns) - 1)
        else:
            body = [cell_text(row.cells[c], not row.reference) if (row.cells[c].n or
                    row.cells[c].failed or row.cells[c].unfinished or row.cells[c].paper
                    or not row.reference) else ""
                    for c in table.columns]
        lines.append("| " + " | ".join([label, *body, _seeds(row)]) + " |")
    if table.notes:
        lines += [""] + [f"Note: {n}" for n in table.notes]
    return "\n".join(lines)


CSV_COLUMNS = ["preset", "row", "label", "dense", "s", "ours_mean", "ours_std", "n", "failed",
               "unfinished",
               "paper_mean", "paper_std", "diff", "train_flops"]


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    w.writeheader()
    for row in table.rows:
        for col, cell in row.cells.items():
            paper = cell.paper or (None, None)
            w.writerow({"preset": table.published.name, "row": row.key, "label": row.label,
                        "dense": row.dense, "s": col, "ours_mean": cell.mean,
                        "ours_std": cell.std if cell.n else None, "n": cell.n,
                        "failed": cell.failed, "unfinished": cell.unfinished,
                        "paper_mean": paper[0], "paper_std": paper[1],
                        "diff": None if cell.mean is None or paper[0] is None
                        else cell.mean - paper[0],
                        "train_flops": statistics.fmean(cell.flops) if cell.flops else None})
    return buf.getvalue()
