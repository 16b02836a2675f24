"""Sparse input rows (issue 13): the CSR path gives the dense path's numbers.

Bag-of-words features are projected through their non-zeros (`nn.sparseproj`), gathered by
the loader straight into CSR batches, and embedded by a sparse matmul; each is compared
with the dense computation it replaces (forced by a zero density threshold).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphs import make_store
from lrgi_ooc.nn import sparseproj
from lrgi_ooc.nn.attention import input_projections
from lrgi_ooc.nn.blockweights import matmul_t
from lrgi_ooc.nn.trained import load_weights
from lrgi_ooc.sample.loader import BatchLoader, gather_csr, table_csr
from lrgi_ooc.sample.onehop import OneHopSampler
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.embed import block_forward, embed_layer
from lrgi_ooc.stages.train import train_layer

torch.set_num_threads(1)


def sparse_features(n: int, f: int, density: float = 0.02, seed: int = 0) -> np.ndarray:
    """Random [n, f] float32 with about `density` non-zeros (a few of them -0.0, which
    count as zeros) and some all-zero rows."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, f)) < density, rng.standard_normal((n, f)), 0.0)
    x[rng.random((n, f)) < density / 4] = -0.0
    x[rng.integers(0, n, n // 20)] = 0.0
    return x.astype(np.float32)


def dense_path(monkeypatch) -> None:
    """From here on nothing counts as sparse: the dense matmuls run instead."""
    monkeypatch.setattr(sparseproj, "SPARSE_DENSITY", 0.0)


def test_projections_and_weight_gradients_equal_the_dense_matmuls(monkeypatch):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(sparse_features(300, 200, seed=1))
    t = 120
    lin0, skip0 = (torch.from_numpy(rng.standard_normal((d, 200)).astype(np.float32))
                   for d in (64, 48))
    gh, gs = torch.randn(300, 64), torch.randn(t, 48)

    def run(xin):
        lin, skip = lin0.clone().requires_grad_(), skip0.clone().requires_grad_()
        h, s = input_projections(xin, lin, skip, t)
        ((h * gh).sum() + (s * gs).sum()).backward()
        return h.detach(), s.detach(), lin.grad, skip.grad

    sparse = run(x)
    csr = run(x.to_sparse_csr())          # a CSR batch (the loader's) takes the same kernels
    for a, b in zip(sparse, csr):
        assert torch.equal(a, b)
    dense_path(monkeypatch)
    dense = run(x)
    assert torch.equal(dense[0], x @ lin0.t())     # really the dense matmul
    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dense_rows_and_rows_needing_gradients_take_the_dense_matmuls():
    x = torch.randn(50, 20)                       # every entry non-zero
    lin, skip = torch.randn(8, 20), torch.randn(8, 20)
    h, s = input_projections(x, lin, skip, 10)
    assert torch.equal(h, x @ lin.t()) and torch.equal(s, x[:10] @ skip.t())
    xs = torch.from_numpy(sparse_features(50, 20, 0.02)).requires_grad_()
    h, _ = input_projections(xs, lin, skip, 10)   # a hidden layer's input: no sparse path
    h.sum().backward()
    assert xs.grad is not None


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gather_csr_equals_the_dense_rows(dtype):
    table = sparse_features(100, 40, 0.1, seed=2).astype(dtype)
    nodes = np.array([7, 3, 3, 99, 0, 51, 7], dtype=np.int64)
    want = table[nodes].astype(np.float32)
    nnz = int(np.count_nonzero(want))
    crow, col, val = np.empty(8, np.int64), np.empty(nnz, np.int64), np.empty(nnz, np.float32)
    assert gather_csr(table, nodes, nnz, crow, col, val) == nnz
    got = torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(col),
                                  torch.from_numpy(val), want.shape,
                                  check_invariants=True).to_dense().numpy()
    assert np.array_equal(got, want)
    assert np.array_equal(col[crow[1]:crow[2]], np.flatnonzero(want[1]))   # ascending
    assert gather_csr(table, nodes, nnz - 1, crow, col, val) == -1          # over the cap


def test_loader_gives_csr_batches_with_the_dense_values():
    n = 200
    rng = np.random.default_rng(3)
    src, dst = rng.integers(0, n, 1200), rng.integers(0, n, 1200)
    order = np.argsort(dst, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    indices = src[order].astype(np.int32)
    sampler = OneHopSampler(indptr, indices, (4, 3))
    seeds = np.arange(n)
    dense_x = np.random.default_rng(4).standard_normal((n, 60)).astype(np.float32)
    for x, kind in ((sparse_features(n, 60, 0.02), torch.sparse_csr),
                    (sparse_features(n, 60, 0.02).astype(np.float16), torch.sparse_csr),
                    (dense_x, torch.strided)):
        assert (table_csr(x, 0.05) is None) == (kind == torch.strided)
        if kind == torch.sparse_csr:               # the copy's bound: 8 bytes a row and a value
            need = 8 * (n + 1 + int(np.count_nonzero(x)))
            assert table_csr(x, 0.05, budget=need) is not None
            assert table_csr(x, 0.05, budget=need - 1) is None
        for prefetch in (0, 2):
            sparse = BatchLoader(sampler, x, seeds, 32, prefetch=prefetch, sparse_below=0.05)
            dense = BatchLoader(sampler, x, seeds, 32, prefetch=prefetch)
            steps = 0
            for a, b in zip(sparse, dense):      # in lockstep: both batches still valid
                assert a.x.layout == kind and b.x.layout == torch.strided
                assert torch.equal(a.x.to_dense(), b.x)
                steps += 1
            assert steps == len(dense) > 3
    # a table dense as a whole (no table CSR) whose batches are sparse: each batch scans its
    # rows; nodes 0..49 are dense and isolated, the seeds and their neighbours sparse
    x = sparse_features(n, 60, 0.02)
    x[:50] = dense_x[:50]
    keep = (src >= 50) & (dst >= 50)
    d = dst[keep]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(d, minlength=n), out=indptr[1:])
    sampler = OneHopSampler(indptr, src[keep][np.argsort(d, kind="stable")].astype(np.int32),
                            (4, 3))
    assert table_csr(x, 0.05) is None
    sparse = BatchLoader(sampler, x, np.arange(50, n), 32, prefetch=0, sparse_below=0.05)
    dense = BatchLoader(sampler, x, np.arange(50, n), 32, prefetch=0)
    steps = 0
    for a, b in zip(sparse, dense):
        assert a.x.layout == torch.sparse_csr
        assert torch.equal(a.x.to_dense(), b.x)
        steps += 1
    assert steps == len(dense) > 3


def test_embed_matmul_equals_the_dense_one(monkeypatch):
    x = sparse_features(500, 300, 0.02, seed=5)
    w = np.random.default_rng(6).standard_normal((32, 300)).astype(np.float32)
    got = matmul_t(x, w)
    want = (x.astype(np.float64) @ w.T.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    dense_path(monkeypatch)
    assert np.array_equal(matmul_t(x, w), want)


CFG = dict(dim=32, heads=4, fanout=(4, 3), batch_size=64, steps=5)


def test_training_and_embedding_on_sparse_features_equal_the_dense_path(tmp_path, monkeypatch):
    x = sparse_features(400, 300, 0.02, seed=7)
    stores = [make_store(tmp_path / f"{k}.zarr", n=400, features=x, seed=7)
              for k in ("sparse", "dense")]
    weights, tables, calls = [], [], []
    kernel = sparseproj.csr_project
    monkeypatch.setattr(sparseproj, "csr_project",
                        lambda *a: (calls.append(a[4]), kernel(*a))[1])
    for k, s in enumerate(stores):
        if k == 1:
            dense_path(monkeypatch)
        calls.clear()
        train_layer(s.path, 1, TrainConfig(**CFG))
        embed_layer(s.path, 1)
        # sparse: 5 training steps (forward with the targets' skip, backward with all 300
        # columns wide) and embed's two matmuls (no skip rows)
        assert sorted(set(calls)) == ([] if k else [0, *sorted(set(calls) - {0, 300}), 300])
        assert (calls.count(0), calls.count(300), len(calls)) == ((0, 0, 0) if k else (2, 5, 12))
        block, _ = load_weights(s, 1)
        weights.append(block.state_dict())
        tables.append(np.array(s.table(1)))
    for name, a in weights[0].items():
        torch.testing.assert_close(a, weights[1][name], rtol=1e-5, atol=1e-5, msg=name)
    # tables of weights 1e-5 apart, summed over 300 columns
    np.testing.assert_allclose(tables[0], tables[1], rtol=1e-4, atol=1e-4)
    # the same weights embedded through the sparse and the dense matmuls
    block, _ = load_weights(stores[0], 1)
    s = stores[0]
    monkeypatch.undo()
    targets = np.arange(s.num_nodes)
    sparse = block_forward(block, x, s.indptr(), s.indices(), targets)
    np.testing.assert_allclose(sparse, tables[0], rtol=1e-6, atol=1e-6)
    dense_path(monkeypatch)
    dense = block_forward(block, x, s.indptr(), s.indices(), targets)
    np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-6)
