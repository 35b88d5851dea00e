"""Parameters stored condensed (sparse.backend=condensed): the optimizer trains the ELL values,
its state follows mask updates exactly as the masked backend's does, and checkpoints convert
between the two backends (model and optimizer state) so a run resumes on either."""
from __future__ import annotations

import copy
import json
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import run_tiny
from sparse_runner.kernels import ell_from_mask
from sparse_runner.export.report import main as export_main
from sparse_runner.flops.tables import trace_layers
from sparse_runner.report import main as report_main
from sparse_runner.methods import build_method
from sparse_runner.sparsity import SetupContext
from sparse_runner.sparsity.backend import apply_backend
from sparse_runner.sparsity.condensed_ckpt import adapt, convert_checkpoint, optimizer_names
from sparse_runner.sparsity.condensed_params import (CondensedParam, remap, remap_positions,
                                                     scatter_ell, store_of)
from sparse_runner.step import TrainStep
from sparse_runner.train import Interrupted

SPARSE = ["c1.weight", "c2.weight", "fc.weight"]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        return self.fc(torch.relu(self.c2(x)).flatten(1))


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
}
BATCHES = [(torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(i), dtype=torch.float64),
            torch.arange(6) % 10) for i in range(8)]


def build(backend: str, opt: str = "sgd", method: str = "rigl", **opts):
    """A float64 model, method (updates every 2 steps), optimizer and TrainStep."""
    torch.manual_seed(0)
    model = Net().double()
    m = build_method({"name": method, "delta_t": 2, "alpha": 0.5, **opts})
    m.setup(model, SetupContext(table=trace_layers(Net(), (3, 8, 8)), sparse=SPARSE, s=0.7,
                                total_steps=20, seed=0))
    optimizer = OPTIMIZERS[opt](model.parameters())
    m.attach_optimizer(optimizer)
    apply_backend(backend, model, m)
    return model, m, optimizer, TrainStep(model, m, optimizer, F.cross_entropy)


def train(parts, steps: range) -> list:
    events = []
    for step in steps:
        events.append(parts[3](step, iter([BATCHES[step]])).event)
    return events


def dense_state(model: nn.Module, m, optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """Weights and optimizer state per sparse layer, dense-shaped (condensed ones scattered)."""
    modules = dict(model.named_modules())
    out = {}
    for i, name in enumerate(SPARSE):
        store = store_of(modules[name.rsplit(".", 1)[0]])
        p = store.values if store is not None else m.masks.dense_params[i]
        state = {k: v for k, v in optimizer.state[p].items()}
        if store is not None:
            state = {k: scatter_ell(v, store.index, store.shape) if v.shape == p.shape else v
                     for k, v in state.items()}
        out[name] = {"weight": m.masks.params[i].detach().clone(), **state}
    return out


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("method", ["rigl", "set"])
def test_optimizer_state_equals_the_masked_runs_at_the_nonzeros(opt, method):
    masked, condensed = build("masked", opt, method), build("condensed", opt, method)
    ev_m, ev_c = train(masked, range(5)), train(condensed, range(5))
    assert sum(e is not None for e in ev_c) >= 2 and ev_m == ev_c   # the masks did move
    for i, name in enumerate(SPARSE):
        assert torch.equal(masked[1].masks.masks[i], condensed[1].masks.masks[i])
    want, got = dense_state(*masked[:3]), dense_state(*condensed[:3])
    for name in SPARSE:
        mask = masked[1].masks.masks[SPARSE.index(name)]
        assert set(got[name]) == set(want[name])
        for key, ref in want[name].items():
            if ref.shape != mask.shape:    # Adam's scalar step
                assert torch.equal(got[name][key], ref)
                continue
            torch.testing.assert_close(got[name][key], ref, rtol=1e-9, atol=1e-12)
            assert not ref[~mask].any() and not got[name][key][~mask].any()


def test_no_dense_weight_is_a_parameter_or_outlives_the_update():
    model, m, optimizer, step = build("condensed", "adam")
    dense_shapes = {tuple(p.shape) for p in Net().parameters() if p.dim() > 1}
    names = dict(model.named_parameters())
    assert not any(n.endswith(".weight") and tuple(p.shape) in dense_shapes for n, p in names.items())
    opt_params = [p for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in opt_params} == {id(p) for p in model.parameters()}
    nnz = sum(m.masks.nnz())
    sparse_numel = sum(p.numel() for n, p in names.items() if n.endswith(".values"))
    assert nnz <= sparse_numel <= 1.35 * nnz     # ELL: rows padded to the longest
    leaves, grads = [], []
    for store in m.masks.stores:       # record every dense tensor the dense-gradient steps make
        make, add = store.dense_leaf, store.add_dense_grad
        store.dense_leaf = lambda make=make: leaves.append(weakref.ref(make())) or leaves[-1]()
        store.add_dense_grad = lambda g, add=add, st=store: (
            add(g), grads.append(weakref.ref(st._dense_grad)))
    events = train((model, m, optimizer, step), range(4))
    assert any(events) and len(leaves) == 2 and len(grads) == 4   # fc leaf; conv dense grads
    assert all(ref() is None for ref in leaves + grads)           # ... all gone again
    assert all(st._leaf is None and st._dense_grad is None for st in m.masks.stores)
    # no dense bool mask per condensed layer: the index is the mask (made per access)
    assert all(st is not None for st in m.masks.stores) and all(
        t is None for t in m.masks.masks._masks)
    for st, mask in zip(m.masks.stores, m.masks.masks):
        assert torch.equal(ell_from_mask(mask), st.index)
    assert m.masks.nnz() == [int((st.index >= 0).sum()) for st in m.masks.stores]
    opt_params = [p for g in optimizer.param_groups for p in g["params"]]   # K changed: new ones
    assert {id(p) for p in opt_params} == {id(p) for p in model.parameters()}
    assert set(optimizer.state) == set(opt_params)
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in opt_params)


