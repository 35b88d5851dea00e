"""Tiny transformers configs (2 layers, width 64) for the model=hf tests, and builders."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparse_runner.models import build_model

TINY_HF: dict[str, dict[str, Any]] = {
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "llama": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64},
    "qwen2": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64},
    "gpt_neox": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "max_position_embeddings": 64},
    "mistral": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 64},
}


def hf_cfg(arch: str, **extra: Any) -> dict[str, Any]:
    return {"name": "hf", "arch": arch, "config": dict(TINY_HF[arch]), **extra}


def build_hf_model(cfg: dict[str, Any], width: float = 1.0, vocab: int = 65,
                   seq_len: int = 32) -> nn.Module:
    torch.manual_seed(0)
    return build_model(cfg, in_channels=0, num_classes=vocab, image_size=0, width_mult=width,
                       kind="text", seq_len=seq_len)


def cli_config(arch: str) -> list[str]:
    """The command-line overrides of a tiny model=hf (model.config as one YAML map)."""
    items = ", ".join(f"{k}: {v}" for k, v in TINY_HF[arch].items())
    return ["model=hf", f"model.arch={arch}", f"model.config={{{items}}}"]
