"""``sparse-run-report ift-table`` (Table 1 + sizes of every member) and ``sparse-run-bench isoflop``."""
from __future__ import annotations

import json

from sparse_runner import report
from sparse_runner.bench import main as bench_main


def test_ift_table_subcommand(capsys):
    assert report.main(["ift-table", "--model", "resnet18", "--dataset", "cifar100",
                        "--s", "0.5", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "Table 1: search-space cardinality" in out
    table1 = out.split("Parameters")[0]
    lines = {line.split("|")[1].strip(): line for line in table1.splitlines() if line.startswith("| ")}
    assert "k_sw²·Din·Dout" in lines["wide"] and "(10.00x)" in lines["parallel"]
    assert "| 11.2M (1.00x) | 11.2M (1.00x) |" in lines["doped"]  # Doped keeps the search space
    rows = [line for line in out.splitlines() if line.startswith("| wide | 0.9")]
    assert rows and "stem 202" in rows[0]
    assert any(line.startswith("| parallel | 0.5 | b=2 |") for line in out.splitlines())
    assert any(line.startswith("| factorized | 0.9 | d=427..4608 |") for line in out.splitlines())
    assert any(line.startswith("| doped | 0.9 | d=38..414 |") for line in out.splitlines())


def test_ift_table_bad_dataset(capsys):
    assert report.main(["ift-table", "--dataset", "mnist"]) == 2
    assert "unknown dataset 'mnist'" in capsys.readouterr().err


def test_isoflop_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "isoflop.json"
    assert bench_main(["isoflop", "--members", "wide", "doped", "--distributions", "erk",
                       "--s", "0.9", "--repeats", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"date", "device", "machine", "versions", "results"} <= set(data)
    assert [(r["ift"], r["distribution"], r["s"]) for r in data["results"]] == \
        [("wide", "erk", 0.9), ("doped", "erk", 0.9)]
    assert all(r["rel_error"] <= 1e-5 and r["median_s"] > 0 for r in data["results"])
    assert "slowest median" in capsys.readouterr().out
