"""The streaming sampler (lrgi_ooc.sample.onehop) and the batch loader (lrgi_ooc.sample.loader)."""
from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
import torch

from lrgi_ooc.sample.loader import BatchLoader, gather_rows
from lrgi_ooc.sample.onehop import OneHopSampler
from lrgi_ooc.store.layout import FEATURES, GraphStore


def csr_from_edges(src: np.ndarray, dst: np.ndarray, n: int,
                   idx_dtype=np.int32) -> tuple[np.ndarray, np.ndarray]:
    """Row i = sources of the edges into i, deduplicated and sorted (as the store holds it)."""
    key = np.unique(np.asarray(dst, np.int64) * n + np.asarray(src, np.int64))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(key // n, minlength=n), out=indptr[1:])
    return indptr, (key % n).astype(idx_dtype)


def powerlaw_graph(n: int, avg_deg: float, seed: int = 0, idx_dtype=np.int32):
    """Heavy-tailed in- and out-degrees, some zero-degree nodes, no self loops."""
    rng = np.random.default_rng(seed)
    m = int(n * avg_deg)
    w = 1.0 / np.arange(1, n + 1) ** 0.8
    w /= w.sum()
    perm = rng.permutation(n)
    dst = perm[np.minimum(np.searchsorted(np.cumsum(w), rng.random(m)), n - 1)]
    src = rng.integers(0, n, m)
    keep = src != dst
    return csr_from_edges(src[keep], dst[keep], n, idx_dtype)


def random_csr(n: int, avg_deg: float, seed: int = 0):
    """Fast big CSR with Pareto in-degrees (zeros included); rows may repeat a neighbour."""
    rng = np.random.default_rng(seed)
    deg = np.minimum(rng.pareto(1.5, n) * avg_deg / 3, 5000).astype(np.int64)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(deg, out=indptr[1:])
    return indptr, rng.integers(0, n, int(indptr[-1]), dtype=np.int32)


def edge_keys(indptr, indices):
    n = indptr.size - 1
    dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    return dst * n + indices.astype(np.int64)


def check_batch(b, indptr, indices, kp, kc):
    n_all = indptr.size - 1
    B, T, n = b.seeds.size, b.num_targets, b.nodes.size
    deg = np.diff(indptr)
    # local order: seeds first, in order; no duplicate rows
    assert np.array_equal(b.nodes[:B], b.seeds)
    assert np.unique(b.nodes).size == n
    assert B <= T <= n <= B * (1 + kp) * (1 + kc)
    assert b.conv_dst.size == 0 or (b.conv_dst.min() >= 0 and b.conv_dst.max() < T)
    assert b.conv_src.size == 0 or (b.conv_src.min() >= 0 and b.conv_src.max() < n)
    assert b.prop_src.size == 0 or b.prop_src.max() < T
    assert b.prop_dst.size == 0 or b.prop_dst.max() < B
    # targets are exactly the seeds and their sampled propagation neighbours
    assert set(b.nodes[:T].tolist()) == set(b.seeds.tolist()) | set(b.nodes[b.prop_src].tolist())
    # every sampled edge exists in the CSR
    keys = edge_keys(indptr, indices)
    assert np.isin(b.nodes[b.conv_dst] * n_all + b.nodes[b.conv_src], keys).all()
    assert np.isin(b.nodes[b.prop_dst] * n_all + b.nodes[b.prop_src], keys).all()
    # without replacement: no (dst, src) pair twice
    assert np.unique(b.conv_dst * n + b.conv_src).size == b.conv_dst.size
    assert np.unique(b.prop_dst * n + b.prop_src).size == b.prop_dst.size
    # exactly min(deg, k) per node
    cc = np.bincount(b.conv_dst, minlength=T)
    assert np.array_equal(cc, np.minimum(deg[b.nodes[:T]], kc))
    pc = np.bincount(b.prop_dst, minlength=B)
    assert np.array_equal(pc, np.minimum(deg[b.seeds], kp))
    # mean weights: 1/k_i
    assert np.allclose(b.prop_weight, 1.0 / pc[b.prop_dst])


@pytest.mark.parametrize("idx_dtype", [np.int32, np.int64])
def test_batch_contract_and_edges(idx_dtype):
    indptr, indices = powerlaw_graph(3000, 6, seed=1, idx_dtype=idx_dtype)
    s = OneHopSampler(indptr, indices, (10, 5), seed=3)
    for step, seeds in enumerate(s.epoch_batches(np.arange(3000), 256, epoch=0)[:4]):
        check_batch(s.sample(seeds, 0, step), indptr, indices, 10, 5)


def test_all_neighbours_when_degree_small():
    indptr, indices = powerlaw_graph(500, 3, seed=2)
    s = OneHopSampler(indptr, indices, (10, 5))
    b = s.sample(np.arange(0, 500, 7), 0, 0)
    for t in range(b.num_targets):
        g = b.nodes[t]
        row = set(indices[indptr[g]:indptr[g + 1]].tolist())
        got = set(b.nodes[b.conv_src[b.conv_dst == t]].tolist())
        if len(row) <= 5:
            assert got == row
        else:
            assert len(got) == 5 and got <= row
    for i, g in enumerate(b.seeds):
        row = set(indices[indptr[g]:indptr[g + 1]].tolist())
        got = set(b.nodes[b.prop_src[b.prop_dst == i]].tolist())
        assert got == row if len(row) <= 10 else (len(got) == 10 and got <= row)


def test_zero_degree_nodes():
    # node 0: no neighbours; node 1 <- 2 (2 has no neighbours); node 3 <- 0, 1; node 4 isolated
    indptr, indices = csr_from_edges(np.array([2, 0, 1]), np.array([1, 3, 3]), 5)
    s = OneHopSampler(indptr, indices, (10, 5))
    b = s.sample(np.array([0, 1, 4]), 0, 0)
    check_batch(b, indptr, indices, 10, 5)
    assert b.nodes.tolist() == [0, 1, 4, 2]          # 2 is node 1's propagation neighbour
    assert b.num_targets == 4
    assert b.prop_dst.tolist() == [1] and b.prop_src.tolist() == [3]
    assert sorted(zip(b.conv_dst.tolist(), b.conv_src.tolist())) == [(1, 3)]
    # the last node of the CSR with zero degree must not read past the end
    b = s.sample(np.array([4, 3]), 0, 0)
    check_batch(b, indptr, indices, 10, 5)
    assert set(b.nodes.tolist()) == {4, 3, 0, 1, 2}


def test_deterministic_and_keyed():
    indptr, indices = powerlaw_graph(2000, 20, seed=4)
    seeds = np.arange(100, 400)
    a = OneHopSampler(indptr, indices, (10, 5), seed=7)
    b = OneHopSampler(indptr.copy(), indices.copy(), (10, 5), seed=7)
    x, y = a.sample(seeds, 2, 5), b.sample(seeds, 2, 5)
    for f in ("nodes", "conv_src", "conv_dst", "prop_src", "prop_dst", "prop_weight"):
        assert np.array_equal(getattr(x, f), getattr(y, f))
    assert x.num_targets == y.num_targets
    # resuming at (epoch, step) needs no replay: interleaved calls do not change results
    a.sample(seeds[::-1].copy(), 0, 0)
    assert np.array_equal(a.sample(seeds, 2, 5).nodes, x.nodes)
    for other in (OneHopSampler(indptr, indices, (10, 5), seed=8).sample(seeds, 2, 5),
                  a.sample(seeds, 3, 5), a.sample(seeds, 2, 6)):
        assert not np.array_equal(other.nodes, x.nodes)
    # the epoch shuffle depends on (seed, epoch) only and covers every node once
    e1 = a.epoch_batches(np.arange(2000), 128, 3)
    assert all(np.array_equal(p, q) for p, q in zip(e1, b.epoch_batches(np.arange(2000), 128, 3)))
    assert np.array_equal(np.sort(np.concatenate(e1)), np.arange(2000))
    assert not np.array_equal(e1[0], a.epoch_batches(np.arange(2000), 128, 4)[0])


def test_last_batch_of_one_dropped_and_bad_seeds():
    indptr, indices = powerlaw_graph(100, 3)
    s = OneHopSampler(indptr, indices, (3, 2))
    assert [len(b) for b in s.epoch_batches(np.arange(21), 10, 0)] == [10, 10]
    assert [len(b) for b in s.epoch_batches(np.arange(22), 10, 0)] == [10, 10, 2]
    with pytest.raises(ValueError, match="distinct"):
        s.sample(np.array([1, 2, 1]), 0, 0)
    with pytest.raises(ValueError, match="lie in"):
        s.sample(np.array([1, 100]), 0, 0)


def test_sym_weights():
    indptr, indices = powerlaw_graph(1000, 15, seed=5)
    deg = np.diff(indptr)
    s = OneHopSampler(indptr, indices, (10, 5), norm="sym")
    b = s.sample(np.arange(0, 1000, 3), 0, 0)
    di = deg[b.seeds[b.prop_dst]]
    dj = np.maximum(deg[b.nodes[b.prop_src]], 1)
    ki = np.minimum(di, 10)
    assert np.allclose(b.prop_weight, di / (ki * np.sqrt(di * dj)), rtol=1e-6)


@pytest.mark.parametrize("n,avg", [(10_000, 10), (1_000_000, 5)])
def test_rows_bound_independent_of_n(n, avg):
    indptr, indices = random_csr(n, avg, seed=6)
    assert (np.diff(indptr) == 0).any() and np.diff(indptr).max() > 100
    s = OneHopSampler(indptr, indices, (10, 5), seed=1)
    batches = s.epoch_batches(np.arange(n), 512, 0)
    for step in (0, 1, len(batches) // 2):
        b = s.sample(batches[step], 0, step)
        assert b.nodes.size <= 512 * 11 * 6
        assert np.array_equal(b.nodes[:512], batches[step])
        assert b.conv_dst.size <= 5 * b.num_targets and b.prop_dst.size <= 10 * 512
    assert s._table(512).shape[0] < 4 * 512 * 11 * 6    # relabel scratch is O(B), not O(N)


# ------------------------------------------------------------------ loader
def _collect(loader, it=None):
    out = []
    for tb in (it if it is not None else loader):
        out.append((tb.x.clone(), tb.conv_edge_index.clone(), tb.prop_src.clone(),
                    tb.prop_dst.clone(), tb.prop_weight.clone(), tb.num_targets, tb.num_seeds,
                    tb.step))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        for u, v in zip(p, q):
            assert torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v


@pytest.fixture(scope="module")
def small_graph():
    indptr, indices = powerlaw_graph(1500, 8, seed=9)
    x = np.random.default_rng(0).standard_normal((1500, 12)).astype(np.float32)
    return indptr, indices, x


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_loader_same_with_and_without_prefetch(small_graph, dtype):
    indptr, indices, x = small_graph
    table = x.astype(dtype)
    s = OneHopSampler(indptr, indices, (6, 4), seed=2)
    sync = _collect(BatchLoader(s, table, np.arange(1500), 100, epoch=1, prefetch=0))
    asyn = _collect(BatchLoader(s, table, np.arange(1500), 100, epoch=1, prefetch=3))
    _same(sync, asyn)
    assert len(sync) == 15
    for (xb, ei, ps, pd, pw, T, B, step), seeds in zip(sync, s.epoch_batches(np.arange(1500),
                                                                              100, 1)):
        b = s.sample(seeds, 1, step)
        assert xb.dtype == torch.float32
        assert torch.equal(xb, torch.from_numpy(table[b.nodes].astype(np.float32)))
        assert torch.equal(ei, torch.from_numpy(np.stack([b.conv_src, b.conv_dst])))
        assert (T, B) == (b.num_targets, 100)


def test_loader_resume_and_buffer_reuse(small_graph):
    indptr, indices, x = small_graph
    s = OneHopSampler(indptr, indices, (6, 4), seed=2)
    loader = BatchLoader(s, x, np.arange(1500), 100, prefetch=2)
    full = _collect(loader, loader.iter_epoch(3))
    ptrs = {sl.host.data_ptr() for sl in loader._slots if sl.host is not None}
    _same(_collect(loader, loader.iter_epoch(3, start_step=11)), full[11:])
    assert len(BatchLoader(s, x, np.arange(1500), 100, epoch=3, start_step=11)) == 4
    for e in range(3):                                  # more epochs: same buffers, no growth
        _collect(loader, loader.iter_epoch(e))
    assert {sl.host.data_ptr() for sl in loader._slots if sl.host is not None} == ptrs


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "lrgi-batch-prefetch" and t.is_alive()]


def test_loader_early_break_and_errors(small_graph):
    indptr, indices, x = small_graph
    s = OneHopSampler(indptr, indices, (6, 4))
    before = len(_prefetch_threads())
    loader = BatchLoader(s, x, np.arange(1500), 50, prefetch=2)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    loader.close()
    assert len(_prefetch_threads()) == before
    it = iter(BatchLoader(s, x, np.arange(1500), 50, prefetch=2))
    next(it)
    del it
    gc.collect()
    assert len(_prefetch_threads()) == before

    class Failing(OneHopSampler):
        def sample(self, seeds, epoch, step):
            if step == 3:
                raise RuntimeError("boom")
            return super().sample(seeds, epoch, step)

    f = Failing(indptr, indices, (6, 4))
    with pytest.raises(RuntimeError, match="boom"):
        for _ in BatchLoader(f, x, np.arange(1500), 50, prefetch=2):
            pass
    assert len(_prefetch_threads()) == before


def test_loader_on_store_memmap(tmp_path, small_graph):
    indptr, indices, x = small_graph
    store = GraphStore.create(tmp_path / "g.lrgi", {"num_nodes": 1500, "num_edges": 0})
    store.create_array(FEATURES, x.shape, np.float16)
    w = store.stream_writer(FEATURES)
    w.write(x.astype(np.float16))
    w.close()
    table = store.table(0)
    s = OneHopSampler(indptr, indices, (6, 4))
    out = np.empty((5000, 12), np.float16)
    nodes = np.array([1499, 3, 700, 2, 1000])
    assert np.array_equal(gather_rows(table, nodes, out), x.astype(np.float16)[nodes])
    got = _collect(BatchLoader(s, table, np.arange(1500), 300, prefetch=2))
    _same(got, _collect(BatchLoader(s, x.astype(np.float16), np.arange(1500), 300, prefetch=0)))


def test_gather_rows_float16_to_float32_exact():
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(4096, 16)
    table = bits.view(np.float16)                      # every float16 value: subnormals, inf, nan
    nodes = np.random.default_rng(1).permutation(4096)[:1000]
    out = np.empty((1200, 16), np.float32)
    got = gather_rows(table, nodes, out)
    want = table[nodes].astype(np.float32)
    assert got.shape == (1000, 16)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    strided = np.asfortranarray(table)                 # non-contiguous: numpy fallback
    assert np.array_equal(gather_rows(strided, nodes, out).view(np.uint32), want.view(np.uint32))
