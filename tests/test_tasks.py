"""tasks/: loss and metrics against float64 oracles; the names the loop and table show."""
from __future__ import annotations

import math

import pytest
import torch

from sparse_runner.utils.errors import UserError
from sparse_runner.tasks import TASKS, build_task


def _batches(shape_out, shape_y, classes, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape_out, generator=g), torch.randint(classes, shape_y, generator=g))
            for _ in range(n)]


def test_classification_metrics_match_an_oracle():
    task = build_task("classification")
    batches = _batches((7, 10), (7,), 10)
    acc = task.eval_accumulator()
    for out, y in batches:
        acc.update(out, y)
    m = acc.metrics()
    out = torch.cat([b[0] for b in batches]).double()
    y = torch.cat([b[1] for b in batches])
    nll = -out.log_softmax(1)[torch.arange(len(y)), y].mean().item()
    top5 = out.topk(5, 1).indices
    assert m["loss"] == pytest.approx(nll, rel=1e-6)
    assert m["acc1"] == pytest.approx(100 * (out.argmax(1) == y).double().mean().item())
    assert m["acc5"] == pytest.approx(100 * (top5 == y[:, None]).any(1).double().mean().item())
    assert task.unit == "sample" and task.best == "acc1" and task.is_better(50.0, 40.0)
    assert task.summary_metrics(m)["test_acc1"] == m["acc1"]


def test_language_model_metrics_match_an_oracle():
    task = build_task("language_model")
    batches = _batches((2, 5, 11), (2, 5), 11)
    acc = task.eval_accumulator()
    for out, y in batches:
        acc.update(out, y)
    m = acc.metrics()
    out = torch.cat([b[0] for b in batches]).double().reshape(-1, 11)
    y = torch.cat([b[1] for b in batches]).reshape(-1)
    nll = -out.log_softmax(1)[torch.arange(len(y)), y].mean().item()
    assert m["loss"] == pytest.approx(nll, rel=1e-6)
    assert m["ppl"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert m["bpc"] == pytest.approx(nll / math.log(2), rel=1e-6)
    assert task.unit == "token" and task.units(batches[0][1]) == 10
    assert task.throughput_key == "tok_per_s" and task.best == "loss"
    assert task.is_better(1.0, 2.0) and not task.is_better(2.0, 1.0)
    loss = task.loss(*batches[0])
    assert loss.item() == pytest.approx(
        -batches[0][0].double().reshape(-1, 11).log_softmax(1)[torch.arange(10), batches[0][1].reshape(-1)].mean().item(), rel=1e-6)


def test_shown_metrics_format():
    task = build_task("language_model")
    assert task.format({"loss": 1.5, "ppl": 4.48, "bpc": 2.16}, task.shown_eval) == \
        "test loss 1.5000  ppl 4.48  bpc 2.160"
    assert [s.key for s in build_task("classification").shown_eval] == ["loss", "acc1", "acc5"]


def test_unknown_task():
    with pytest.raises(UserError, match="unknown task 'x'"):
        build_task("x")
    assert sorted(TASKS.names()) == ["classification", "language_model"]
