"""The paper-layout report on hand-made sweep directories: cells, dense row, missing and failed
cells, CSV/HTML outputs, damaged summaries, and the spectral correlation report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sparse_runner.report import main as report_main
from sparse_runner.report import report
from sparse_runner.report.runs import read_summary
from sparse_runner.report.spectral import spearman


def make_run(root: Path, job: str, method: str, s: float, seed: int, acc: float | None,
             status: str = "completed", preset: str = "sift_table2", spectral: dict | None = None,
             dataset: str = "cifar100") -> None:
    d = root / job
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(
        f"s: {s}\nmethod: {{name: {method}}}\nift: {{name: {'none' if method == 'dense' else 'wide'}}}\n"
        f"preset: {{name: {preset}, row: '${{method.name}}', column: '${{s}}', baseline: dense}}\n")
    summary = {"status": status, "method": method, "dataset": dataset, "seed": seed,
               "flops": {"train_total": 1e15 * (1 + s)}, "sparsity": {"target": s}}
    if acc is not None:
        summary["metrics"] = {"test_acc1": acc}
    if spectral is not None:
        summary["spectral"] = {"layers": [], "mean": spectral}
    (d / "summary.json").write_text(json.dumps(summary))


def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    job = iter(range(100))
    for seed, acc in enumerate((77.1, 76.9)):
        make_run(root, str(next(job)), "dense", 0, seed, acc)
    for seed, acc in enumerate((79.0, 79.4)):
        make_run(root, str(next(job)), "rigl", 0.5, seed, acc)
    make_run(root, str(next(job)), "rigl", 0.9, 0, None, status="failed")
    make_run(root, str(next(job)), "mystery", 0.5, 0, 50.0)
    return root


def test_paper_layout(tmp_path):
    root = sweep(tmp_path)
    text = report(root)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "Sparse-IFT Table 2" in text and "page:" in text
    assert "77.0 ± 0.1 (77.0 ± 0.2, Δ +0.0)" in lines["Dense"]
    assert "79.2 ± 0.3 (79.1 ± 0.2, Δ +0.1)" in lines["RigL"]
    assert "1 failed (80.1 ± 0.2)" in lines["RigL"]          # s=0.9: its only run failed
    assert "missing (79.5 ± 0.1)" in lines["RigL"]             # s=0.75: never run
    assert "missing (78.8 ± 0.1)" in lines["SET"]
    assert "mystery (not in the paper)" in lines
    assert "not comparable" not in text                        # same dataset as the paper
    csv_text = (root / "report.csv").read_text()
    assert "sift_table2,rigl,RigL,False,0.5,79.2" in csv_text and ",unfinished," in csv_text
    page = (root / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_smoke_runs_are_flagged_not_comparable(tmp_path):
    root = tmp_path / "s"
    make_run(root, "0", "dense", 0, 0, 90.0, dataset="digits")
    assert "not comparable" in report(root, write=False)


def test_job_without_summary_is_shown(tmp_path):
    root = sweep(tmp_path)
    (root / "9" / ".hydra").mkdir(parents=True)
    (root / "9" / ".hydra" / "config.yaml").write_text(
        "s: 0.75\nmethod: {name: set}\npreset: {name: sift_table2, row: '${method.name}', "
        "column: '${s}', baseline: dense}\n")
    text = report(root, write=False)
    assert "1 without summary (79.2 ± 0.2)" in text  # SET s=0.75: running, or killed


@pytest.mark.parametrize("content,reason", [
    (b"\x00\x01\xff\xfe", "not a text file"), (b"[1, 2]", "JSON list"), (b"", "empty"),
    (b'{"metrics": {}}', "no 'status'"), (b"{not json", "not valid JSON")])
def test_damaged_summary_is_one_warning(tmp_path, content, reason):
    root = sweep(tmp_path)
    bad = root / "bad"
    bad.mkdir()
    (bad / "summary.json").write_bytes(content)
    warnings: list[str] = []
    text = report(root, write=False, warn=warnings.append)
    assert len(warnings) == 1 and reason in warnings[0] and "bad" in warnings[0]
    assert "RigL" in text


def test_null_section_is_treated_as_empty(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"status": "completed", "metrics": None, "flops": [1]}))
    warnings: list[str] = []
    data = read_summary(path, warnings.append)
    assert data["metrics"] == {} and data["flops"] == {} and len(warnings) == 2


def test_generic_report_without_preset(tmp_path, capsys):
    root = tmp_path / "plain"
    (root / "0").mkdir(parents=True)
    (root / "0" / "summary.json").write_text(json.dumps(
        {"status": "completed", "method": "rigl", "seed": 0, "metrics": {"test_acc1": 90.0}}))
    (root / "1").mkdir()
    (root / "1" / "summary.json").write_text("[]")
    assert report_main([str(root)]) == 0
    out = capsys.readouterr()
    assert "## Runs" in out.out and "JSON list" in out.err


def test_spectral_report(tmp_path, capsys):
    root = tmp_path / "spec"
    for i in range(5):
        make_run(root, str(i), "rigl", 0.5, i, 70.0 + i,
                 spectral={"delta_r": 0.1 * i, "delta_r_imdb": -0.1 * i, "lambda": 1.0,
                           "lambda_imsg": None})
    assert report_main(["spectral", str(root)]) == 0
    text = capsys.readouterr().out
    assert "| delta_r | 5 | 1.000 |" in text and "| delta_r_imdb | 5 | -1.000 |" in text
    assert "| lambda | 5 | nan |" in text and "| lambda_imsg | 0 | nan |" in text
    assert (root / "spectral.html").read_text().count("base64,") == 1
    assert report_main(["spectral", str(tmp_path / "nope")]) == 2


def test_spearman_matches_definition():
    rho, p = spearman([1, 2, 3, 4], [10, 30, 20, 40])
    assert rho == pytest.approx(0.8) and 0 < p < 1
    assert math.isnan(spearman([1, 2], [3, 4])[0])
