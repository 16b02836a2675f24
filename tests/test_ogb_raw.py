"""`--ogb` on ogb's binary raw layout (ogbn-papers100M's): streamed from the .npz members,
stored or deflated, never through ogb's loader; the store equals a reference built with
`np.load`; the member reader holds one block at a time; a missing file is one line."""
from __future__ import annotations

import gzip
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.ingest import datasets
from lrgi_ooc.ingest.npz_stream import ZipNpyArray
from lrgi_ooc.store import layout as st
from test_preprocess import check_store, read_zarr, ref_csr

NAME, DIR = "ogbn-papers100M", "ogbn_papers100M"


def _gz_ids(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, ids[:, None], fmt="%d")


def make_fake_papers(root: Path, *, compressed: bool, n: int = 500, e: int = 4000, f: int = 6,
                     seed: int = 0) -> Path:
    """A tiny ogbn-papers100M in ogb's binary raw layout: float16 features, float labels
    with NaN for the unlabelled nodes, a 'time' split over the labelled ones."""
    rng = np.random.default_rng(seed)
    d = root / DIR
    (d / "raw").mkdir(parents=True)
    save = np.savez_compressed if compressed else np.savez
    save(d / "raw" / "data.npz", edge_index=rng.integers(0, n, (2, e)),
         node_feat=rng.normal(size=(n, f)).astype(np.float16),
         node_year=rng.integers(1990, 2020, (n, 1)),
         num_nodes_list=np.array([n]), num_edges_list=np.array([e]))
    y = rng.integers(0, 172, n).astype(np.float32)
    y[rng.random(n) < 0.7] = np.nan
    save(d / "raw" / "node-label.npz", node_label=y[:, None])
    lab = rng.permutation(np.flatnonzero(~np.isnan(y)))
    a, b = int(len(lab) * 0.78), int(len(lab) * 0.86)
    for part, ids in (("train", lab[:a]), ("valid", lab[a:b]), ("test", lab[b:])):
        _gz_ids(d / "split" / "time" / f"{part}.csv.gz", ids)
    (d / "RELEASE_v1.txt").write_text("fake\n")
    return d


