"""sparse.backend=condensed: constant fan-in layers train through the kernels, same math."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import cli, run_tiny
from sparse_runner.errors import UserError
from sparse_runner.flops import trace_layers
from sparse_runner.methods import build_method
from sparse_runner.sparsity import SetupContext
from sparse_runner.sparsity.backend import CondensedLayer, apply_backend

SPARSE = ["c1.weight", "c2.weight", "fc.weight"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, dilation=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        return self.fc(torch.relu(self.c2(x)).flatten(1))


def setup(method: str, s: float = 0.8, seed: int = 0, **opts):
    torch.manual_seed(seed)
    model = Net()
    m = build_method({"name": method, **opts})
    table = trace_layers(model, (3, 8, 8))
    m.setup(model, SetupContext(table=table, sparse=SPARSE, s=s, total_steps=40, seed=seed))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    m.attach_optimizer(opt)
    return model, m, opt


def grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_condensed_forward_and_gradients_match_masked():
    x = torch.randn(5, 3, 8, 8)
    ref_model, ref_method, _ = setup("static", fan_in="constant")
    y_ref, g_ref = grads(ref_model, x)
    model, method, _ = setup("static", fan_in="constant")
    backend = apply_backend("condensed", model, method)
    assert backend.names() == SPARSE
    assert all(isinstance(m.forward, CondensedLayer) for m in (model.c1, model.c2, model.fc))
    y, g = grads(model, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for i, name in enumerate(SPARSE):
        mask = method.masks.masks[i]
        torch.testing.assert_close(g[name][mask], g_ref[name][mask], rtol=1e-4, atol=1e-5)
        assert not g[name][~mask].any()         # the kernels only produce the nonzeros
    torch.testing.assert_close(g["c2.bias"], g_ref["c2.bias"], rtol=1e-4, atol=1e-5)
    # parameter names and the state_dict are those of the plain model
    assert list(model.state_dict()) == list(ref_model.state_dict())


def test_mask_updates_rebuild_the_index_and_dense_steps_give_dense_grads():
    """SRigL with an update every 2 steps: each installed mask is the one the kernels run."""
    model, method, opt = setup("srigl", s=0.75, delta_t=2)
    apply_backend("condensed", model, method)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = set()
    for step in range(7):
        method.before_step(step)
        _, g = grads(model, x)
        dense = method.dense_grad_wanted(step)
        assert method.backend.dense == dense
        inactive = ~method.masks.masks[0]
        assert bool(g["c1.weight"][inactive].any()) == dense
        method.after_backward(step)
        if method.before_optimizer_step(step):
            opt.step()
        opt.zero_grad(set_to_none=True)
        method.after_optimizer_step(step)
        seen.add(id(method.masks.masks[0]))
        method.before_step(step + 1)
        method.backend.dense = False
        y = model(x)
        method.backend.dense = True
        torch.testing.assert_close(y, model(x), rtol=1e-5, atol=1e-5)
        for layer in method.backend.layers:
            assert layer.mask is method.masks.masks[layer.i]
    assert len(seen) >= 3                       # masks did change, and the kernels followed


@pytest.mark.parametrize("method,opts,match", [
    ("rigl", {"delta_t": 5}, "not constant fan-in"),
    ("static", {}, "not constant fan-in"),
    ("nm", {"preset": "2:4"}, "straight-through"),
])
def test_methods_without_constant_fan_in_are_refused(method, opts, match):
    model, m, _ = setup(method, s=0.5, **opts)
    with pytest.raises(UserError, match=match):
        apply_backend("condensed", model, m)


def test_unknown_backend_is_refused():
    model, m, _ = setup("static", fan_in="constant")
    with pytest.raises(UserError, match="valid: masked, condensed"):
        apply_backend("csr", model, m)


def test_srigl_trains_condensed_end_to_end(tmp_path):
    """The runner path: same result as masked to float rounding, layers reported in summary."""
    common = ("method=srigl", "s=0.8", "trainer.stop_after_steps=null", "method.delta_t=5")
    masked = run_tiny(tmp_path, *common, name="masked")
    cond = run_tiny(tmp_path, *common, "sparse.backend=condensed", name="condensed")
    assert cond["status"] == "completed"
    layers = cond["sparsity"]["backend"]["condensed_layers"]
    assert cond["sparsity"]["backend"]["name"] == "condensed" and len(layers) == 19
    assert masked["sparsity"]["backend"]["condensed_layers"] == []
    numbers = lambda fl: {k: v for k, v in fl.items() if k != "unit"}  # noqa: E731
    assert cond["flops"]["unit"] == masked["flops"]["unit"] == "sample"
    assert numbers(cond["flops"]) == pytest.approx(numbers(masked["flops"]), rel=1e-6)
    assert cond["metrics"]["train_loss"] == pytest.approx(masked["metrics"]["train_loss"], rel=2e-2)


def test_cli_errors(tmp_path):
    r = cli("method=rigl", "s=0.9", "sparse.backend=condensed", "trainer.epochs=1",
            f"out_dir={tmp_path / 'a'}", "model.base_width=8")
    assert r.returncode == 2, r.stderr
    assert "not constant fan-in" in r.stderr and "Traceback" not in r.stderr
    r = cli("sparse.backend=gpu", f"out_dir={tmp_path / 'b'}")
    assert r.returncode == 2 and "sparse.backend=gpu is unknown" in r.stderr
