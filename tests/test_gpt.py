"""model=gpt: the decoder's structure (causal, tied head, sizes), the Sparse Wide widths of
the paper's Table 14, and the one-line errors."""
from __future__ import annotations

import pytest
import torch

from sparse_runner.utils.errors import UserError
from sparse_runner.ift.wide import Width
from sparse_runner.models import count_params
from sparse_runner.models.gpt import wide_dims
from zoo_models import GPT3_SMALL, GPT_SMALL, text_builder


@pytest.mark.parametrize("s, d_model, d_ff", [(0.5, 1092, 4344), (0.75, 1536, 6144)])
def test_gpt3_small_sparse_wide_widths_are_table_14(s, d_model, d_ff):
    assert wide_dims(768, 12, Width(s)) == (d_model, d_ff)
    with torch.device("meta"):
        m = text_builder(GPT3_SMALL, vocab=50257)(Width(s))
    block = m.h[0]
    assert block.attn.c_attn.weight.shape == (3 * d_model, d_model)
    assert block.mlp.c_fc.weight.shape == (d_ff, d_model)
    assert block.attn.n_head == 12 and len(m.h) == 12


def test_gpt3_small_has_125m_parameters():
    # Table 13: 125M with the GPT-2 vocabulary (tied head) and 2048 positions
    with torch.device("meta"):
        m = text_builder({**GPT3_SMALL, "block_size": 2048}, vocab=50257)(1.0)
    assert count_params(m) == pytest.approx(125e6, rel=0.02)


def test_causal_and_tied():
    torch.manual_seed(0)
    m = text_builder(GPT_SMALL, vocab=20)(1.0).eval()
    x = torch.randint(20, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 20  # change the future only
    assert torch.allclose(m(x)[0, :10], m(y)[0, :10], atol=1e-6)
    assert not torch.allclose(m(x)[0, 10:], m(y)[0, 10:])
    assert m.lm_head.weight is m.wte.weight
    untied = text_builder({**GPT_SMALL, "tie_weights": False}, vocab=20)(1.0)
    assert count_params(untied) == count_params(m) + 20 * 32


def test_block_size_longer_than_the_model_allows():
    with pytest.raises(UserError, match="dataset.block_size=64 is longer than model.block_size=32"):
        text_builder(GPT_SMALL, seq_len=64)(1.0)


def test_bad_knobs():
    with pytest.raises(UserError, match="must be a multiple of model.n_head"):
        text_builder({**GPT_SMALL, "n_embd": 30, "n_head": 4})(1.0)
    with pytest.raises(UserError, match="model.n_layer=0 must be a positive integer"):
        text_builder({**GPT_SMALL, "n_layer": 0})(1.0)