def reference(d: Path, dtype=np.float32) -> dict:
    """What the store must hold, from numpy's in-memory loader (as ogb reads this layout)."""
    z = np.load(d / "raw" / "data.npz")
    ei, n = z["edge_index"], int(z["num_nodes_list"][0])
    y = np.load(d / "raw" / "node-label.npz")["node_label"][:, 0]
    indptr, indices = ref_csr(ei[0], ei[1], n)
    split = {ours: np.sort(np.loadtxt(d / "split" / "time" / f"{theirs}.csv.gz", np.int64))
             for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test"))}
    return {"n": n, "indptr": indptr, "indices": indices, "x": z["node_feat"].astype(dtype),
            "y": np.where(np.isnan(y), -1, y).astype(np.int64), "splits": [split]}


@pytest.mark.parametrize("compressed", [True, False], ids=["deflated", "stored"])
def test_ogb_raw_layout_equals_reference(tmp_path, run_cli, monkeypatch, compressed):
    d = make_fake_papers(tmp_path / "ogb", compressed=compressed)
    kinds = {i.compress_type for i in zipfile.ZipFile(d / "raw" / "data.npz").infolist()}
    assert kinds == {zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED}

    def no_loader():
        raise AssertionError("ogb's in-memory loader must not be used for data.npz")
    monkeypatch.setattr(datasets, "_ogb_dataset_module", no_loader)
    for dtype in ("float16", "float32"):
        out = tmp_path / f"g-{dtype}"
        rc, _, err = run_cli("preprocess", "--ogb", NAME, "--ogb-root", tmp_path / "ogb",
                             "--out", out, "--feature-dtype", dtype, "--memory-limit", "1MB")
        assert rc == 0, err
        check_store(out, reference(d, np.dtype(dtype)), readers=(read_zarr,))
        g = st.GraphStore(out)
        assert g.meta["label_kind"] == "class" and g.meta["feature_dtype"] == dtype
        assert g.meta["num_classes"] == int(reference(d)["y"].max()) + 1
    assert not (d / "processed").exists()              # nothing written into the ogb root
    ds = datasets.open_ogb(NAME, tmp_path / "ogb", chunk=100)
    assert (ds.edges.raw_parts is None) == compressed  # parts only where reads can seek


def test_ogb_raw_undirected(tmp_path, run_cli):
    d = make_fake_papers(tmp_path / "ogb", compressed=True, n=300, e=2000, seed=4)
    out = tmp_path / "g"
    rc, _, err = run_cli("preprocess", "--ogb", NAME, "--ogb-root", tmp_path / "ogb",
                         "--out", out, "--undirected")
    assert rc == 0, err
    ei = np.load(d / "raw" / "data.npz")["edge_index"]
    ref = {**reference(d), **dict(zip(("indptr", "indices"),
                                      ref_csr(ei[0], ei[1], 300, undirected=True)))}
    check_store(out, ref, readers=(read_zarr,))


@pytest.mark.parametrize("compressed", [True, False], ids=["deflated", "stored"])
def test_member_reader_holds_one_block(tmp_path, compressed):
    """A member 16x the block, read from deep inside (a compressed one inflates its way
    there): every block has `block` items, together they are the items asked for, and no
    more than two blocks (this loop holds the previous one while the next is read) plus
    zipfile's 256 KB pieces are ever allocated."""
    a = np.random.default_rng(1).integers(0, 1000, (2, 1 << 20))         # 16 MB
    p = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(p, edge_index=a)
    arr = ZipNpyArray(p, "edge_index.npy")
    assert arr.random_access is not compressed and arr.shape == (2, 1 << 20)
    block = 1 << 17                                                        # 1 MB of int64
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sizes, total, first, last = [], 0, None, None
        for b in arr.iter_items(1 << 19, 1 << 20, block):     # src tail + dst head
            sizes.append(len(b))
            total += int(b.sum())
            first = b[:3].copy() if first is None else first
            last = b[-3:].copy()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    flat = a.reshape(-1)
    assert sizes == [block] * 8 and total == int(flat[1 << 19:3 << 19].sum())
    assert np.array_equal(first, flat[1 << 19:(1 << 19) + 3])
    assert np.array_equal(last, flat[(3 << 19) - 3:3 << 19])
    assert peak < 2 * block * 8 + (2 << 20), peak      # two blocks live in this loop; << 16 MB
    rows = list(ZipNpyArray(p, "edge_index.npy").iter_rows(1))
    assert [r.shape for r in rows] == [(1, 1 << 20)] * 2 and np.array_equal(np.concatenate(rows), a)


def test_stored_member_maps_and_corrupt_member_is_one_line(tmp_path):
    a = np.arange(1000, dtype=np.int64)
    np.savez(tmp_path / "s.npz", x=a)
    assert np.array_equal(ZipNpyArray(tmp_path / "s.npz", "x.npy").mapped_items(10, 5),
                          a[10:15])
    np.savez_compressed(tmp_path / "c.npz", x=np.zeros(1 << 16))
    raw = bytearray((tmp_path / "c.npz").read_bytes())
    raw[200:240] = b"\xff" * 40                                # inside the deflate stream
    (tmp_path / "c.npz").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"c\.npz:x"):
        ZipNpyArray(tmp_path / "c.npz", "x.npy").read_all()


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "raw" / "node-label.npz").unlink(), "node-label.npz is missing"),
    (lambda d: (d / "split" / "time" / "valid.csv.gz").unlink(), "valid.csv.gz is missing"),
    (lambda d: (d / "RELEASE_v1.txt").unlink(), "RELEASE_v1.txt is missing"),
    (lambda d: np.savez(d / "raw" / "data.npz", edge_index=np.zeros((2, 3), np.int64),
                        num_nodes_list=np.array([3])), "no 'num_edges_list' array"),
    (lambda d: np.savez(d / "raw" / "data.npz", edge_index=np.zeros((2, 3), np.int64),
                        num_nodes_list=np.array([3]), num_edges_list=np.array([4])),
     "num_edges_list says 4 edges"),
    (lambda d: _gz_ids(d / "split" / "time" / "test.csv.gz", np.array([10 ** 6])),
     "node id 1000000 is out of range"),
    (lambda d: (d / "split" / "time" / "train.csv.gz").write_bytes(
        gzip.compress(b"1\nnot-an-id\n")), "train.csv.gz: not a list of node ids"),
])
def test_broken_root_is_one_line(tmp_path, run_cli, breakage, message):
    d = make_fake_papers(tmp_path / "ogb", compressed=True, n=50, e=200)
    breakage(d)
    rc, _, err = run_cli("preprocess", "--ogb", NAME, "--ogb-root", tmp_path / "ogb",
                         "--out", tmp_path / "g")
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "g").exists()
