"""Exact-count selection: every mask decision of every method goes through these functions."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_runner.flops.tables import Layer, LayerTable, dense_grad_extra
from sparse_runner.sparsity.distributions import budget_nnz, keep_budget
from sparse_runner.sparsity.topk import (GlobalRanking, drop_and_grow, global_topk, split_flat,
                                         top_per_layer, topk_indices)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300_000), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
       ties=st.booleans())
def test_topk_indices_is_exact(n, frac, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    score = torch.rand(n, generator=gen)
    if ties:
        score = (score * 8).floor()                # many equal values
    k = int(frac * n)
    idx = topk_indices(score, k)
    assert idx.numel() == k and idx.unique().numel() == k
    if k:  # the selected values are the k largest: compare with a full sort
        assert torch.equal(score[idx].sort().values, score.sort().values[n - k:])


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5), frac=st.floats(0, 1),
       seed=st.integers(0, 999))
def test_global_topk_keeps_the_k_best_over_all_layers(sizes, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.rand(n, generator=gen) for n in sizes]
    k = int(frac * sum(sizes))
    masks = global_topk(scores, k)
    assert sum(int(m.sum()) for m in masks) == k
    kept = torch.cat([s[m] for s, m in zip(scores, masks)])
    dropped = torch.cat([s[~m] for s, m in zip(scores, masks)])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()
    ranking = GlobalRanking(scores)                # the sorted variant used for planning
    assert ranking.counts(k) == [int(m.sum()) for m in masks]


def test_split_flat_and_per_layer_counts():
    flat = torch.arange(10)
    parts = split_flat(flat, [torch.Size([2, 2]), torch.Size([6])])
    assert parts[0].tolist() == [[0, 1], [2, 3]] and parts[1].tolist() == [4, 5, 6, 7, 8, 9]
    keys = [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([[0.5, 0.7]])]
    masks = top_per_layer(keys, [2, 1])
    assert masks[0].tolist() == [True, False, True] and masks[1].tolist() == [[False, True]]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 500), nnz_frac=st.floats(0.05, 0.95), drop=st.floats(0, 1),
       seed=st.integers(0, 999))
def test_drop_and_grow_keeps_the_count(n, nnz_frac, drop, seed):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[: max(1, int(nnz_frac * n))]] = True
    k = int(mask.sum())
    w, g = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
    new = drop_and_grow(mask, w, g, int(drop * k))
    assert int(new.sum()) == k
    survivors = mask & new
    assert int(survivors.sum()) >= k - int(drop * k)


def test_dense_gradient_flop_formula():
    table = LayerTable((Layer("a", (4, 4), 100), Layer("b", (2, 8), 40)))
    # a: 10% dense -> 90 extra, b: dense -> 0 extra; layers not listed cost nothing extra
    assert dense_grad_extra(table, {"a": 0.1, "b": 1.0}) == 90.0
    assert dense_grad_extra(table, {}) == 0.0


def test_budget_functions():
    assert budget_nnz(1000, 0.9) == 100 and budget_nnz(1001, 0.9) == 1001 - math.floor(900.9)
    table = LayerTable((Layer("a", (10, 10), 0), Layer("b", (10, 10), 0)))
    assert keep_budget(table, ["a", "b"], 0.9, 0) == 20
    assert keep_budget(table, ["a"], 0.9, 100) == 0     # dense weights take the whole budget
    assert keep_budget(table, ["a"], 0.5, 20) == 40     # (100 + 20) * 0.5 - 20