def test_remap_keeps_kept_entries_and_zeroes_grown_ones():
    old = torch.tensor([[True, False, True, False], [False, True, False, False]])
    new = torch.tensor([[False, True, True, True], [True, True, False, False]])
    w = torch.arange(1.0, 9.0).view(2, 4) * old
    store = CondensedParam(nn.Linear(4, 2, bias=False), "w", old)
    store.module.weight.data.copy_(w)
    store.values.data = torch.tensor([[1.0, 3.0], [6.0, 0.0]])
    src = remap_positions(store.index, torch.tensor([[1, 2, 3], [0, 1, -1]], dtype=torch.int32), 4)
    assert src.tolist() == [[-1, 1, -1], [-1, 2, -1]]
    assert remap(store.values.detach(), src).tolist() == [[0.0, 3.0, 0.0], [0.0, 6.0, 0.0]]
    store.set_mask(new, None)
    assert torch.equal(store.dense(), torch.tensor([[0.0, 0, 3, 0], [0, 6, 0, 0]]))


def payload(parts) -> dict:
    """What Trainer.checkpoint_payload saves of the model, masks, optimizer and method."""
    model, m, optimizer, _ = parts
    return copy.deepcopy({"model": model.state_dict(), "masks": m.mask_state(),
                          "optimizer": optimizer.state_dict(), "method": m.state_dict(),
                          "param_names": optimizer_names(model, optimizer)})


def restore(parts, saved: dict) -> None:
    """Resume's conversion, then Trainer.restore's order."""
    model, m, optimizer, _ = parts
    saved = adapt(saved, model, optimizer)
    model.load_state_dict(saved["model"])
    m.load_state_dict(saved["method"], saved["masks"])
    optimizer.load_state_dict(saved["optimizer"])
    m.attach_optimizer(optimizer)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("source,target", [("masked", "condensed"), ("condensed", "masked"),
                                           ("condensed", "condensed")])
