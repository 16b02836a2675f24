"""Input readers: exact contents in every block size, cheap up-front format checks."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from lrgi_ooc.ingest import datasets
from lrgi_ooc.ingest import edges
from lrgi_ooc.ingest import tables as ingest
from lrgi_ooc.base.errors import InputError


def _cat(blocks) -> np.ndarray:
    return np.concatenate(list(blocks))


def _edges(inp: edges.EdgeInput, n=None) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(inp.chunks(n)())
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


@pytest.mark.parametrize("block", [1, 5, 1000])
def test_npy_items_file_and_compressed_npz(tmp_path, block):
    a = np.arange(777, dtype=">i4").reshape(111, 7)          # big-endian on purpose
    np.save(tmp_path / "a.npy", a)
    np.savez_compressed(tmp_path / "d.npz", a=a)
    for arr in (ingest.NpyArray(tmp_path / "a.npy"),
                ingest.NpyArray(tmp_path / "d.npz", "a.npy")):
        assert arr.shape == (111, 7) and not arr.fortran
        assert np.array_equal(_cat(arr.iter_items(10, 500, block)), a.reshape(-1)[10:510])
        assert np.array_equal(_cat(arr.iter_rows(block)), a)
        assert np.array_equal(arr.read_all(), a)


def test_npy_version_2_header_and_fortran_read_all(tmp_path):
    a = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    with open(tmp_path / "v2.npy", "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    arr = ingest.NpyArray(tmp_path / "v2.npy")
    assert arr.fortran and np.array_equal(arr.read_all(), a)
    with pytest.raises(InputError, match="Fortran-ordered"):
        list(arr.iter_rows(2))


@pytest.mark.parametrize("content,match", [
    (b"hello world, not numpy", "not a readable .npy"),
    (None, "truncated"),
    ("object", "Python objects"),
])
def test_npy_rejects(tmp_path, content, match):
    p = tmp_path / "bad.npy"
    if content is None:
        np.save(p, np.arange(1000))
        p.write_bytes(p.read_bytes()[:-8])
    elif content == "object":
        np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        ingest.NpyArray(p)


@pytest.mark.parametrize("layout", ["2e", "e2", "2e-fortran", "e2-fortran"])
def test_npy_edges_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, 50, 1003), rng.integers(0, 50, 1003)
    a = np.stack([src, dst]) if layout.startswith("2e") else np.stack([src, dst], axis=1)
    if layout.endswith("fortran"):
        a = np.asfortranarray(a)
    np.save(tmp_path / "e.npy", a)
    inp = edges.npy_edges(ingest.NpyArray(tmp_path / "e.npy"), chunk=100)
    assert inp.num_edges == 1003
    s, d = _edges(inp)
    assert np.array_equal(s, src) and np.array_equal(d, dst)
    assert inp.max_id() == max(src.max(), dst.max())
    s, d = _edges(inp)                          # restartable
    assert np.array_equal(s, src)


def test_npy_edges_rejects_shapes_and_dtypes(tmp_path):
    np.save(tmp_path / "three.npy", np.zeros((3, 10), np.int64))
    with pytest.raises(InputError, match=r"\[2, E\] or \[E, 2\]"):
        edges.open_edges(tmp_path / "three.npy")
    np.save(tmp_path / "f.npy", np.zeros((2, 10)))
    with pytest.raises(InputError, match="must be integers, got float64"):
        edges.open_edges(tmp_path / "f.npy")


def test_check_ids_messages():
    assert edges.check_ids(np.array([1, 2], np.uint8), "x", 3).dtype == np.int64
    with pytest.raises(InputError, match="x: node id -4 is negative"):
        edges.check_ids(np.array([1, -4]), "x", None)
    with pytest.raises(InputError, match=r"x: node id 7 is out of range \[0, 7\)!"):
        edges.check_ids(np.array([7, 1]), "x", 7, "!")
    with pytest.raises(InputError, match="too large"):
        edges.check_ids(np.array([2**63], np.uint64), "x", None)


@pytest.mark.parametrize("stats", [True, False])
def test_parquet_edges_directory_and_statistics(tmp_path, stats):
    d = tmp_path / "parts"
    d.mkdir()
    rng = np.random.default_rng(1)
    src, dst = rng.integers(0, 900, 2500), rng.integers(0, 900, 2500)
    for i, s in enumerate(range(0, 2500, 1000)):
        pq.write_table(pa.table({"dst": dst[s:s + 1000], "src": src[s:s + 1000]}),
                       d / f"p{i}.parquet", row_group_size=300, write_statistics=stats)
    (d / ".hidden").write_text("ignored")
    inp = edges.open_edges(d, chunk=128)
    assert inp.num_edges == 2500
    assert (inp.max_id_hint is not None) == stats
    assert inp.max_id() == max(src.max(), dst.max())
    s, t = _edges(inp)
    assert np.array_equal(s, src) and np.array_equal(t, dst)


def test_parquet_edges_nulls_rejected(tmp_path):
    pq.write_table(pa.table({"src": pa.array([0, None, 2], pa.int64()), "dst": [1, 2, 0]}),
                   tmp_path / "n.parquet")
    with pytest.raises(InputError, match="null values"):
        _edges(edges.open_edges(tmp_path / "n.parquet"))


def test_csv_edges_gz_and_custom_columns(tmp_path):
    import gzip
    rng = np.random.default_rng(2)
    e = rng.integers(0, 10**9, (5000, 2))
    with gzip.open(tmp_path / "e.csv.gz", "wt") as f:
        f.write("weight,a,b\n")
        for (x, y) in e:
            f.write(f"0.5,{x},{y}\n")
    inp = edges.open_edges(tmp_path / "e.csv.gz", "a", "b")
    s, t = _edges(inp)
    assert np.array_equal(s, e[:, 0]) and np.array_equal(t, e[:, 1])
    with pytest.raises(InputError, match="columns 'src' and 'dst'"):
        edges.open_edges(tmp_path / "e.csv.gz")


def test_unknown_format(tmp_path):
    (tmp_path / "e.txt").write_text("1 2\n")
    with pytest.raises(InputError, match="cannot tell the format"):
        edges.open_edges(tmp_path / "e.txt")


@pytest.mark.parametrize("rows", [1, 3, 64])
def test_csr_table_densifies_exactly(tmp_path, rows):
    rng = np.random.default_rng(3)
    m = sp.random(40, 13, density=0.2, format="csr", random_state=4, dtype=np.float32)
    keep = np.ones(40, np.float32)
    keep[5] = 0                                  # an empty row
    m = (sp.diags(keep) @ m).tocsr()
    m.eliminate_zeros()
    # a duplicate entry (summed, as scipy's toarray does)
    dup = sp.csr_matrix((np.array([1.5, 2.0], np.float32), np.array([3, 3]), np.array([0, 2])),
                        shape=(1, 13))
    m = sp.vstack([m, dup], format="csr")
    sp.save_npz(tmp_path / "m.npz", m, compressed=bool(rng.integers(0, 2)))
    t = ingest.open_features(tmp_path / "m.npz")
    assert t.shape == (41, 13)
    assert np.array_equal(_cat(t.blocks(rows)), m.toarray())


def test_csr_rejects_other_formats_and_bad_columns(tmp_path):
    sp.save_npz(tmp_path / "c.npz", sp.random(5, 4, density=0.5, format="csc"))
    with pytest.raises(InputError, match="sparse format 'csc'"):
        ingest.open_features(tmp_path / "c.npz")
    np.savez(tmp_path / "b.npz", data=np.ones(2, np.float32), indices=np.array([0, 9]),
             indptr=np.array([0, 1, 2]), shape=np.array([2, 4]), format=np.array(b"csr"))
    t = ingest.open_features(tmp_path / "b.npz")
    with pytest.raises(InputError, match=r"column index out of range \[0, 4\)"):
        list(t.blocks(8))


def test_parquet_features_and_labels(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(250, 4))
    d = tmp_path / "x"
    d.mkdir()
    for i, s in enumerate(range(0, 250, 100)):
        pq.write_table(pa.table({f"c{j}": x[s:s + 100, j] for j in range(4)}), d / f"{i}.parquet")
    t = ingest.open_features(d)
    assert t.shape == (250, 4)
    assert np.array_equal(_cat(t.blocks(33)), x)
    pq.write_table(pa.table({"a": [1.0], "name": ["x"]}), tmp_path / "s.parquet")
    with pytest.raises(InputError, match="column 'name' has type string"):
        ingest.open_features(tmp_path / "s.parquet")
    pq.write_table(pa.table({"y": np.arange(10)}), tmp_path / "y.parquet")
    y = ingest.open_labels(tmp_path / "y.parquet")
    assert y.shape == (10,) and np.array_equal(_cat(y.blocks(3)), np.arange(10))
    pq.write_table(pa.table({"a": [1], "b": [2]}), tmp_path / "two.parquet")
    with pytest.raises(InputError, match="expected 1 column"):
        ingest.open_labels(tmp_path / "two.parquet")


def test_fortran_split_mask_rows(tmp_path):
    m = np.asfortranarray(np.random.default_rng(6).random((4, 37)) < 0.5)
    np.save(tmp_path / "m.npy", m)
    t = ingest.open_split(tmp_path / "m.npy", "--train")
    for k in range(4):
        assert np.array_equal(_cat(t.row_items(k, 5)), m[k])


def test_npz_dataset_keys(tmp_path):
    np.savez(tmp_path / "d.npz", edge_index=np.array([[0, 1], [1, 0]]), y=np.array([0, 1]))
    ds = datasets.open_npz(tmp_path / "d.npz")
    assert ds.features is None and ds.labels.shape == (2,) and not ds.splits
    np.savez(tmp_path / "n.npz", x=np.zeros((2, 2)))
    with pytest.raises(InputError, match="no 'edge_index' array"):
        datasets.open_npz(tmp_path / "n.npz")
