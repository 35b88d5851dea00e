"""Export of trained sparse weights: CSR and condensed round trips, storage report, CLI."""
from __future__ import annotations

import json

import pytest
import torch

from sparse_runner.outputs import checkpoint as ckpt
from sparse_runner import report
from sparse_runner.utils.errors import UserError
from sparse_runner.sparsity import random_mask
from sparse_runner.export.formats import from_condensed, from_csr, to_condensed, to_csr
from sparse_runner.export.report import main, storage_bytes
from sparse_runner.sparsity.fanin import constant_fanin_mask


def _masked(shape, mask):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)) * mask


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (9, 20)])
def test_csr_round_trip(shape):
    mask = random_mask(torch.Size(shape), 30, torch.Generator().manual_seed(1))
    w = _masked(shape, mask)
    csr = to_csr(w, mask)
    assert csr["col_indices"].dtype == torch.int16 and len(csr["values"]) == 30
    assert torch.equal(from_csr(csr, shape), w)
    assert to_condensed(w, mask) is None or int(mask.sum()) % shape[0] == 0


def test_condensed_round_trip_with_an_ablated_row():
    shape = (6, 4, 3, 3)
    mask = constant_fanin_mask(shape, 5, torch.Generator().manual_seed(2))
    mask[3] = False
    w = _masked(shape, mask)
    cond = to_condensed(w, mask)
    assert cond["values"].shape == (5, 5) and cond["indices"].shape == (5, 5)
    assert cond["rows"].tolist() == [0, 1, 2, 4, 5]
    assert torch.equal(from_condensed(cond, shape), w)


def test_storage_bytes_by_hand():
    # 4x10 fp32 with 8 nonzeros, 2 per row; indices fit int16.
    assert storage_bytes((4, 10), 8, 4, n_active=4) == {
        "dense": 160, "coo": 8 * (4 + 2 + 2), "csr": 8 * (4 + 2) + 5 * 2, "condensed": 8 * (4 + 2)}
    ablated = storage_bytes((4, 10), 6, 4, n_active=3)
    assert ablated["condensed"] == 6 * 6 + 3 * 2 and storage_bytes((4, 10), 8, 4)["condensed"] is None


def _run_dir(tmp_path, masks):
    model = {n: _masked(m.shape, m) for n, m in masks.items()}
    model["fc.bias"] = torch.zeros(3)
    ckpt.save(tmp_path / "run" / "checkpoints" / "last.pt", {"model": model, "masks": masks})
    return model


def test_export_command(tmp_path, capsys):
    masks = {"a.weight": constant_fanin_mask((8, 3, 3, 3), 4, torch.Generator().manual_seed(3)),
             "b.weight": random_mask(torch.Size((5, 40)), 17, torch.Generator().manual_seed(4))}
    model = _run_dir(tmp_path, masks)
    assert report.main(["export", str(tmp_path / "run")]) == 0
    out = tmp_path / "run" / "export"
    data = torch.load(out / "sparse_weights.pt", weights_only=True)
    assert set(data["layers"]) == set(masks) and "condensed" not in data["layers"]["b.weight"]
    for n, entry in data["layers"].items():
        assert torch.equal(from_csr(entry["csr"], tuple(entry["shape"])), model[n])
    assert torch.equal(from_condensed(data["layers"]["a.weight"]["condensed"], (8, 3, 3, 3)),
                       model["a.weight"])
    rep = json.loads((out / "storage.json").read_text())
    assert rep["total"]["condensed"] is None  # b is not constant fan-in
    assert rep["total"]["dense"] == (8 * 27 + 5 * 40) * 4
    assert "| a.weight | 8x3x3x3 | 32 | 4 |" in capsys.readouterr().out


def test_export_errors(tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        main([str(tmp_path / "missing")])
    _run_dir(tmp_path, {})
    with pytest.raises(UserError, match="dense run"):
        main([str(tmp_path / "run")])
    assert report.main(["export", str(tmp_path / "missing")]) == 2
