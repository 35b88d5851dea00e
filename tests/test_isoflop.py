"""The Iso-FLOP search (appendix A.2): every member at s in {0.5, 0.75, 0.9}, uniform and ERK,
stem and head dense, matches the dense ResNet-18's forward FLOPs to 1e-6 from below (FLOP-aware
rounding of the nonzero counts); methods whose FLOPs change over training are matched on
average; the run's dry run reports it end to end."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import compose
from ift_helpers import one_thread  # noqa: F401 (fixture)
from sparse_runner.utils.errors import UserError
from sparse_runner.ift.survey import MEMBERS, Survey, search
from sparse_runner.flops.isoflop import isoflop_sparsity
from sparse_runner.run import run
from sparse_runner.methods import METHODS, build_method
from sparse_runner.sparsity import SparsityMethod, planned_nnz

pytestmark = pytest.mark.usefixtures("one_thread")

SURVEY = Survey.for_dataset("resnet18", "cifar100")


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
@pytest.mark.parametrize("ift", MEMBERS)
def test_members_are_iso_flop_with_the_dense_baseline(ift, distribution):
    target = SURVEY.baseline.dense_fwd()
    dist = {"name": distribution}
    for s in (0.5, 0.75, 0.9):
        member = SURVEY.member(ift, s)
        assert member.table.dense_fwd() > 1.4 * target  # the transformed model is bigger ...
        iso = search(member, target, distribution=dist)
        assert iso.rel_error <= 1e-6 and iso.flops <= target, (ift, s)  # ... and Iso-FLOP
        assert max(iso.trim.values(), default=0) <= 4   # a few weights per layer at most
        nnz = planned_nnz(member.table, member.sparse, iso.sparsity, dist, trim=iso.trim)
        density = {n: nnz[n] / member.table[n].numel for n in member.sparse}
        assert member.table.sparse_fwd(density) == pytest.approx(iso.flops, rel=1e-12)
        assert 0.4 < iso.sparsity < 0.99


def test_uniform_parallel_needs_no_correction():
    # b = 1/(1-s) exactly: with uniform sparsity every replaced layer is Iso-FLOP by itself.
    for s in (0.5, 0.75):
        iso = search(SURVEY.member("parallel", s), SURVEY.baseline.dense_fwd())
        assert iso.sparsity == pytest.approx(s, abs=1e-6)


class DenseToSparse(SparsityMethod):
    """GraNet-like: sparsity ramps from 0 to s over the first 20% of training, then holds."""

    def mean_fwd_flops(self, table, sparse, s, distribution, extra_dense=0):
        path = [min(1.0, t / 10) * s for t in range(50)]
        return sum(table.sparse_fwd(self.planned_density(table, sparse, x, distribution))
                   for x in path) / len(path)


def test_methods_with_varying_flops_are_matched_on_average():
    member, target = SURVEY.member("wide", 0.75), SURVEY.baseline.dense_fwd()
    method = DenseToSparse()
    iso = search(member, target, method)
    assert iso.rel_error <= 1e-5 and iso.trim == {}  # FLOPs not linear in the counts: no trim
    end = member.table.sparse_fwd(method.planned_density(member.table, member.sparse,
                                                         iso.sparsity, {"name": "uniform"}))
    assert end < target  # sparser at the end than a static run, to pay for the dense start
    assert iso.sparsity > search(member, target).sparsity


@pytest.mark.parametrize("name", [m for m in ("static", "set", "rigl") if m in METHODS])
def test_registered_methods_plan_iso_flop(name):
    member = SURVEY.member("doped", 0.9)
    iso = search(member, SURVEY.baseline.dense_fwd(), build_method({"name": name}))
    assert iso.rel_error <= 1e-6


def test_search_is_pure_and_checks_feasibility():
    member = SURVEY.member("factorized", 0.75)
    first = search(member, SURVEY.baseline.dense_fwd())
    assert search(member, SURVEY.baseline.dense_fwd()) == first
    with pytest.raises(UserError, match="even when dense") as info:
        isoflop_sparsity(lambda s: 100.0 * (1 - s), target=200.0)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="even at sparsity ~1"):
        isoflop_sparsity(lambda s: 300.0 - 100.0 * s, target=100.0)
    exact = isoflop_sparsity(lambda s: 1000.0 * (1 - s), target=250.0)
    assert exact.sparsity == pytest.approx(0.75, abs=1e-6)


def test_dry_run_reports_an_iso_flop_wide_model(tmp_path, capsys):
    from sparse_runner.data import write_fake_cifar

    write_fake_cifar(tmp_path / "data", kind="cifar100")
    cfg = compose(["model=resnet18", "dataset=cifar100", f"dataset.root={tmp_path / 'data'}",
                   "ift=wide", "s=0.9", "method=static", "run.dry_run=true", "run.device=cpu",
                   "model.base_width=16"])
    summary = run(cfg, tmp_path / "run")
    assert summary["status"] == "dry_run"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "dry_run"
    sp, fl, iso = summary["sparsity"], summary["flops"], summary["isoflop"]
    assert sp["target"] == 0.9 and sp["effective"] == iso_s(summary)
    # The masks hold the searched counts plus the FLOP-aware trim: without it this 16-wide
    # model would be up to one nonzero of its costliest layer off (2 x 32 x 32 FLOPs, 2.9e-5)
    assert fl["sparse_fwd"] <= fl["dense_baseline_fwd"] and iso["rel_error"] <= 1e-6
    assert iso["rel_error"] == pytest.approx(
        abs(fl["sparse_fwd"] - fl["dense_baseline_fwd"]) / fl["dense_baseline_fwd"])
    assert fl["model_dense_fwd"] > 9 * fl["dense_baseline_fwd"]
    assert summary["model"]["ift_info"]["k_sw"] == pytest.approx(10 ** 0.5)
    assert summary["model"]["params_total"] > 9 * 11e6 / 16
    out = capsys.readouterr().out
    assert "baseline FLOPs" in out and "Iso-FLOP: s=0.9 -> effective sparsity" in out
    with open(tmp_path / "run" / "layers.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["name"] == "conv1.weight" and rows[0]["shape"] == "50x3x3x3"
    assert sum(float(r["fwd_flops_sparse"]) for r in rows) == pytest.approx(fl["sparse_fwd"])


def iso_s(summary: dict) -> float:
    """The effective sparsity the run searched (summary.sparsity.effective must report it)."""
    layers = [r for r in summary["sparsity"]["layers"] if not r["dense"]]
    nnz = sum(r["nnz"] for r in layers)
    total = sum(_numel(r["shape"]) for r in layers)
    assert 1 - nnz / total == pytest.approx(summary["sparsity"]["effective"], abs=1e-6)
    return summary["sparsity"]["effective"]


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
