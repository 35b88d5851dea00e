"""Spectral metrics in a run: metrics.jsonl events at setup, after mask updates and at the end;
the summary section on the final masks; sparse.spectral=false turns both off."""
from __future__ import annotations

import json

from sparse_runner.sparsity import spectral


def events(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def test_events_and_summary(tiny, tmp_path):
    summary = tiny("method=rigl", "s=0.8", "method.delta_t=5", "trainer.batch_size=128",
                   name="rigl")
    run_dir = tmp_path / "rigl"
    spec = events(run_dir, "spectral")
    updates = events(run_dir, "mask_update")
    assert updates and [e["when"] for e in spec] == ["setup"] + ["update"] * len(updates) + ["end"]
    sparse = [r["name"] for r in summary["sparsity"]["layers"] if not r["dense"]]
    section = summary["spectral"]
    assert [r["name"] for r in section["layers"]] == sparse
    assert set(section["mean"]) == set(spectral.METRICS)
    assert section["mean"]["delta_r"] == spec[-1]["delta_r"]
    assert spec[-1]["layers"] == section["layers"]


def test_every_and_off(tiny, tmp_path):
    tiny("method=rigl", "s=0.8", "method.delta_t=5", "trainer.batch_size=128",
         "sparse.spectral_every=1000", name="rare")
    assert [e["when"] for e in events(tmp_path / "rare", "spectral")] == ["setup", "end"]
    off = tiny("method=rigl", "s=0.8", "sparse.spectral=false", name="off")
    assert "spectral" not in off and not events(tmp_path / "off", "spectral")
    dense = tiny(name="dense")
    assert "spectral" not in dense
