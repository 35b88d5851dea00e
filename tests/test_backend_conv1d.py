"""sparse.backend=condensed on Conv1d: a height-1 sparse convolution through the Conv2d kernels,
with the masked model's outputs and gradients, the dense weight gradient on RigL's update steps,
and an end-to-end cnn1d run that lists every layer's choice."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_runner.flops.tables import trace_layers
from sparse_runner.methods import build_method
from sparse_runner.sparsity import SetupContext
from sparse_runner.sparsity.backend import CondensedLayer, apply_backend, unsupported_reason
from test_backend import grads

SPARSE = ["c1.weight", "c2.weight"]


class Net1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 8, 5, stride=2, padding=1, bias=False)
        self.c2 = nn.Conv1d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 10, 10)   # 40 -> 19 -> 10 positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1))


def setup(method: str, **opts):
    torch.manual_seed(0)
    model, m = Net1d(), build_method({"name": method, **opts})
    data = [(torch.randn(4, 2, 40), torch.arange(4))]
    m.setup(model, SetupContext(table=trace_layers(model, (2, 40)), sparse=SPARSE, s=0.7,
                                total_steps=40, seed=0, batches=lambda: iter(data),
                                loss_fn=nn.functional.cross_entropy))
    m.attach_optimizer(torch.optim.SGD(model.parameters(), lr=1e-3))
    return model, m


@pytest.mark.parametrize("method,opts", [("static", {}), ("rigl", {"delta_t": 5})])
def test_conv1d_runs_the_sparse_conv_kernel_with_the_masked_math(method, opts):
    x = torch.randn(5, 2, 40)
    ref, _ = setup(method, **opts)   # masked: its weight gradient is always dense
    model, m = setup(method, **opts)
    backend = apply_backend("condensed", model, m)
    assert [c["run"] for c in backend.choices] == ["sconv", "sconv"]
    assert all(isinstance(mod.forward, CondensedLayer) for mod in (model.c1, model.c2))
    for dense_step in (False, True):   # True: RigL's update step wants the dense gradient
        backend.dense = dense_step
        y_ref, g_ref = grads(ref, x)
        y, g = grads(model, x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        for i, name in enumerate(SPARSE):
            mask = m.masks.masks[i]
            torch.testing.assert_close(g[name][mask], g_ref[name][mask], rtol=1e-4, atol=1e-5)
            if dense_step:   # the pruned entries' gradient, as a dense weight would get it
                torch.testing.assert_close(g[name][~mask], g_ref[name][~mask], rtol=1e-4,
                                           atol=1e-5)
            else:
                assert not g[name][~mask].any()


def test_dilated_conv1d_stays_dense_with_its_reason():
    assert unsupported_reason(nn.Conv1d(2, 4, 3, dilation=2)) == "dilation=(2,)"
    assert unsupported_reason(nn.Conv1d(2, 4, 3)) == ""
    assert "kernels run" in unsupported_reason(nn.Conv3d(2, 4, 3))


def test_cnn1d_trains_condensed_end_to_end(tiny, tmp_path):
    summary = tiny("dataset=mnist1d", f"dataset.root={tmp_path / 'data'}",
                   "dataset.num_samples=400", "model=cnn1d", "method=rigl", "s=0.8",
                   "method.delta_t=2", "trainer.max_steps=6", "sparse.backend=condensed",
                   tiny=False)
    assert summary["status"] == "completed"
    layers = summary["sparsity"]["backend"]["layers"]
    assert [x["name"] for x in layers] == ["convs.1.weight", "convs.2.weight"]
    assert all(x["run"] in ("sconv", "dense") for x in layers)
    assert all("reason" in x for x in layers if x["run"] == "dense")
