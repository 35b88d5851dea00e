"""model=hf: transformers causal LMs as sparse-run text models. Parameter counts equal
transformers' own, the layer table equals FlopCounterMode on a real forward (eager attention,
whose matmuls it counts; the table is traced with SDPA on the meta device), GPT-2's Conv1D
becomes an equal Linear and goes back on export, tied embeddings stay tied, Sparse Wide
follows Table 14, and every bad input is one line."""
from __future__ import annotations

import builtins
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_models import TINY_HF, build_hf_model, hf_cfg
from sparse_runner.utils.errors import UserError
from sparse_runner.flops.tables import trace_layers
from sparse_runner.ift.wide import Width
from sparse_runner.models import count_params
from sparse_runner.models.gpt import wide_dims
from sparse_runner.models.hf import to_transformers

transformers = pytest.importorskip("transformers")
ARCHS = ("gpt2", "llama", "qwen2", "gpt_neox")


def own_model(arch: str, vocab: int = 65):
    """The model as transformers alone builds it (no sparse-run code)."""
    config = transformers.AutoConfig.for_model(arch, vocab_size=vocab, **TINY_HF[arch])
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_equals_transformers(arch):
    assert count_params(build_hf_model(hf_cfg(arch))) == own_model(arch).num_parameters()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("s", [0.0, 0.5])
def test_layer_table_equals_flop_counter_mode(arch, s):
    width = Width(s) if s else 1.0
    table = trace_layers(build_hf_model(hf_cfg(arch), width), (32,), dtype=torch.long,
                         unit="token")
    eager = build_hf_model(hf_cfg(arch, attn_implementation="eager"), width).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        eager(torch.randint(65, (2, 32)))
    assert counter.get_total_flops() == 2 * 32 * table.dense_fwd()
    assert table.other_fwd() > 0  # attention counted (QK^T and AV)
    assert table.names[-1] == "hf.lm_head.weight"
    linears = sum(p.numel() for n, p in eager.named_parameters()
                  if p.ndim == 2 and n in table.names)
    assert sum(layer.fwd_flops for layer in table) == 2 * linears


def test_gpt2_conv1d_is_a_linear_with_the_same_logits_and_goes_back():
    ours = build_hf_model(hf_cfg("gpt2")).eval()
    assert len(ours.transposed) == 8 and all(
        type(ours.hf.get_submodule(n)) is torch.nn.Linear for n in ours.transposed)
    back = to_transformers(ours).eval()
    conv1d = transformers.pytorch_utils.Conv1D
    assert all(isinstance(back.get_submodule(n), conv1d) for n in ours.transposed)
    x = torch.randint(65, (2, 32))
    with torch.no_grad():
        assert torch.equal(ours(x), back(input_ids=x).logits)


def test_tied_embedding_stays_tied_after_a_trace():
    model = build_hf_model(hf_cfg("gpt2"))
    trace_layers(model, (32,), dtype=torch.long, unit="token")
    assert model.hf.lm_head.weight is model.hf.transformer.wte.weight
    assert "hf.lm_head.weight" in dict(model.named_parameters())


def test_sparse_wide_gpt2_is_table_14_and_llama_keeps_its_kv_heads():
    # GPT-3 Small's widths (Table 14) through the gpt2 config, as model=gpt computes them
    cfg = {"name": "hf", "arch": "gpt2", "config": {"n_embd": 768, "n_head": 12, "n_layer": 1}}
    with torch.device("meta"):
        for s in (0.5, 0.75):
            m = build_hf_model(cfg, Width(s), seq_len=64)
            assert (m.config.n_embd, m.config.n_inner) == wide_dims(768, 12, Width(s))
        llama = build_hf_model(hf_cfg("llama"), Width(0.5))
    c = llama.config
    assert c.num_attention_heads == 4 and c.num_key_value_heads == 2
    assert c.hidden_size == 4 * c.head_dim and c.head_dim % 2 == 0  # rotary needs even dims
    assert c.intermediate_size == int(172 * Width(0.5))
    # Qwen3's head_dim is its own (128 at any hidden size): it widens by itself
    qwen3 = {"name": "hf", "arch": "qwen3", "config": {**TINY_HF["qwen2"]}}
    with torch.device("meta"):
        assert build_hf_model(qwen3).config.head_dim == 128
        wide = build_hf_model(qwen3, Width(0.5)).config
    assert wide.head_dim == 182 and wide.hidden_size == 92  # ceil(int(512·√2)/4), 4·ceil(90/4)


