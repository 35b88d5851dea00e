"""sparse.backend=condensed: every mask-based method trains through the kernels, same math."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import cli, run_tiny
from sparse_runner.utils.errors import UserError
from sparse_runner.flops.tables import trace_layers
from sparse_runner.kernels import ell_from_mask
from sparse_runner.methods import build_method
from sparse_runner.sparsity import SetupContext
from sparse_runner.sparsity.backend import CondensedLayer, apply_backend
from sparse_runner.sparsity.condensed_params import dense_weights, scatter_ell, store_of

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
    data = [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed)),
             torch.arange(4) % 10)]
    m.setup(model, SetupContext(table=table, sparse=SPARSE, s=s, total_steps=40, seed=seed,
                                batches=lambda: iter(data), loss_fn=nn.functional.cross_entropy))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    m.attach_optimizer(opt)
    return model, m, opt


def grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Output and gradients by dense parameter name (a condensed layer's values gradient
    scattered dense; on a dense-gradient step, the dense leaf's gradient)."""
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().sum().backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if n.rsplit(".")[-1] != "values"}
    for name, module in model.named_modules():
        store = store_of(module)
        if store is not None:
            leaf = store.dense()
            out[f"{name}.weight"] = (leaf.grad.clone() if leaf.grad is not None else
                                     scatter_ell(store.values.grad, store.index, store.shape))
    return y.detach(), out


DT = {"delta_t": 5}
MASK_METHODS = [("static", {}), ("static", {"fan_in": "constant"}), ("set", DT), ("rigl", DT),
                ("srigl", DT), ("granet", DT), ("snip", {}), ("grasp", {}), ("force", {})]


@pytest.mark.parametrize("method,opts", MASK_METHODS,
                         ids=[m + ("_cfi" if "fan_in" in o else "") for m, o in MASK_METHODS])
def test_condensed_forward_and_gradients_match_masked(method, opts):
    x = torch.randn(5, 3, 8, 8)
    ref_model, ref_method, _ = setup(method, **opts)
    y_ref, g_ref = grads(ref_model, x)
    model, m, _ = setup(method, **opts)
    backend = apply_backend("condensed", model, m)
    assert backend.names() == SPARSE
    assert all(isinstance(mod.forward, CondensedLayer) for mod in (model.c1, model.c2, model.fc))
    assert [c["run"] for c in backend.choices] == ["sconv", "sconv", "cfi"]
    y, g = grads(model, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for i, name in enumerate(SPARSE):
        mask = m.masks.masks[i]
        torch.testing.assert_close(g[name][mask], g_ref[name][mask], rtol=1e-4, atol=1e-5)
        assert not g[name][~mask].any()         # the kernels only produce the nonzeros
    torch.testing.assert_close(g["c2.bias"], g_ref["c2.bias"], rtol=1e-4, atol=1e-5)
    # the kernel layers store values + index in place of the dense weight
    expected = {k for k in ref_model.state_dict() if k not in SPARSE}
    expected |= {n.replace("weight", k) for n in SPARSE for k in ("values", "index")}
    assert set(model.state_dict()) == expected


def test_per_layer_choice_is_timed_and_listed():
    model, m, _ = setup("rigl")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backend = apply_backend("condensed", model, m, example=torch.randn(4, 3, 8, 8))
    assert [c["name"] for c in backend.choices] == SPARSE
    for choice in backend.choices:
        assert choice["ms_kernel"] > 0 and choice["ms_dense"] > 0
        assert choice["run"] == ("dense" if choice["ms_dense"] < choice["ms_kernel"]
                                 else {"c1.weight": "sconv", "c2.weight": "sconv"}.get(
                                     choice["name"], "cfi"))
    assert backend.names() == [c["name"] for c in backend.choices if c["run"] != "dense"]
    assert all(p.grad is None for p in model.parameters())       # timing left no trace
    after = dense_weights(model)
    assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)


