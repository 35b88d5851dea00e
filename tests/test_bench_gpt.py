"""sparse-run-bench gpt on a tiny GPT: the JSON has every row it promises, both backends ran."""
from __future__ import annotations

import json

from sparse_runner.bench import gpt


def test_gpt_bench_writes_every_row(tmp_path):
    out = tmp_path / "gpt.json"
    assert gpt.main(["--s", "0.5", "--methods", "rigl", "set", "--embd", "16", "--layers", "1",
                     "--batch", "2", "--block", "8", "--repeats", "1", "--threads", "1",
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "gpt" and len(res["load_avg_before"]) == 3
    assert [(r["n_embd"], r["s"], r["method"]) for r in res["steps"]] == [
        (16, 0.5, "rigl"), (16, 0.5, "set")]
    for row in res["steps"]:
        assert set(row["ms"]) == {"dense", "masked", "condensed"}
        assert all(v > 0 for v in row["ms"].values())
        assert row["condensed_x_masked"] == row["ms"]["condensed"] / row["ms"]["masked"]
