"""build_csr against an in-memory numpy reference, in one bucket and in many."""
from __future__ import annotations

import numpy as np
import pytest

from lrgi_ooc.csr import build as csrbuild
from lrgi_ooc.csr.build import build_csr
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.store.layout import INDICES, INDPTR, GraphStore


def reference(src, dst, n, undirected, loops, dups):
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    if loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    if undirected:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    order = np.lexsort((src, dst))
    src, dst = src[order], dst[order]
    if dups and len(src):
        keep = np.ones(len(src), bool)
        keep[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
        src, dst = src[keep], dst[keep]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    return indptr, src


def chunked(src, dst, size):
    return lambda: iter([(src[i:i + size], dst[i:i + size]) for i in range(0, len(src), size)])


def run(tmp_path, src, dst, n=None, name="s", chunk=1000, **kw):
    store = GraphStore.create(tmp_path / name, {})
    res = build_csr(store, chunked(src, dst, chunk), n, source="edges.npy",
                    workdir=tmp_path / f"{name}.work", **kw)
    work = tmp_path / f"{name}.work"
    assert not work.exists() or not any(work.iterdir())
    return res, np.array(store.indptr()), np.array(store.indices()), store


def random_graph(rng, n, m, loops=True):
    src = rng.integers(0, n, m)
    dst = rng.integers(0, n // 2, m)          # upper half of the nodes: zero in-degree
    if loops:
        src[:m // 20] = dst[:m // 20]
    dup = rng.integers(0, m, m // 10)
    src = np.concatenate([src, src[dup]])
    dst = np.concatenate([dst, dst[dup]])
    return src, dst


@pytest.mark.parametrize("undirected", [False, True])
@pytest.mark.parametrize("loops,dups", [(True, True), (False, True), (True, False), (False, False)])
def test_matches_reference(tmp_path, undirected, loops, dups):
    rng = np.random.default_rng(1)
    src, dst = random_graph(rng, 500, 4000)
    n = 600                                    # num_nodes larger than any id
    res, indptr, indices, store = run(tmp_path, src, dst, n, undirected=undirected,
                                      remove_self_loops=loops, remove_duplicates=dups)
    ref_ptr, ref_idx = reference(src, dst, n, undirected, loops, dups)
    np.testing.assert_array_equal(indptr, ref_ptr)
    np.testing.assert_array_equal(indices, ref_idx)
    assert indices.dtype == np.int32 and indptr.dtype == np.int64
    assert res.num_nodes == n and res.num_edges == len(ref_idx)
    assert res.num_input_edges == len(src)
    n_loops = int((src == dst).sum())
    assert res.self_loops_removed == (n_loops if loops else 0)
    kept = (len(src) - res.self_loops_removed) * (2 if undirected else 1)
    assert res.duplicates_removed == kept - len(ref_idx)
    if dups:
        rows = np.split(indices, indptr[1:-1])
        assert all(np.all(np.diff(r) > 0) for r in rows)


@pytest.mark.parametrize("undirected", [False, True])
@pytest.mark.parametrize("dups", [True, False])
@pytest.mark.parametrize("in_place", [False, True])
def test_many_buckets_identical_to_one(tmp_path, monkeypatch, undirected, dups, in_place):
    rng = np.random.default_rng(2)
    src, dst = random_graph(rng, 5000, 60000)
    one = run(tmp_path, src, dst, name="one", undirected=undirected, remove_duplicates=dups)
    if in_place:                    # parts larger than the scratch buffer sort in place
        monkeypatch.setattr(csrbuild, "_PART_TMP", 64)
    planned = []
    plan = csrbuild._Build.plan
    monkeypatch.setattr(csrbuild._Build, "plan",
                        lambda self: planned.append(plan(self)) or planned[-1])
    many = run(tmp_path, src, dst, name="many", chunk=777, undirected=undirected,
               remove_duplicates=dups, memory_limit=1 << 18)
    assert len(planned) == 1 and 5 < len(planned[0]) < 50         # really bucketed
    assert one[0] == many[0]
    np.testing.assert_array_equal(one[1], many[1])
    np.testing.assert_array_equal(one[2], many[2])
    ref_ptr, ref_idx = reference(src, dst, src.max() + 1 if not undirected
                                 else max(src.max(), dst.max()) + 1, undirected, True, dups)
    np.testing.assert_array_equal(many[1], ref_ptr)
    np.testing.assert_array_equal(many[2], ref_idx)


def test_many_buckets_with_int64_temp_ids(tmp_path, monkeypatch):
    """Ids past the int32 limit switch the temp pairs to int64 mid-stream (limit lowered)."""
    monkeypatch.setattr(csrbuild, "_ID32_LIMIT", 3000)
    rng = np.random.default_rng(3)
    src, dst = random_graph(rng, 5000, 30000)
    src[-1] = 4999
    res, indptr, indices, _ = run(tmp_path, src, dst, chunk=500, memory_limit=1 << 18)
    ref_ptr, ref_idx = reference(src, dst, 5000, False, True, True)
    np.testing.assert_array_equal(indptr, ref_ptr)
    np.testing.assert_array_equal(indices, ref_idx)


def test_num_nodes_inferred_and_float_ids(tmp_path):
    src = np.array([0.0, 1.0, 7.0])
    dst = np.array([1.0, 2.0, 0.0])
    res, indptr, indices, store = run(tmp_path, src, dst)
    assert res.num_nodes == 8 and res.num_edges == 3
    np.testing.assert_array_equal(indptr, [0, 1, 2, 3, 3, 3, 3, 3, 3])
    np.testing.assert_array_equal(indices, [7, 0, 1])


def test_readable_with_zarr(tmp_path):
    import zarr
    src, dst = np.array([2, 0, 1]), np.array([0, 1, 1])
    _, indptr, indices, store = run(tmp_path, src, dst)
    np.testing.assert_array_equal(zarr.open_array(str(store.path / INDPTR))[...], indptr)
    np.testing.assert_array_equal(zarr.open_array(str(store.path / INDICES))[...], indices)


@pytest.mark.parametrize("src,dst,n,message", [
    ([0, -3], [1, 1], None, "edges.npy: node id -3 is negative"),
    ([0, 120], [1, 1], 100, "edges.npy: node id 120 >= --num-nodes 100"),
    ([0.0, 1.5], [1.0, 1.0], None, "edges.npy: node id 1.5 is not an integer"),
    ([0.0, np.nan], [1.0, 1.0], None, "edges.npy: node id nan is not an integer"),
    ([], [], None, "edges.npy: the edge list is empty"),
    (["a"], ["b"], None, "edges.npy: node ids must be integers"),
])
def test_errors(tmp_path, src, dst, n, message):
    with pytest.raises(InputError) as e:
        run(tmp_path, np.array(src), np.array(dst), n)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)
    assert not any(p.name.startswith("csr-") for p in tmp_path.rglob("*"))


def test_error_after_spill_leaves_no_temp_files(tmp_path):
    src = np.arange(20000) % 1000
    dst = src.copy()[::-1]
    bad = np.concatenate([dst[:-1], [-1]])
    work = tmp_path / "work"
    work.mkdir()
    store = GraphStore.create(tmp_path / "s", {})
    with pytest.raises(InputError, match="negative"):
        build_csr(store, chunked(src, bad, 1000), None, source="edges.npy",
                  memory_limit=1 << 16, workdir=work)
    assert list(work.iterdir()) == []


def test_dask_spill_task_in_slices_equals_one_slice(tmp_path, monkeypatch):
    # a spill task scans each decoded block through a reused buffer of _PIECE pairs: slicing
    # must not change the segment file, the histogram or the counts
    from lrgi_ooc.csr import tasks as csrdask
    rng = np.random.default_rng(5)
    blocks = [(rng.integers(0, 5000, m), rng.integers(0, 5000, m)) for m in (9000, 1, 4001)]
    blocks[0][1][:30] = blocks[0][0][:30]                      # self loops
    out = {}
    for piece in (1 << 20, 7):
        monkeypatch.setattr(csrdask, "_PIECE", piece)
        spec = csrdask._Spec(str(tmp_path), f"p{piece}", 5000, "s", True, True, True, 1 << 24)
        hist, loops, edges = csrdask._spill_part_task(spec, 0, lambda: iter(blocks))
        out[piece] = (spec.file("seg0").read_bytes(), hist.copy(), loops, edges)
    (a, ha, la, ea), (b, hb, lb, eb) = out.values()
    loops = sum(int((s == d).sum()) for s, d in blocks)
    assert loops >= 30
    assert a == b and np.array_equal(ha, hb) and (la, ea) == (lb, eb) == (loops, 13002)
    assert ha.sum() == 2 * (13002 - loops)                     # undirected, loops dropped


def test_sort_scratch_is_as_wide_as_the_widest_part(tmp_path, monkeypatch):
    """Each thread's out-of-place scratch holds the largest part's edges (any run of one part's
    histogram blocks), capped at _PART_TMP: every part still sorts out of place, and the budget
    sets aside only that."""
    rng = np.random.default_rng(4)
    src = rng.integers(0, 200_000, 50_000)
    dst = np.concatenate([rng.integers(0, 1 << 15, 30_000),      # part 0: 30k in-edges
                          rng.integers(1 << 15, 200_000, 20_000)])
    widths = []
    rows = csrbuild._Build._range

    def _range(self, *a):
        out = rows(self, *a)
        widths.append((self.tmp_width, self.bufs["tmp"].shape[1]))
        return out
    monkeypatch.setattr(csrbuild._Build, "_range", _range)
    res, indptr, indices, _ = run(tmp_path, src, dst, 200_000, chunk=10_000,
                                  remove_self_loops=False)
    ref_ptr, ref_idx = reference(src, dst, 200_000, False, False, True)
    np.testing.assert_array_equal(indptr, ref_ptr)
    np.testing.assert_array_equal(indices, ref_idx)
    counts = np.bincount(dst >> 15)
    assert widths and all(w == scratch == counts.max() for w, scratch in widths)
    b = csrbuild._Build(GraphStore.create(tmp_path / "h", {}), 1 << 20, "e", False, True, True,
                        1 << 30, tmp_path / "w")
    g = 1 << (b.pshift - b.shift)                 # blocks a part: 2^11 (shift 4)
    b.hist[3:5] = [100, 50]
    b.hist[10_000], b.hist[10_000 + g - 1] = 70, 90     # a part may start at any block
    assert g == 2048 and b.tmp_width == 160
    b.hist[10_000 + g] = 500                      # one block on: one part holds it with the 90
    assert b.tmp_width == 90 + 500                # the window that leaves the 70 out
    monkeypatch.setattr(csrbuild, "_PART_TMP", 120)
    assert b.tmp_width == 120
