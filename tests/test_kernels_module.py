"""SparseLinear (the public layer), its mask updates, and inference export."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import sparse_runner
from sparse_runner.export import CSRLinear, export_condensed, export_csr
from sparse_runner.kernels import SparseLinear, condense_mask


def masked_reference(layer: SparseLinear, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x, layer.to_dense().detach(), layer.bias)


def test_public_import_and_shapes():
    assert sparse_runner.SparseLinear is SparseLinear
    layer = SparseLinear(40, 12, 0.9, generator=torch.Generator().manual_seed(0))
    assert layer.k == 4 and layer.values.shape == (12, 4) and layer.indices.dtype == torch.int32
    assert sum(p.numel() for p in layer.parameters()) == 12 * 4 + 12
    assert "k=4" in repr(layer) and "sparsity=0.9000" in repr(layer)
    assert layer.values.abs().max() <= 1 / math.sqrt(4)  # fan-in k init bound
    for shape in [(40,), (3, 40), (2, 5, 40)]:
        x = torch.randn(*shape)
        assert layer(x).shape == (*shape[:-1], 12)
        torch.testing.assert_close(layer(x), masked_reference(layer, x))
    x = torch.randn(40, 6).t()  # non-contiguous input
    torch.testing.assert_close(layer(x), masked_reference(layer, x))
    assert SparseLinear(10, 3, 0.99).k == 1 and SparseLinear(10, 3, 0.0).k == 10


def test_from_dense_round_trip_and_to_dense():
    layer = SparseLinear(30, 7, 0.8, bias=False)
    dense = layer.to_dense().detach()
    assert ((dense != 0).sum(1) == layer.k).all()
    again = SparseLinear.from_dense(dense)
    assert torch.equal(again.indices, layer.indices) and again.bias is None
    torch.testing.assert_close(again.to_dense(), dense)
    w = torch.randn(5, 9)
    mask = torch.zeros(5, 9, dtype=torch.bool)
    mask[:, [1, 4, 7]] = True
    from_mask = SparseLinear.from_dense(w, torch.zeros(5), mask=mask)
    torch.testing.assert_close(from_mask.to_dense(), w * mask)


def test_state_dict_round_trip_including_k_change():
    a, b = SparseLinear(16, 8, 0.5), SparseLinear(16, 8, 0.75)
    b.load_state_dict(a.state_dict())
    assert b.k == a.k
    x = torch.randn(3, 16)
    torch.testing.assert_close(b(x), a(x))
    assert "t_index" not in a.state_dict()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_path_tracks_weight_updates(dtype):
    """No-grad small batches take the packed layout, rebuilt whenever the weights change."""
    layer = SparseLinear(70, 20, 0.8, dtype=dtype)
    x = torch.randn(3, 70, dtype=dtype)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else {}
    for _ in range(2):
        with torch.inference_mode():
            y = layer(x)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), y)
        torch.testing.assert_close(y, masked_reference(layer, x).detach(), **tol)
        with torch.no_grad():
            layer.values.mul_(-2.0)  # an optimizer step would do the same


def test_training_reduces_loss_in_bf16_and_fp32():
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = nn.Sequential(SparseLinear(20, 32, 0.7, dtype=dtype), nn.ReLU(),
                              SparseLinear(32, 3, 0.5, dtype=dtype))
        x, y = torch.randn(64, 20, dtype=dtype), torch.randint(0, 3, (64,))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(30):
            loss = nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.7 * losses[0]


def test_autocast_runs_in_bf16():
    layer = SparseLinear(16, 4, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(3, 16))
    assert y.dtype == torch.bfloat16


def _row_mask(n_out: int, n_in: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cols = torch.rand(n_out, n_in, generator=g).argsort(1)[:, :k]
    return torch.zeros(n_out, n_in, dtype=torch.bool).scatter_(1, cols, True)


def test_set_mask_keeps_survivors_and_remaps_optimizer_state():
    layer = SparseLinear(12, 6, 0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(4, 12)
    layer(x).sum().backward()
    opt.step()
    old_dense = layer.to_dense().detach()
    old_mom = torch.zeros(6, 12).scatter_(1, layer.indices.long(),
                                          opt.state[layer.values]["momentum_buffer"])
    values_param = layer.values
    new_mask = _row_mask(6, 12, 6, seed=3)  # same k: the Parameter object survives
    src = layer.set_mask(new_mask, opt)
    assert layer.values is values_param
    kept = new_mask & (old_dense != 0)
    torch.testing.assert_close(layer.to_dense().detach(), old_dense * kept)
    mom = torch.zeros(6, 12).scatter_(1, layer.indices.long(),
                                      opt.state[layer.values]["momentum_buffer"])
    torch.testing.assert_close(mom, old_mom * kept)
    assert ((src >= 0) == kept.gather(1, layer.indices.long())).all()
    layer(x).sum().backward()  # the layer trains on with the new structure
    opt.step()
    assert (layer.to_dense().detach()[~new_mask] == 0).all()


def test_set_mask_with_new_k_and_ablated_rows():
    layer = SparseLinear(10, 5, 0.5)
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    x = torch.randn(3, 10)
    out = layer(x)  # keep a graph alive across the update, as training loops do
    out.sum().backward()
    opt.step()
    mask = _row_mask(5, 10, 3, seed=1)
    mask[2] = False  # SRigL neuron ablation
    layer.set_mask(mask, opt)
    assert layer.k == 3 and opt.param_groups[0]["params"][0] is layer.values
    assert opt.state[layer.values]["exp_avg"].shape == (5, 3)
    for _ in range(3):
        opt.zero_grad()
        layer(x).sum().backward()
        opt.step()
    torch.testing.assert_close(layer(x)[:, 2], layer.bias[2].expand(3))
    assert layer.sparsity == pytest.approx(1 - 4 * 3 / 50)
    torch.testing.assert_close(layer.dense_mask(), mask)


def test_capture_dense_grad_matches_dense_layer():
    layer = SparseLinear(8, 4, 0.5)
    dense = nn.Linear(8, 4)
    with torch.no_grad():
        dense.weight.copy_(layer.to_dense())
        dense.bias.copy_(layer.bias)
    x = torch.randn(5, 8)
    layer.capture_dense_grad = True
    layer(x).square().sum().backward()
    dense(x).square().sum().backward()
    torch.testing.assert_close(layer.dense_grad, dense.weight.grad)
    torch.testing.assert_close(layer.values.grad, dense.weight.grad.gather(1, layer.indices.long()))


def test_condense_mask_errors_and_empty_rows():
    mask = _row_mask(4, 6, 2, seed=0)
    mask[1] = False
    with pytest.raises(ValueError, match="allow_empty_rows"):
        condense_mask(mask)
    idx, active = condense_mask(mask, allow_empty_rows=True)
    assert active.tolist() == [True, False, True, True] and idx.shape == (4, 2)


def _mlp() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Sequential(nn.Linear(32, 16)),
                          nn.ReLU(), nn.Linear(16, 5))
    masks = {"0.weight": _row_mask(32, 24, 6, 0), "2.0.weight": _row_mask(16, 32, 4, 1)}
    masks["2.0.weight"][3] = False  # an ablated neuron
    with torch.no_grad():
        model[0].weight.mul_(masks["0.weight"])
    return model, masks


@pytest.mark.parametrize("export", [export_condensed, export_csr])
def test_export_equivalence(export):
    model, masks = _mlp()
    x = torch.randn(7, 24)
    with torch.no_grad():  # the masked model: weights times masks
        ref = model[4](torch.relu(nn.functional.linear(
            torch.relu(nn.functional.linear(x, model[0].weight * masks["0.weight"], model[0].bias)),
            model[2][0].weight * masks["2.0.weight"], model[2][0].bias)))
    exported = export(model, masks)
    kind = SparseLinear if export is export_condensed else CSRLinear
    assert isinstance(exported[0], kind) and isinstance(exported[2][0], kind)
    assert isinstance(exported[4], nn.Linear) and isinstance(model[0], nn.Linear)
    with torch.inference_mode():
        torch.testing.assert_close(exported(x), ref, atol=1e-5, rtol=1e-5)


def test_export_condensed_rejects_unstructured_masks():
    model, masks = _mlp()
    masks["0.weight"][0, :] = True
    with pytest.raises(ValueError, match=r"^0: .*export_csr"):
        export_condensed(model, masks)
    assert isinstance(export_csr(model, masks)[0], CSRLinear)


def test_bench_cli_smoke(tmp_path, capsys):
    from sparse_runner.bench import main

    out = tmp_path / "k.json"
    assert main(["kernels", "--train-shape", "8x32x16", "--infer-shape", "32x8",
                 "--sparsities", "0.5", "--min-time", "0.01", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"device", "versions", "cases"} <= set(result)
    impls = {c["impl"] for c in result["cases"]}
    assert {"dense_fp32", "dense_bf16", "masked_fp32", "torch_csr_fp32", "torch_coo_fp32",
            "cfi_fp32", "cfi_bf16"} <= impls
    for case in result["cases"]:
        assert {"bench", "impl", "s", "batch", "dtype", "median_ms", "ratio_vs_dense_fp32"} <= \
            set(case)
    assert "ratio" in capsys.readouterr().out
