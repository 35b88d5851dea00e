"""The claim presets (sift_mnist1d, dst_mnist1d, sift_gpt_tiny): their grids are the issue's
cells with one recipe for every cell, and their smoke cuts run end to end and print claim lines."""
from __future__ import annotations

import json

import pytest

from conftest import cli
from sparse_runner.report import main as report_main
from sparse_runner.report.claims import load_claims
from sparse_runner.report.tables import load_published
from test_presets import jobs

CLAIM_PRESETS = ["sift_mnist1d", "dst_mnist1d", "sift_gpt_tiny"]
RECIPE_KEYS = ("optimizer", "schedule", "trainer.batch_size", "trainer.max_steps")


def _cells(name: str) -> set[tuple[str, ...]]:
    return {tuple(x for x in j if not x.startswith("seed=")) for j in jobs(name)}


def test_grids_are_the_issues_cells_with_one_recipe():
    sift, dst, gpt = jobs("sift_mnist1d"), jobs("dst_mnist1d"), jobs("sift_gpt_tiny")
    assert (len(sift), len(_cells("sift_mnist1d"))) == (185, 37)   # dense + 4 x 3 x 3, 5 seeds
    assert (len(dst), len(_cells("dst_mnist1d"))) == (190, 38)     # 2 x (dense + 6 x 3)
    assert (len(gpt), len(_cells("sift_gpt_tiny"))) == (9, 3)      # dense + SET x 2, 3 seeds
    for job in sift + dst + gpt:   # no cell changes the recipe: it is the preset's, for all
        assert not any(x.startswith(RECIPE_KEYS) for x in job), job
    assert {j[0] for j in dst} == {f"method={m}" for m in
                                   ("dense", "static", "set", "rigl", "srigl", "granet", "snip")}
    smoke = jobs("sift_mnist1d", smoke=True)
    assert len(smoke) == 37 and all("trainer.max_steps=10" in j and "seed=0" in j for j in smoke)


@pytest.mark.parametrize("name", CLAIM_PRESETS)
def test_every_claim_names_a_row_of_the_table(name):
    pub = load_published(name)
    keys = {r.key for r in pub.rows} | set(pub.dense) | {r.baseline for r in pub.rows}
    claims = load_claims(pub.info)
    assert claims and all(c.row in keys and c.vs in keys and c.source for c in claims)


# The cells CI runs (the whole smoke grid stays runnable by hand): every member with static and
# RigL at s=0.9 for the MLP; dense, static and SET for the CNN; dense and SET for the GPT.
SMOKE_CUT = {
    "sift_mnist1d": ["hydra.sweeper.take=4", "hydra.sweeper.where={s:[0,0.9],"
                     "method:[dense,static,rigl]}"],
    "dst_mnist1d": ["hydra.sweeper.take=1", "hydra.sweeper.where={model:[cnn1d]}"],
    "sift_gpt_tiny": ["hydra.sweeper.take=1"],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """One MNIST-1D cache for the module (the generator takes a few CPU seconds)."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
@pytest.mark.parametrize("name", CLAIM_PRESETS)
def test_smoke_runs_and_prints_claim_lines(name, tmp_path, capsys, data_root):
    out = tmp_path / "sweep"
    root = [f"dataset.root={data_root}"] if "mnist1d" in name else []
    proc = cli("-m", f"experiment={name}", "smoke=true", *SMOKE_CUT[name], f"out_dir={out}",
               *root, "run.device=cpu", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in out.rglob("summary.json")]
    assert summaries and all(s["status"] == "completed" for s in summaries)
    assert report_main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "### Claims" in text and "Welch 95% CI" in text
    first = load_claims(load_published(name).info)[0]
    assert f"- {first.text}" in text
    assert (out / "report_flops.png").is_file()