def test_grouped_convolutions_stay_dense_and_are_reported():
    model, m, _ = setup("static")
    model.c2 = nn.Conv2d(8, 6, 3, stride=2, padding=1, groups=2)
    m.masks.masks[1] = torch.ones_like(model.c2.weight, dtype=torch.bool)
    backend = apply_backend("condensed", model, m)
    assert backend.names() == ["c1.weight", "fc.weight"]
    assert backend.choices[1]["run"] == "dense" and "groups=2" in backend.choices[1]["reason"]


@pytest.mark.parametrize("name", ["srigl", "rigl"])
def test_mask_updates_rebuild_the_index_and_dense_steps_give_dense_grads(name):
    """Updates every 2 steps: each installed mask is the one the kernels run."""
    model, method, opt = setup(name, s=0.75, delta_t=2)
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
        for i, layer in enumerate(method.backend.layers):
            assert torch.equal(layer.store.index, ell_from_mask(method.masks.masks[i]))
    assert len(seen) >= 3                       # masks did change, and the kernels followed


@pytest.mark.parametrize("method,opts,match", [
    ("nm", {"preset": "2:4"}, "straight-through"),
])
def test_methods_that_cannot_run_condensed_are_refused(method, opts, match):
    model, m, _ = setup(method, s=0.5, **opts)
    with pytest.raises(UserError, match=match):
        apply_backend("condensed", model, m)


def test_unknown_backend_is_refused():
    model, m, _ = setup("static", fan_in="constant")
    with pytest.raises(UserError, match="valid: masked, condensed"):
        apply_backend("csr", model, m)


@pytest.mark.parametrize("method", ["srigl", "rigl"])
def test_trains_condensed_end_to_end(tmp_path, method):
    """The runner path: same result as masked to float rounding, layers reported in summary."""
    common = (f"method={method}", "s=0.8", "trainer.stop_after_steps=null", "method.delta_t=5")
    masked = run_tiny(tmp_path, *common, name="masked")
    cond = run_tiny(tmp_path, *common, "sparse.backend=condensed", name="condensed")
    assert cond["status"] == "completed"
    backend = cond["sparsity"]["backend"]
    assert backend["name"] == "condensed" and len(backend["layers"]) == 19
    assert backend["condensed_layers"] == [c["name"] for c in backend["layers"]
                                           if c["run"] != "dense"]
    assert all("ms_kernel" in c and "ms_dense" in c for c in backend["layers"])
    assert masked["sparsity"]["backend"]["condensed_layers"] == []
    assert cond["memory"]["peak_rss_mb"] > 0 and masked["memory"]["peak_rss_mb"] > 0
    for run in (cond, masked):   # per phase (memphase.py): RigL/SRigL steps of both kinds
        phases = run["memory"]["phases"]
        assert {"setup", "steady_step", "update_step"} <= set(phases)
        assert max(p["peak_rss_mb"] for p in phases.values()) <= run["memory"]["peak_rss_mb"]
    numbers = lambda fl: {k: v for k, v in fl.items() if k != "unit"}  # noqa: E731
    assert cond["flops"]["unit"] == masked["flops"]["unit"] == "sample"
    assert numbers(cond["flops"]) == pytest.approx(numbers(masked["flops"]), rel=1e-6)
    assert cond["metrics"]["train_loss"] == pytest.approx(masked["metrics"]["train_loss"], rel=2e-2)


def test_cli_errors(tmp_path):
    r = cli("method=nm", "method.preset=2:4", "s=0.5", "sparse.backend=condensed",
            "trainer.epochs=1", f"out_dir={tmp_path / 'a'}", "model.base_width=8")
    assert r.returncode == 2, r.stderr
    assert "straight-through" in r.stderr and "Traceback" not in r.stderr
    r = cli("sparse.backend=gpu", f"out_dir={tmp_path / 'b'}")
    assert r.returncode == 2 and "sparse.backend=gpu is unknown" in r.stderr
