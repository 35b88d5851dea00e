"""sparse-run-bench conv on a tiny model: the JSON has every layer and step row it promises."""
from __future__ import annotations

import json

from sparse_runner.bench import conv


def test_conv_bench_writes_layers_and_steps(tmp_path):
    out = tmp_path / "conv.json"
    assert conv.main(["--s", "0.75", "--layer-s", "0.75", "--batch", "4", "--image-size", "8",
                      "--width", "4", "--repeats", "1", "--threads", "1", "--cpu-time", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["benchmark"] == "conv" and len(res["load_avg_before"]) == 3
    for model in ("resnet18", "wide"):
        rows = res["layers"][model]
        assert len(rows) == 19                      # every sparse conv of ResNet-18
        for row in rows:
            assert set(row["ms"]) == {f"{w}_{p}" for w in ("dense", "sparse")
                                      for p in ("fwd", "dx", "dw")}
            assert 0.1 < row["density"] < 0.5 and row["fwd_bwd_ratio"] > 0
            assert set(row["cpu_1thread"]["ms"]) == set(row["ms"])
            assert row["cpu_1thread"]["fwd_bwd_ratio"] > 0
    assert res["layers"]["wide"][0]["in_shape"][1] == 8   # int(4 * sqrt(4)) channels
    (step,) = res["steps"]
    assert step["s"] == 0.75 and set(step["ms"]) == {"dense", "masked", "condensed"}
