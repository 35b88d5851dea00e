"""Optional work never fails a run (sparse_runner/optional.py): a failure injected into each
optional step leaves the run ``completed``, prints one warning line naming the step and the
error, and records the error in the step's section of summary.json (or of the report's files)."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from conftest import run_tiny

from sparse_runner.outputs import loggers
from sparse_runner.utils.optional import Skipped, attempt, collect
from sparse_runner.sparsity import backend, spectral

COMMON = ("method=rigl", "s=0.8", "method.delta_t=5", "trainer.batch_size=128",
          "sparse.backend=condensed", "logger=wandb", "logger.mode=offline")


def boom(what: str):
    def fail(*args, **kwargs):
        raise RuntimeError(f"injected {what} failure")
    return fail


def warnings_of(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("sparse-run: warning: ")]


@pytest.fixture(scope="module")
def failing_runs(tmp_path_factory):
    """Run A: spectral metrics, each layer's timing and every wandb write fail. Run B: the
    layer-input capture, the wandb mirror's start and only the final spectral metrics fail."""
    root = tmp_path_factory.mktemp("optional")
    out = {}
    real_section = spectral.section
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(spectral, "section", boom("spectral"))
        mp.setattr(backend, "time_layer", boom("timing"))
        mp.setattr(loggers.WandbMirror, "write", boom("wandb"))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            out["a"] = run_tiny(root, *COMMON, name="a"), err.getvalue()
    with pytest.MonkeyPatch.context() as mp:
        calls = []

        def end_fails(*args, **kwargs):
            calls.append(1)
            return boom("final spectral")() if len(calls) > 1 else real_section(*args, **kwargs)

        mp.setattr(spectral, "section", end_fails)
        mp.setattr(backend, "layer_inputs", boom("capture"))
        mp.setattr(loggers.WandbMirror, "__init__", boom("wandb start"))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            out["b"] = (run_tiny(root, *COMMON, "sparse.spectral_every=1000", name="b"),
                        err.getvalue())
    out["root"] = root
    return out


def test_each_failure_is_one_warning_and_recorded(failing_runs):
    summary, err = failing_runs["a"]
    assert summary["status"] == "completed" and "error" not in summary
    on_disk = json.loads((failing_runs["root"] / "a" / "summary.json").read_text())
    assert on_disk["status"] == "completed"
    assert on_disk["spectral"] == {"error": "RuntimeError: injected spectral failure"}
    assert on_disk["wandb"] == {"error": "RuntimeError: injected wandb failure"}
    bk = on_disk["sparsity"]["backend"]
    assert bk["error"] == "RuntimeError: injected timing failure"
    assert bk["layers"] and all(c["run"] == "dense" for c in bk["layers"])  # the safe way
    assert sorted(warnings_of(err)) == sorted([
        "sparse-run: warning: spectral metrics (setup) skipped: RuntimeError: injected spectral failure",
        "sparse-run: warning: the wandb mirror skipped: RuntimeError: injected wandb failure",
        "sparse-run: warning: layer timing of the condensed backend skipped: "
        "RuntimeError: injected timing failure"])


def test_failures_at_start_and_end(failing_runs):
    summary, err = failing_runs["b"]
    assert summary["status"] == "completed"
    assert summary["spectral"] == {"error": "RuntimeError: injected final spectral failure"}
    assert summary["wandb"] == {"error": "RuntimeError: injected wandb start failure"}
    bk = summary["sparsity"]["backend"]
    assert bk["error"] == "RuntimeError: injected capture failure"
    # without an example batch every supported layer runs the kernel (the untimed default)
    assert bk["condensed_layers"] and not any("ms_kernel" in c for c in bk["layers"])
    assert len(warnings_of(err)) == 3
    assert "spectral metrics (end) skipped: RuntimeError: injected final spectral failure" in err
    assert summary["metrics"]["test_acc1"] > 0


def test_mirror_failing_at_close_is_recorded():
    class Mirror:
        section = "wandb"

        def __init__(self):
            self.events = []

        def write(self, event):
            self.events.append(event)

        summary = boom("summary")
        close = boom("close")

    class Metrics:
        def write(self, event):
            pass

    mirror = Mirror()
    out = {"status": "completed"}
    err = io.StringIO()
    with contextlib.redirect_stderr(err), collect() as skipped:
        logs = loggers.Loggers(Metrics(), [mirror])
        logs.log({"step": 1})
        logs.close({"acc": 1.0})
        skipped.record(out)
    assert mirror.events == [{"step": 1}]
    assert out == {"status": "completed", "wandb": {"error": "RuntimeError: injected summary failure"}}
    assert len(warnings_of(err.getvalue())) == 1  # one line per section, not one per failure


def test_report_plot_failure_keeps_the_report(failing_runs, monkeypatch, capsys):
    from sparse_runner import report
    from sparse_runner.report import generic

    monkeypatch.setattr(generic, "plot", boom("plot"))
    assert report.main([str(failing_runs["root"])]) == 0
    err = capsys.readouterr().err
    assert ("sparse-run-report: warning: the report plot (report.png) skipped: "
            "RuntimeError: injected plot failure") in err
    assert (failing_runs["root"] / "report.md").is_file()
    assert (failing_runs["root"] / "report.csv").is_file()


def test_html_figure_failure_is_noted_on_the_page(capsys):
    from sparse_runner.report import html

    with collect("sparse-run-report"):
        text = html._figure(boom("figure"), None, "accuracy vs s")
    assert "accuracy vs s: skipped, plotting failed" in text
    assert ("sparse-run-report: warning: the accuracy vs s figure skipped: RuntimeError: "
            "injected figure failure") in capsys.readouterr().err


def test_export_condensed_failure_keeps_csr(failing_runs, monkeypatch, tmp_path, capsys):
    from sparse_runner.export import report as export

    monkeypatch.setattr(export, "to_condensed", boom("condensed"))
    assert export.main([str(failing_runs["root"] / "a"), "--out", str(tmp_path)]) == 0
    storage = json.loads((tmp_path / "storage.json").read_text())
    assert storage["condensed"] == {"error": "RuntimeError: injected condensed failure"}
    assert storage["layers"] and all(r["csr"] > 0 and r["condensed"] is None
                                     for r in storage["layers"])
    data = torch.load(tmp_path / "sparse_weights.pt", weights_only=True)
    assert all("csr" in v and "condensed" not in v for v in data["layers"].values())
    assert "the condensed form skipped" in capsys.readouterr().err


def test_attempt_passes_through_what_it_must_not_swallow():
    class Fatal(Exception):
        pass

    with pytest.raises(Fatal):
        attempt("x", "y", _raise(Fatal), reraise=(Fatal,))
    with pytest.raises(KeyboardInterrupt):
        attempt("x", "y", _raise(KeyboardInterrupt))
    s = Skipped()
    s.add("a.b", "thing", "E: e")
    out = {"a": {"b": 3}}
    s.record(out)
    assert out == {"a": {"b": {"error": "E: e"}}}  # a scalar in the way becomes a section


def _raise(exc_type):
    def fn():
        raise exc_type()
    return fn
