"""Claims a preset tests: each cell's difference to dense with a 95% confidence interval, and one
verdict line per claim listed in the preset's published file.

The interval is Welch's t interval for the difference of two means over seeds (unequal
variances, Welch–Satterthwaite degrees of freedom): for cells a and b with n_a, n_b >= 2 runs,
``d = mean_a - mean_b``, ``se = sqrt(v_a/n_a + v_b/n_b)`` (sample variances), and
``d ± t_{0.975, df} · se``. A claim "row beats vs" *holds* when the whole interval is above 0,
*does not hold* when it is below 0 (vs is significantly better), and is *inconclusive* when it
contains 0 or either cell has fewer than 2 runs. The test is unpaired: runs of two cells with
the same seed share the data order but not the model (another width, member or mask), so
pairing them by seed would assume a correlation nobody measured; unpaired is the conservative
choice.

A claim in ``published/<preset>.yaml``::

    claims:
      - {claim: "Sparse Wide + RigL beats dense at equal training FLOPs", row: wide_rigl,
         s: 0.75, vs: dense, source: "Sparse-IFT Table 2: 79.5 vs 77.0"}

``vs`` names a dense row (its baseline key) or another row, at ``vs_s`` (default: ``s``).
A table of a lower-is-better metric (``metric_key: test_loss``, ``higher_is_better: false``)
states each claim's difference as the improvement ``vs - row``, so "beats" is still "> 0";
``claim_unit`` names its unit (default "points").
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from .runs import column_key
from .tables import Cell, Table, TableRow

LEVEL = 0.95
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class Interval:
    diff: float
    low: float
    high: float
    df: float


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL
                   ) -> Interval | None:
    """Welch's t interval for mean(a) - mean(b); None when either has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import t

    diff = statistics.fmean(a) - statistics.fmean(b)
    qa, qb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(qa + qb)
    if se == 0.0:
        return Interval(diff, diff, diff, math.inf)
    df = (qa + qb) ** 2 / (qa ** 2 / (len(a) - 1) + qb ** 2 / (len(b) - 1))
    half = float(t.ppf(0.5 + level / 2, df)) * se
    return Interval(diff, diff - half, diff + half, df)


def verdict(interval: Interval | None) -> str:
    if interval is None:
        return INCONCLUSIVE
    if interval.low > 0:
        return HOLDS
    return FAILS if interval.high < 0 else INCONCLUSIVE


@dataclass(frozen=True)
class Claim:
    text: str
    row: str
    s: float | None
    vs: str
    vs_s: float | None
    source: str


def load_claims(info: dict[str, Any]) -> list[Claim]:
    out = []
    for c in info.get("claims") or []:
        s = column_key(c.get("s"))
        vs_s = column_key(c["vs_s"]) if c.get("vs_s") is not None else s
        out.append(Claim(str(c["claim"]), str(c["row"]), s, str(c.get("vs", "dense")), vs_s,
                         str(c.get("source", ""))))
    return out


def find_cell(table: Table, key: str, s: float | None) -> Cell | None:
    """The cell of row ``key`` at ``s``; a dense row's only cell whatever ``s``."""
    for row in table.rows:
        if row.key == key and row.dense:
            return row.cells[0.0]
    for row in table.rows:
        if row.key == key and not row.dense:
            return row.cells.get(s) if s is not None else None
    return None


def improvement(a: Sequence[float], b: Sequence[float], higher_is_better: bool
                ) -> Interval | None:
    """The interval of how much better a is than b (a - b, or b - a for a loss)."""
    iv = welch_interval(a, b)
    if iv is None or higher_is_better:
        return iv
    return Interval(-iv.diff, -iv.high, -iv.low, iv.df)


def evaluate(table: Table, claim: Claim) -> dict[str, Any]:
    """The claim's numbers: runs per side, the improvement and its interval, the verdict."""
    up = bool(table.published.info.get("higher_is_better", True))
    a, b = find_cell(table, claim.row, claim.s), find_cell(table, claim.vs, claim.vs_s)
    out: dict[str, Any] = {"claim": claim.text, "row": claim.row, "s": claim.s, "vs": claim.vs,
                           "vs_s": claim.vs_s, "source": claim.source,
                           "n": [a.n if a else 0, b.n if b else 0], "diff": None, "low": None,
                           "high": None, "verdict": INCONCLUSIVE}
    if a is None or b is None or not a.n or not b.n:
        return out
    interval = improvement(a.accs, b.accs, up)
    out["diff"] = (a.mean - b.mean) * (1 if up else -1)
    if interval is not None:
        out.update(low=interval.low, high=interval.high, verdict=verdict(interval))
    return out


def claim_line(table: Table, claim: Claim) -> str:
    unit = str(table.published.info.get("claim_unit", "points"))
    r = evaluate(table, claim)
    where = "" if claim.s is None else f", s={claim.s:g}"
    if claim.vs_s is not None and claim.vs_s != claim.s:
        where += f" vs s={claim.vs_s:g}"
    src = f" (source: {claim.source})" if claim.source else ""
    (na, nb), d = r["n"], r["diff"]
    if d is None:
        return f"- {claim.text}{where}: no completed runs for one side: {INCONCLUSIVE}{src}"
    if r["low"] is None:
        return (f"- {claim.text}{where}: {_num(d, unit)} {unit}, n={na} and {nb} (a CI needs "
                f">= 2 seeds per cell): {INCONCLUSIVE}{src}")
    return (f"- {claim.text}{where}: {_num(d, unit)} {unit}, CI [{_num(r['low'], unit)}, "
            f"{_num(r['high'], unit)}] (n={na}, {nb}): {r['verdict']}{src}")


def _num(x: float, unit: str) -> str:
    """Accuracy points with one decimal; a loss (any other unit) with three."""
    return f"{x:+.1f}" if unit == "points" else f"{x:+.3f}"


def _baseline(table: Table, row: TableRow) -> TableRow | None:
    key = row.baseline or "dense"
    return next((r for r in table.rows if r.dense and r.key == key), None)


def diff_text(cell: Cell, dense: Cell, unit: str = "points") -> str:
    interval = welch_interval(cell.accs, dense.accs)
    if interval is None:
        return "" if not cell.n or not dense.n else _num(cell.mean - dense.mean, unit)
    return (f"{_num(interval.diff, unit)} [{_num(interval.low, unit)}, "
            f"{_num(interval.high, unit)}]")


def claims_markdown(table: Table) -> str:
    """The difference-to-dense table and the claim lines ("" for a preset without claims)."""
    claims = load_claims(table.published.info)
    if not claims:
        return ""
    unit = str(table.published.info.get("claim_unit", "points"))
    head = ["row", *(f"s={c:g}" for c in table.columns)]
    lines = [f"### Difference to dense ({unit}, ours − dense, Welch {LEVEL:.0%} CI over seeds)",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        base = _baseline(table, row)
        if row.dense or base is None or row.reference:
            continue
        cells = [diff_text(row.cells[c], base.cells[0.0], unit) for c in table.columns]
        lines.append("| " + " | ".join([row.label, *cells]) + " |")
    lines += ["", f"### Claims ({HOLDS} / {FAILS} / {INCONCLUSIVE} at {LEVEL:.0%})", ""]
    lines += [claim_line(table, c) for c in claims]
    return "\n".join(lines)
