"""The mask engine: exact counts, zeros that stay zero (weights and optimizer state), fan-in."""
from __future__ import annotations

import math

import pytest
import torch

from sparse_runner.utils.errors import UserError
from sparse_runner.sparsity import MaskManager, random_mask
from sparse_runner.sparsity.fanin import (constant_fanin, constant_fanin_mask, fanin_counts,
                                          row_counts)
from sparse_helpers import make, optimizer_state, step

SHAPES = [(6, 4, 3, 3), (10, 36), (5, 10)]


@pytest.mark.parametrize("nnz", [0, 1, 17, 144])
def test_random_mask_exact_count(nnz):
    m = random_mask(torch.Size((4, 4, 3, 3)), nnz, torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and int(m.sum()) == nnz


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masked_weights_and_state_stay_zero(optimizer):
    model, method, opt = make("static", SHAPES, 0.8, optimizer=optimizer)
    for i in range(4):
        step(model, method, opt, i)
        for p, m in zip(method.masks.params, method.masks.masks):
            assert not p[~m].any()
            assert all(not t[~m].any() for t in optimizer_state(opt, p))
            assert p[m].ne(0).all()  # active weights did train


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_set_masks_zeroes_dropped_weights_and_state(optimizer):
    model, method, opt = make("static", SHAPES, 0.5, optimizer=optimizer)
    step(model, method, opt, 0)
    mm: MaskManager = method.masks
    new = {i: random_mask(p.shape, int(m.sum()), torch.Generator().manual_seed(i))
           for i, (p, m) in enumerate(zip(mm.params, mm.masks))}
    old = [m.clone() for m in mm.masks]
    kept = [p.detach().clone() for p in mm.params]
    mm.set_masks(new)
    for p, m, o, k in zip(mm.params, mm.masks, old, kept):
        assert not p[~m].any() and all(not t[~m].any() for t in optimizer_state(opt, p))
        assert torch.equal(p[m & o], k[m & o])  # surviving weights untouched
        assert not p[m & ~o].any()              # grown weights start at zero


def test_mask_state_is_bool_by_name():
    _, method, _ = make("static", SHAPES, 0.7)
    state = method.mask_state()
    assert list(state) == ["ws.0", "ws.1", "ws.2"]
    assert all(v.dtype == torch.bool and v.device.type == "cpu" for v in state.values())
    with pytest.raises(ValueError, match="bool"):
        method.masks.set_masks({0: state["ws.0"].float()})


def test_constant_fanin_mask():
    m = constant_fanin_mask((7, 3, 3, 3), 5, torch.Generator().manual_seed(1))
    assert m.shape == (7, 3, 3, 3) and row_counts(m).tolist() == [5] * 7
    assert constant_fanin(m) == 5
    m[2] = False                      # an ablated row keeps the layout constant fan-in
    assert constant_fanin(m) == 5
    m[3, 0, 0, 0] = ~m[3, 0, 0, 0]
    assert constant_fanin(m) is None


def test_fanin_counts_meet_the_global_budget():
    shapes = {"a": (64, 576), "b": (128, 576), "c": (128, 1152), "d": (10, 512)}
    nnz = {"a": 3686, "b": 7373, "c": 14746, "d": 512}
    k = fanin_counts(shapes, nnz, 0.9)
    assert all(nnz[n] // shapes[n][0] <= k[n] <= -(-nnz[n] // shapes[n][0]) for n in shapes)
    got = sum(k[n] * shapes[n][0] for n in shapes)
    assert 0 <= sum(nnz.values()) - got < max(s[0] for s in shapes.values())


def test_fanin_zero_is_a_user_error():
    with pytest.raises(UserError, match="constant fan-in of big would be 0"):
        fanin_counts({"big": (64, 9)}, {"big": 50}, 0.91)
    assert fanin_counts({"big": (64, 9)}, {"big": 50}, 0.91, strict=False) == {"big": 0}


def test_static_constant_fanin():
    _, method, _ = make("static", [(16, 8, 3, 3), (12, 40)], 0.9, fan_in="constant")
    for m in method.masks.masks:
        assert constant_fanin(m) is not None and bool(row_counts(m).gt(0).all())
    nnz = sum(method.masks.nnz())
    total = sum(m.numel() for m in method.masks.masks)
    assert 0 <= (total - math.floor(0.9 * total)) - nnz < 16
    with pytest.raises(UserError, match="fan_in"):
        make("static", SHAPES, 0.9, fan_in="diagonal")
