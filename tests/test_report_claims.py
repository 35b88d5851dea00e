"""The claim lines of sparse-run-report on a fabricated sweep with known differences: the Welch
interval against a hand computation and scipy's own Welch test, and each verdict where a wrong
interval (normal quantile, pooled df) or a wrong sign would give another one."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats

from sparse_runner.report import report
from sparse_runner.report.claims import FAILS, HOLDS, INCONCLUSIVE, verdict, welch_interval

DENSE = [60.0, 61.0, 62.0, 63.0, 64.0]   # mean 62, variance 2.5


def make_run(root: Path, job: str, ift: str, method: str, s: float, seed: int,
             acc: float) -> None:
    d = root / job
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(
        f"s: {s}\nmethod: {{name: {method}}}\nift: {{name: {ift}}}\n"
        "preset: {name: sift_mnist1d, row: '${ift.name}_${method.name}', column: '${s}', "
        "baseline: dense}\n")
    summary = {"status": "completed", "method": method, "dataset": "mnist1d", "seed": seed,
               "metrics": {"test_acc1": acc}, "flops": {"train_total": 1e12 * (1 + s)}}
    (d / "summary.json").write_text(json.dumps(summary))


def test_welch_interval_by_hand_and_against_scipy():
    # a = 1, 2, 3 vs b = 0, 0, 0: se = sqrt(1/3), df = 2, t_{0.975, 2} = 4.302652729911275
    iv = welch_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 4.302652729911275 * math.sqrt(1 / 3)
    assert (iv.diff, iv.df) == (2.0, pytest.approx(2.0))
    assert (iv.low, iv.high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    a, b = [70.1, 72.3, 69.8, 71.0], [68.0, 68.9, 70.5, 67.2, 69.9]
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    iv = welch_interval(a, b)
    assert (iv.low, iv.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert welch_interval([1.0], b) is None and verdict(None) == INCONCLUSIVE


def fabricated(tmp_path: Path) -> Path:
    """Dense 60..64; wide_rigl +5 (holds), wide_set -5 (does not hold), wide_static +2.1 (a
    normal-quantile interval, ±1.96, would say holds; Welch's t with df 8, ±2.306, does not),
    parallel_rigl one seed (inconclusive), wide_rigl at s=0.9 = s=0.5 (inconclusive)."""
    root, job = tmp_path / "sweep", iter(range(1000))
    cells = {("none", "dense", 0): 0.0, ("wide", "rigl", 0.75): 5.0,
             ("wide", "set", 0.75): -5.0, ("wide", "static", 0.75): 2.1,
             ("wide", "rigl", 0.5): 1.0, ("wide", "rigl", 0.9): 1.0}
    for (ift, method, s), shift in cells.items():
        for seed, acc in enumerate(DENSE):
            make_run(root, str(next(job)), ift, method, s, seed, acc + shift)
    make_run(root, str(next(job)), "parallel", "rigl", 0.75, 0, 70.0)
    return root


def _line(text: str, start: str) -> str:
    (line,) = [x for x in text.splitlines() if x.startswith(start)]
    return line


def test_claim_lines_on_a_fabricated_sweep(tmp_path):
    root = fabricated(tmp_path)
    text = report(root, write=True)
    t8 = stats.t.ppf(0.975, 8)   # equal variances 2.5, n = 5 each: se = 1, Welch df = 8
    rigl = _line(text, "- Sparse Wide + RigL beats dense at equal training FLOPs, s=0.75:")
    assert f"+5.0 points, CI [{5 - t8:+.1f}, {5 + t8:+.1f}] (n=5, 5): {HOLDS}" in rigl
    assert "Sparse-IFT Table 2" in rigl
    set_ = _line(text, "- Sparse Wide + SET beats dense at equal training FLOPs, s=0.75:")
    assert f"-5.0 points, CI [{-5 - t8:+.1f}, {-5 + t8:+.1f}] (n=5, 5): {FAILS} (source" in set_
    static = _line(text, "- Sparse Wide + static beats dense at equal training FLOPs, s=0.75:")
    assert f"+2.1 points, CI [{2.1 - t8:+.1f}, {2.1 + t8:+.1f}]" in static
    assert f": {INCONCLUSIVE}" in static and HOLDS not in static.split("(source")[0]
    par = _line(text, "- Sparse Parallel + RigL beats dense at equal training FLOPs, s=0.75:")
    assert "n=1 and 5" in par and INCONCLUSIVE in par
    grows = _line(text, "- Sparse Wide + RigL gains with sparsity (s=0.9 beats s=0.5), s=0.9 "
                        "vs s=0.5:")
    assert "+0.0 points" in grows and INCONCLUSIVE in grows
    missing = _line(text, "- Sparse Doped + RigL beats dense at equal training FLOPs, s=0.75:")
    assert "no completed runs" in missing
    # the difference-to-dense table, and the plot written beside the report
    assert f"| Sparse Wide + RigL | +1.0 [{1 - t8:+.1f}, {1 + t8:+.1f}] | +5.0 [" in text
    assert (root / "report_flops.png").stat().st_size > 1000
    assert "Claims (holds" in (root / "report.html").read_text()


def test_a_loss_claim_counts_the_lower_value_as_better():
    from sparse_runner.report.claims import improvement

    iv = improvement([1.0, 1.1, 1.2], [2.0, 2.1, 2.2], higher_is_better=False)
    assert iv.diff == pytest.approx(1.0) and iv.low > 0 and verdict(iv) == HOLDS
    assert verdict(improvement([2.0, 2.1, 2.2], [1.0, 1.1, 1.2], False)) == FAILS