def test_resume_across_backends_continues_the_run(source, target, opt):
    """Save after 3 steps (2 mask updates), resume on ``target`` for 3 more (one more update):
    the same as staying on ``target`` throughout; bit-identical within one backend."""
    stay = build(target, opt)
    train(stay, range(6))
    first = build(source, opt)
    train(first, range(3))
    resumed = build(target, opt)
    restore(resumed, payload(first))
    train(resumed, range(3, 6))
    want, got = dense_state(*stay[:3]), dense_state(*resumed[:3])
    for name in SPARSE:
        for key, ref in want[name].items():
            if source == target:
                assert torch.equal(got[name][key], ref), (name, key)
            else:
                torch.testing.assert_close(got[name][key], ref, rtol=1e-9, atol=1e-12)
    x = BATCHES[6][0]
    torch.testing.assert_close(resumed[0](x), stay[0](x), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("source", ["masked", "condensed"])
def test_checkpoint_converter_round_trip(source):
    parts = build(source, "adam")
    train(parts, range(3))
    saved = payload(parts)
    there = "condensed" if source == "masked" else "masked"
    other = convert_checkpoint(saved, "dense" if there == "masked" else "condensed")
    back = convert_checkpoint(other, "condensed" if source == "condensed" else "dense")
    assert set(other["model"]) != set(saved["model"]) and back["param_names"] == saved["param_names"]
    assert set(back["model"]) == set(saved["model"])
    for k, v in saved["model"].items():
        assert torch.equal(back["model"][k], v), k
    for pid, state in saved["optimizer"]["state"].items():
        for k, v in state.items():
            assert torch.equal(back["optimizer"]["state"][pid][k], v), (pid, k)
    # the converted checkpoint is what the other backend's run holds
    twin = build(there, "adam")
    train(twin, range(3))
    ref = payload(twin)
    assert set(other["model"]) == set(ref["model"])
    for k, v in ref["model"].items():
        torch.testing.assert_close(other["model"][k].to(v.dtype), v, rtol=1e-9, atol=1e-12)


def test_runner_resumes_on_the_other_backend(tmp_path):
    """Cut after 5 steps (a dense gradient pending), resume with the other sparse.backend."""
    base = ("method=rigl", "s=0.8", "method.delta_t=2", "method.grad_accumulation_n=2", "seed=1",
            "dataset=synthetic", "dataset.shape=[1,8,8]", "dataset.num_samples=768",
            "dataset.num_test_samples=128")
    full = run_tiny(tmp_path, *base, name="full")
    for first, then in (("masked", "condensed"), ("condensed", "masked")):
        with pytest.raises(Interrupted):
            run_tiny(tmp_path, *base, f"sparse.backend={first}", "trainer.stop_after_steps=5",
                     name=first)
        cut = torch.load(tmp_path / first / "checkpoints" / "last.pt", weights_only=True)
        assert any(k.endswith(".values") for k in cut["model"]) == (first == "condensed")
        out = run_tiny(tmp_path, *base, f"sparse.backend={then}", "resume=auto", name=first)
        assert out["status"] == "completed" and out["sparsity"]["backend"]["name"] == then
        assert out["sparsity"]["global"] == full["sparsity"]["global"]
        assert out["metrics"]["train_loss"] == pytest.approx(full["metrics"]["train_loss"],
                                                             rel=2e-2)
        for key in ("params_total", "params_nonzero"):  # condensed layers count as dense ones
            assert out["model"][key] == full["model"][key]
        assert [r["name"] for r in out["spectral"]["layers"]] == [
            r["name"] for r in full["spectral"]["layers"]]
    # the export reads a condensed run's checkpoint (tmp_path/masked ended condensed) as dense
    for name in ("masked", "full"):
        assert export_main([str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n / "export" / "storage.json").read_text())["total"]
            for n in ("masked", "full"))
    assert a == b
    # the converter as a command: the condensed checkpoint, stored dense, as the masked run's
    last = tmp_path / "masked" / "checkpoints" / "last.pt"
    assert report_main(["convert", str(last), "--to", "dense", "--out", str(tmp_path / "d.pt")]) == 0
    dense = torch.load(tmp_path / "d.pt", weights_only=True)
    ref = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    assert set(dense["model"]) == set(ref["model"]) and dense["param_names"] == ref["param_names"]
    assert report_main(["convert", str(tmp_path / "nothing.pt"), "--to", "dense"]) == 2
