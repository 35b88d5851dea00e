"""A GPT-style decoder (nanoGPT's layout and knob names) for ``model=gpt`` / ``gpt3_small``.

Pre-norm blocks: x + attn(ln1(x)), x + mlp(ln2(x)); causal self-attention through
``F.scaled_dot_product_attention``; GELU MLP of 4x width; learned token and position
embeddings; the LM head tied to the token embedding by default (``tie_weights``).

Sparse Wide (Sparse-IFT Table 14) widens d_model by k_sw and keeps the head count, so each head
grows: ``n_embd' = n_head * ceil(int(n_embd * k_sw) / n_head)`` and the MLP hidden width is
``4 * int(n_embd * k_sw)``: GPT-3 Small 768 / 3072 -> 1092 / 4344 at s=0.5 and 1536 / 6144 at
s=0.75, the paper's numbers. Embeddings and the LM head stay dense (``dense_layers``).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import UserError
from .base import takes


def wide_dims(n_embd: int, n_head: int, width: float) -> tuple[int, int]:
    """(d_model, d_ff) of the Sparse Wide model: d_model a multiple of the head count."""
    base = int(n_embd * float(width) + 1e-9)
    return n_head * math.ceil(base / n_head), 4 * base


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    def __init__(self, n_embd: int, hidden: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, hidden: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, hidden, dropout, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, vocab]."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float = 0.0, bias: bool = True, tie_weights: bool = True,
                 mlp_hidden: int | None = None) -> None:
        super().__init__()
        if n_embd % n_head:
            raise UserError(f"model.n_embd={n_embd} must be a multiple of model.n_head={n_head}")
        self.block_size = block_size
        # The head is registered first so a tied weight is named lm_head.weight (the layer
        # table and the sparsity filter see the Linear, and keep it dense as the head).
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        hidden = mlp_hidden or 4 * n_embd
        self.h = nn.ModuleList(Block(n_embd, n_head, hidden, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        if tie_weights:
            self.wte.weight = self.lm_head.weight
        self._init(n_layer)

    # The first Linear executed is an attention projection, not a stem: only the head stays
    # dense by default (embeddings are not Conv/Linear and are never sparsified).
    dense_layers = ("head",)

    def _init(self, n_layer: int) -> None:
        for name, p in self.named_parameters():
            if p.device.type == "meta" or p.ndim < 2:
                continue
            std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
            nn.init.normal_(p, 0.0, std)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and m.bias.device.type != "meta":
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.block_size:
            raise UserError(f"sequence of {t} tokens is longer than model.block_size="
                            f"{self.block_size}; raise model.block_size or shorten the input")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


GPT_KEYS = {"n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "tie_weights"}


@takes("text")
def build_gpt(*, num_classes: int, seq_len: int = 0, width_mult: float = 1.0, n_layer: int = 4,
              n_head: int = 4, n_embd: int = 128, block_size: int = 128, dropout: float = 0.0,
              bias: bool = True, tie_weights: bool = True, **_: Any) -> nn.Module:
    """GPT for a vocabulary of ``num_classes`` tokens; ``seq_len`` is the data's window."""
    for key, value in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd),
                       ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"model.{key}={value!r} must be a positive integer")
    if seq_len > block_size:
        raise UserError(f"dataset.block_size={seq_len} is longer than model.block_size="
                        f"{block_size} (the positions the model has); set dataset.block_size<="
                        f"{block_size} or raise model.block_size")
    d_model, hidden = wide_dims(n_embd, n_head, width_mult) if float(width_mult) != 1.0 \
        else (n_embd, 4 * n_embd)
    return GPT(num_classes, block_size, n_layer, n_head, d_model, float(dropout), bool(bias),
               bool(tie_weights), hidden)