def test_pretrained_folder_and_hub_cache(tmp_path, monkeypatch):
    own = own_model("llama")
    own.save_pretrained(tmp_path / "tiny")
    x = torch.randint(65, (1, 16))
    want = own.eval()(input_ids=x).logits
    got = build_hf_model({"name": "hf", "pretrained": str(tmp_path / "tiny")}).eval()
    assert torch.equal(got(x), want)
    # the same files in the hub cache layout, found offline by hub id
    snap = tmp_path / "hub" / "models--tiny--llama" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for f in (tmp_path / "tiny").iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cached = build_hf_model({"name": "hf", "pretrained": "tiny/llama"}).eval()
    assert torch.equal(cached(x), want)


def test_config_path_with_the_dataset_vocabulary(tmp_path):
    transformers.AutoConfig.for_model("qwen2", **TINY_HF["qwen2"]).save_pretrained(tmp_path)
    model = build_hf_model({"name": "hf", "config_path": str(tmp_path / "config.json")}, vocab=300)
    assert model.config.vocab_size == 300 and model.config.model_type == "qwen2"


@pytest.mark.parametrize("cfg, match", [
    ({"arch": "lama"}, r"not a transformers model_type; did you mean llama"),
    ({"arch": "gpt2", "pretrained": "x"}, "exactly one of"),
    ({"arch": "gpt2", "config": {"n_embed": 64}}, r"no key 'n_embed'; did you mean n_embd"),
    ({"pretrained": "/nonexistent/folder"}, "no such folder"),
    ({"pretrained": "nobody/nothing"}, "not in the hub cache"),
    ({"config_path": "/nonexistent/config.json"}, "no file at"),
    ({"arch": "gpt2", "attn_implementation": "flash_attention_2"}, "sdpa, eager"),
    ({"arch": "gpt2", "config": {"n_positions": 16}}, "longer than the model's n_positions=16"),
])
def test_bad_input_is_one_line(cfg, match):
    with pytest.raises(UserError, match=match) as err:
        build_hf_model({"name": "hf", **cfg})
    assert "\n" not in str(err.value)


def test_a_config_that_is_not_a_causal_lm(tmp_path):
    transformers.AutoConfig.for_model("vit").save_pretrained(tmp_path)
    with pytest.raises(UserError, match="'vit' config, which has no causal language model"):
        build_hf_model({"name": "hf", "config_path": str(tmp_path)})
    (tmp_path / "bad.json").write_text(json.dumps({"model_type": "nonsense"}))
    with pytest.raises(UserError, match="not a transformers config"):
        build_hf_model({"name": "hf", "config_path": str(tmp_path / "bad.json")})


def test_without_transformers_says_how_to_install(monkeypatch):
    real = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(UserError, match=r'pip install -e "\.\[hf\]"'):
        build_hf_model(hf_cfg("gpt2"))


def test_wide_on_an_unsupported_model_type_and_on_pretrained(tmp_path):
    cfg = {"name": "hf", "arch": "opt", "config": {"hidden_size": 64, "ffn_dim": 128,
                                                   "num_hidden_layers": 1,
                                                   "num_attention_heads": 4,
                                                   "word_embed_proj_dim": 64}}
    with pytest.raises(UserError, match="knows the width keys of .*not 'opt'"):
        build_hf_model(cfg, Width(0.5))
    own_model("gpt2").save_pretrained(tmp_path)
    with pytest.raises(UserError, match="cannot start from model.pretrained"):
        build_hf_model({"name": "hf", "pretrained": str(tmp_path)}, Width(0.5))
