"""Plots (matplotlib, Agg) and the self-contained HTML page of a paper table.

Two figures per table: accuracy vs training FLOPs (Figure 1 style: one series per row, each
dense baseline a horizontal line) and accuracy vs s (ours solid with std bars, the paper's
numbers dashed). The PNGs are embedded as base64 so ``report.html`` is one file to mail around.
"""
from __future__ import annotations

import base64
import html
import io
import statistics
from typing import Any, Callable, Sequence

from .claims import claims_markdown
from ..utils.optional import attempt
from .tables import Table, TableRow, cell_text


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> bytes:
    """The figure as PNG bytes (and closed)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return buf.getvalue()


def _dense_lines(ax: Any, rows: Sequence[TableRow], at_flops: bool = False) -> None:
    """Each dense row as a line (its mean), plus its mean ± std at its FLOPs when asked."""
    for row in rows:
        cell = row.cells[0.0]
        if cell.n:
            ax.axhline(cell.mean, color="black", lw=1, ls="-", label=f"{row.label} (ours)")
            if at_flops and cell.flops:
                ax.errorbar([statistics.fmean(cell.flops)], [cell.mean], yerr=[cell.std],
                            marker="s", color="black", capsize=3)
        if cell.paper:
            ax.axhline(cell.paper[0], color="grey", lw=1, ls="--", label=f"{row.label} (paper)")


def _ylabel(table: Table) -> str:
    key = str(table.published.info.get("metric_key", "test_acc1"))
    return "test top-1 (%)" if key == "test_acc1" else key.replace("_", " ")


def flops_figure(table: Table) -> bytes | None:
    """Accuracy vs training FLOPs, one series per row; None when no run has FLOPs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for row in (r for r in table.rows if not r.dense):
        pts = sorted((statistics.fmean(c.flops), c.mean, c.std)
                     for c in row.cells.values() if c.n and c.flops)
        if pts:
            drawn = True
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                        marker="o", capsize=3, label=row.label)
    if not drawn:
        plt.close(fig)
        return None
    _dense_lines(ax, [r for r in table.rows if r.dense], at_flops=True)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel(_ylabel(table))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png(fig)


def sparsity_figure(table: Table) -> bytes | None:
    """Accuracy vs s: ours (solid, std bars) and the paper (dashed) per row."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    drawn = False
    for i, row in enumerate(r for r in table.rows if not r.dense):
        color = f"C{i % 10}"
        ours = [(c, cell.mean, cell.std) for c, cell in sorted(row.cells.items()) if cell.n]
        paper = [(c, cell.paper[0]) for c, cell in sorted(row.cells.items()) if cell.paper]
        if ours:
            ax.errorbar([p[0] for p in ours], [p[1] for p in ours], yerr=[p[2] for p in ours],
                        marker="o", capsize=3, color=color, label=f"{row.label} (ours)")
        if paper:
            ax.plot([p[0] for p in paper], [p[1] for p in paper], ls="--", marker="x",
                    color=color, alpha=0.7, label=f"{row.label} (paper)")
        drawn = drawn or bool(ours or paper)
    if not drawn:
        plt.close(fig)
        return None
    _dense_lines(ax, [r for r in table.rows if r.dense])
    ax.set_xlabel("sparsity s")
    ax.set_ylabel(_ylabel(table))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return png(fig)


def _img(data: bytes | None, alt: str) -> str:
    if data is None:
        return f"<p><em>{html.escape(alt)}: nothing to plot (no completed run)</em></p>"
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure(make: Callable[[Table], bytes | None], table: Table, alt: str) -> str:
    """A figure is optional: if plotting fails the page says so (and one warning line)."""
    failed = object()
    data = attempt("plots", f"the {alt} figure", make, table, default=failed)
    if data is failed:
        return f"<p><em>{html.escape(alt)}: skipped, plotting failed (see the warning)</em></p>"
    return _img(data, alt)


def table_html(table: Table) -> str:
    head = "".join(f"<th>s={c:g}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = ([cell_text(row.cells[0.0])] + [""] * (len(table.columns) - 1) if row.dense
                 else [cell_text(row.cells[c], not row.reference) for c in table.columns])
        label = row.label + ("" if row.in_paper else " (not in the paper)")
        body.append("<tr><th>" + html.escape(label) + "</th>"
                    + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr><th>row</th>{head}</tr>{''.join(body)}</table>"


def claims_html(table: Table) -> str:
    """The claim presets' difference-to-dense table and claim lines, as preformatted text."""
    text = claims_markdown(table)
    return f"<pre>{html.escape(text)}</pre>" if text else ""


def page(table: Table) -> str:
    """The whole self-contained page for one table."""
    info = table.published.info
    title = html.escape(str(info.get("table", table.published.name)))
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in table.notes)
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>" + title + "</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:left}.note{color:#a40}"
        "</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(str(info.get('metric', '')))}. Source: "
        f"{html.escape(str(info.get('source', '?')))}; page: {html.escape(str(info.get('page', '?')))}."
        " Cells: ours mean ± std over seeds (paper, Δ = ours − paper).</p>"
        f"{notes}{table_html(table)}{claims_html(table)}"
        f"<h2>Accuracy vs training FLOPs</h2>{_figure(flops_figure, table, 'accuracy vs FLOPs')}"
        f"<h2>Accuracy vs sparsity</h2>{_figure(sparsity_figure, table, 'accuracy vs s')}"
        "</body></html>\n"
    )
