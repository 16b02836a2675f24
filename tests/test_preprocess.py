"""preprocess: every input format gives exactly the arrays an in-memory numpy/scipy reference
builds, read back with zarr-python and dask (not only GraphStore); bad input exits 2 with one
line; killed runs leave nothing a validator accepts."""
from __future__ import annotations

import gzip
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from conftest import cli_popen, cli_run
from lrgi_ooc.store import layout as st
from lrgi_ooc.store.publish import staging_path

SMALL = ["cora", "chameleon", "amazon_photo"]


# --------------------------------------------------------------------------- references
def ref_csr(src, dst, n, undirected=False, loops=False, dups=False):
    """Row i = ascending sources of edges into i (scipy CSR of the transposed adjacency)."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    if undirected:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    if not loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    if dups:
        order = np.lexsort((src, dst))
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
        return indptr, src[order]
    a = sp.csr_matrix((np.ones(len(src)), (dst, src)), shape=(n, n))
    a.sum_duplicates()
    a.sort_indices()
    return a.indptr.astype(np.int64), a.indices.astype(np.int64)


def ref_npz(path: Path) -> dict:
    d = np.load(path)
    if "x" in d:
        x = d["x"].astype(np.float32)
    else:
        x = sp.csr_matrix((d["x_data"], d["x_indices"], d["x_indptr"]),
                          shape=tuple(d["x_shape"])).toarray().astype(np.float32)
    n = x.shape[0]
    indptr, indices = ref_csr(d["edge_index"][0], d["edge_index"][1], n)
    splits = []
    if "train_mask" in d:
        m = {p: d[f"{p}_mask"] for p in st.SPLIT_PARTS}
        for k in range(1 if m["train"].ndim == 1 else m["train"].shape[0]):
            splits.append({p: np.flatnonzero(v if v.ndim == 1 else v[k]) for p, v in m.items()})
    return {"n": n, "indptr": indptr, "indices": indices, "x": x, "y": d["y"].astype(np.int64),
            "splits": splits, "edge_index": d["edge_index"]}


def read_zarr(path: Path, key: str) -> np.ndarray:
    import zarr
    return zarr.open_group(str(path), mode="r")[key][...]


def read_dask(path: Path, key: str) -> np.ndarray:
    import dask.array as da
    return da.from_zarr(str(path), component=key).compute(scheduler="synchronous")


def check_store(path: Path, ref: dict, *, features=True, readers=(read_zarr, read_dask)) -> None:
    for read in readers:
        assert np.array_equal(read(path, st.INDPTR), ref["indptr"])
        assert np.array_equal(read(path, st.INDICES), ref["indices"])
        if features:
            assert np.array_equal(read(path, st.FEATURES), ref["x"])
        if ref.get("y") is not None:
            assert np.array_equal(read(path, st.LABELS), ref["y"])
        splits = ref.get("splits", [])
        for k, s in enumerate(splits):
            for p in st.SPLIT_PARTS:
                key = st.split_key(p, k if len(splits) > 1 else None)
                got = read(path, key)
                assert got.dtype == np.int64 and np.array_equal(got, s[p]), key
    g = st.GraphStore(path)
    assert g.num_nodes == ref["n"] and g.num_edges == len(ref["indices"])
    assert g.stage_complete("preprocess")
    assert len(g.splits()) == len(ref.get("splits", []))


# --------------------------------------------------------------------------- --npz
@pytest.mark.parametrize("name", SMALL)
def test_npz_exact(name, shared_datasets, tmp_path, run_cli):
    ref = ref_npz(shared_datasets / f"{name}.npz")
    out = tmp_path / "g"
    rc, stdout, err = run_cli("preprocess", "--npz", shared_datasets / f"{name}.npz", "--out", out)
    assert rc == 0, err
    check_store(out, ref)
    meta = st.GraphStore(out).meta
    assert meta["num_features"] == ref["x"].shape[1] and meta["feature_dtype"] == "float32"
    assert meta["num_splits"] == len(ref["splits"]) and meta["label_kind"] == "class"
    assert meta["num_classes"] == int(ref["y"].max()) + 1
    assert meta["provenance"]["inputs"][0]["bytes"] == (shared_datasets / f"{name}.npz").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]     # no staging / work left


def test_npz_coauthor_cs_sparse_features(shared_datasets, tmp_path, run_cli):
    ref = ref_npz(shared_datasets / "coauthor_cs.npz")
    out = tmp_path / "cs"
    rc, _, err = run_cli("preprocess", "--npz", shared_datasets / "coauthor_cs.npz", "--out", out,
                         "--memory-limit", "256MB")
    assert rc == 0, err
    check_store(out, ref, features=False)
    g = st.GraphStore(out)
    for s, blk in g.iter_blocks(st.FEATURES):           # 499 MB: compare block by block
        assert np.array_equal(blk, ref["x"][s:s + len(blk)])
    assert np.array_equal(read_dask(out, st.FEATURES)[::97], ref["x"][::97])


def test_npz_tolokers_ten_splits(shared_datasets, tmp_path, run_cli):
    ref = ref_npz(shared_datasets / "tolokers.npz")
    assert len(ref["splits"]) == 10
    out = tmp_path / "t"
    rc, _, err = run_cli("preprocess", "--npz", shared_datasets / "tolokers.npz", "--out", out)
    assert rc == 0, err
    check_store(out, ref, readers=(read_zarr,))
    assert np.array_equal(read_dask(out, st.split_key("val", 9)), ref["splits"][9]["val"])


# --------------------------------------------------------------------------- --edges + tables
@pytest.fixture(scope="module")
def cora(shared_datasets, tmp_path_factory) -> tuple[dict, Path]:
    """cora split into separate files of every supported format."""
    ref = ref_npz(shared_datasets / "cora.npz")
    d = tmp_path_factory.mktemp("cora_inputs")
    ei = ref["edge_index"]
    table = pa.table({"src": ei[0], "dst": ei[1]})
    pq.write_table(table, d / "edges.parquet", row_group_size=3000)
    (d / "parts").mkdir()
    for i, s in enumerate(range(0, ei.shape[1], 4000)):
        pq.write_table(table.slice(s, 4000), d / "parts" / f"part-{i:03d}.parquet")
    (d / "parts" / "_SUCCESS").write_text("")
    pq.write_table(pa.table({"a": ei[0], "b": ei[1]}), d / "named.parquet")
    with open(d / "edges.csv", "w") as f:
        f.write("src,dst\n")
        np.savetxt(f, ei.T, fmt="%d", delimiter=",")
    with open(d / "edges.csv", "rb") as f, gzip.open(d / "edges.csv.gz", "wb") as g:
        g.write(f.read())
    np.save(d / "edges_2e.npy", ei)
    np.save(d / "edges_e2.npy", np.ascontiguousarray(ei.T))
    np.save(d / "edges_fortran.npy", np.asfortranarray(ei))
    np.save(d / "x.npy", ref["x"])
    sp.save_npz(d / "x_sparse.npz", sp.csr_matrix(ref["x"]))
    pq.write_table(pa.table({f"f{j}": ref["x"][:, j] for j in range(ref["x"].shape[1])}),
                   d / "x.parquet")
    np.save(d / "y.npy", ref["y"])
    pq.write_table(pa.table({"label": ref["y"]}), d / "y.parquet")
    for p in st.SPLIT_PARTS:
        np.save(d / f"{p}_ids.npy", np.random.default_rng(0).permutation(ref["splits"][0][p]))
        mask = np.zeros(ref["n"], bool)
        mask[ref["splits"][0][p]] = True
        np.save(d / f"{p}_mask.npy", mask)
    return ref, d


@pytest.mark.parametrize("edges", ["edges.parquet", "parts", "edges.csv", "edges.csv.gz",
                                   "edges_2e.npy", "edges_e2.npy", "edges_fortran.npy"])
def test_edges_formats_exact(edges, cora, tmp_path, run_cli):
    ref, d = cora
    out = tmp_path / "g"
    rc, _, err = run_cli("preprocess", "--edges", d / edges, "--features", d / "x.npy",
                         "--labels", d / "y.npy", *[a for p in st.SPLIT_PARTS
                                                    for a in (f"--{p}", d / f"{p}_ids.npy")],
                         "--out", out)
    assert rc == 0, err
    check_store(out, ref)


@pytest.mark.parametrize("features,labels,split", [("x_sparse.npz", "y.parquet", "mask"),
                                                   ("x.parquet", "y.npy", "ids")])
def test_table_formats_exact(features, labels, split, cora, tmp_path, run_cli):
    ref, d = cora
    out = tmp_path / "g"
    rc, _, err = run_cli("preprocess", "--edges", d / "named.parquet", "--src-col", "a",
                         "--dst-col", "b", "--features", d / features, "--labels", d / labels,
                         *[a for p in st.SPLIT_PARTS for a in (f"--{p}", d / f"{p}_{split}.npy")],
                         "--out", out, "--memory-limit", "64MB")
    assert rc == 0, err
    check_store(out, ref, readers=(read_zarr,))


def test_options_and_multisplit(tmp_path, run_cli):
    """--undirected / --keep-self-loops / --keep-duplicates / float16 / [S, N] masks / multi-label
    on a small graph with loops, duplicates and an isolated last node."""
    rng = np.random.default_rng(1)
    n, e = 500, 4000
    src, dst = rng.integers(0, n - 1, e), rng.integers(0, n - 1, e)
    src[:50], dst[:50] = np.arange(50), np.arange(50)           # self loops
    src[50:100], dst[50:100] = src[100:150], dst[100:150]       # duplicates
    np.save(tmp_path / "e.npy", np.stack([src, dst]))
    x = rng.normal(size=(n, 7)).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    y = (rng.random((n, 4)) < 0.3).astype(np.int64)
    np.save(tmp_path / "y.npy", y)
    masks = {p: rng.random((3, n)) < q for p, q in zip(st.SPLIT_PARTS, (0.5, 0.2, 0.3))}
    for p, m in masks.items():
        np.save(tmp_path / f"{p}.npy", m)
    common = ["--edges", tmp_path / "e.npy", "--features", tmp_path / "x.npy",
              "--labels", tmp_path / "y.npy",
              *[a for p in st.SPLIT_PARTS for a in (f"--{p}", tmp_path / f"{p}.npy")]]
    for flags, kw in [((), {}), (("--undirected",), {"undirected": True}),
                      (("--keep-self-loops", "--keep-duplicates"), {"loops": True, "dups": True})]:
        out = tmp_path / ("g" + "".join(flags))
        rc, _, err = run_cli("preprocess", *common, *flags, "--feature-dtype", "float16",
                             "--out", out)
        assert rc == 0, err
        indptr, indices = ref_csr(src, dst, n, **kw)
        ref = {"n": n, "indptr": indptr, "indices": indices, "x": x.astype(np.float16),
               "splits": [{p: np.flatnonzero(m[k]) for p, m in masks.items()} for k in range(3)]}
        check_store(out, ref, readers=(read_zarr,))
        assert np.array_equal(read_zarr(out, st.LABELS), y.astype(np.uint8))
        meta = st.GraphStore(out).meta
        assert meta["label_kind"] == "multilabel" and meta["num_splits"] == 3
        assert meta["symmetrized"] == ("undirected" in kw)
        if not kw.get("loops"):
            loops = int((src == dst).sum())       # counted in the input, before mirroring
            assert loops >= 50 and meta["self_loops_removed"] == loops


def test_num_nodes_default_is_max_id_plus_one(tmp_path, run_cli):
    np.save(tmp_path / "e.npy", np.array([[0, 5, 2], [1, 1, 5]]))
    rc, _, err = run_cli("preprocess", "--edges", tmp_path / "e.npy", "--out", tmp_path / "g")
    assert rc == 0 and "has no node features" in err
    g = st.GraphStore(tmp_path / "g")
    assert g.num_nodes == 6 and not g.has(st.FEATURES)
    assert np.array_equal(g.indptr(), [0, 0, 2, 2, 2, 2, 3])
    assert np.array_equal(g.indices(), [0, 5, 2])


# --------------------------------------------------------------------------- --ogb
def _gz_csv(path: Path, rows: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt=fmt, delimiter=",")


def make_fake_arxiv(root: Path, n=300, e=2000, f=8, seed=0) -> dict:
    """A tiny ogbn-arxiv in ogb's raw layout (what its loader reads without downloading)."""
    rng = np.random.default_rng(seed)
    d = root / "ogbn_arxiv"
    ei = rng.integers(0, n, (2, e))
    x = rng.normal(size=(n, f)).astype(np.float32)
    y = rng.integers(0, 40, n)
    _gz_csv(d / "raw" / "edge.csv.gz", ei.T, "%d")
    _gz_csv(d / "raw" / "num-node-list.csv.gz", np.array([[n]]), "%d")
    _gz_csv(d / "raw" / "num-edge-list.csv.gz", np.array([[e]]), "%d")
    _gz_csv(d / "raw" / "node-feat.csv.gz", x, "%.9g")
    _gz_csv(d / "raw" / "node-label.csv.gz", y[:, None], "%d")
    _gz_csv(d / "raw" / "node_year.csv.gz", rng.integers(2000, 2020, (n, 1)), "%d")
    perm = rng.permutation(n)
    parts = {"train": perm[:150], "valid": perm[150:225], "test": perm[225:]}
    for p, ids in parts.items():
        _gz_csv(d / "split" / "time" / f"{p}.csv.gz", ids[:, None], "%d")
    (d / "RELEASE_v1.txt").write_text("fake\n")
    indptr, indices = ref_csr(ei[0], ei[1], n)
    return {"n": n, "indptr": indptr, "indices": indices, "x": x, "y": y,
            "splits": [{"train": np.sort(parts["train"]), "val": np.sort(parts["valid"]),
                        "test": np.sort(parts["test"])}]}


def test_ogb_fake_root(tmp_path, run_cli):
    ref = make_fake_arxiv(tmp_path / "ogb")
    for run in range(2):            # second run goes through ogb's processed cache
        out = tmp_path / f"g{run}"
        rc, _, err = run_cli("preprocess", "--ogb", "ogbn-arxiv", "--ogb-root", tmp_path / "ogb",
                             "--out", out)
        assert rc == 0, err
        check_store(out, ref, readers=(read_zarr,))
    rc, _, err = run_cli("preprocess", "--ogb", "ogbn-nope", "--ogb-root", tmp_path / "ogb",
                         "--out", tmp_path / "x")
    assert rc == 2 and "unknown dataset 'ogbn-nope'" in err
    rc, _, err = run_cli("preprocess", "--ogb", "ogbn-products", "--ogb-root", tmp_path / "ogb",
                         "--out", tmp_path / "x")
    assert rc == 2 and "downloads are not attempted" in err
    (tmp_path / "ogb" / "ogbn_arxiv" / "RELEASE_v1.txt").unlink()
    rc, _, err = run_cli("preprocess", "--ogb", "ogbn-arxiv", "--ogb-root", tmp_path / "ogb",
                         "--out", tmp_path / "x")
    assert rc == 2 and "RELEASE_v1.txt" in err and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- safety
@pytest.fixture
def tiny(tmp_path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "e.npy", np.array([[0, 1, 2, 3], [1, 2, 3, 0]]))
    np.save(d / "x.npy", np.ones((4, 3), np.float32))
    np.save(d / "y.npy", np.arange(4))
    np.save(d / "ids.npy", np.array([0, 1]))
    (d / "text.npy").write_text("this is not numpy\n")
    (d / "bad.parquet").write_bytes(b"PAR1 garbage " * 10)
    pq.write_table(pa.table({"src": [0, 1], "dst": [1, 2]}), d / "e.parquet")
    pq.write_table(pa.table({"src": [0.5, 1.0], "dst": [1.0, 2.0]}), d / "float.parquet")
    pq.write_table(pa.table({"from": [0, 1], "to": [1, 2]}), d / "named.parquet")
    (d / "e.csv").write_text("from,to\n0,1\n1,2\n")
    (d / "x.csv").write_text("src,dst\n0,1\n1,abc\n")
    np.save(d / "neg.npy", np.array([[0, -1], [1, 2]]))
    np.save(d / "big.npy", np.array([[0, 9], [1, 2]]))
    np.save(d / "empty.npy", np.zeros((2, 0), np.int64))
    np.save(d / "x5.npy", np.ones((5, 3), np.float32))
    np.save(d / "y5.npy", np.arange(5))
    np.save(d / "ids_oob.npy", np.array([0, 7]))
    np.save(d / "mask5.npy", np.ones(5, bool))
    np.save(d / "xnan.npy", np.array([[0, 1, 2], [3, np.nan, 5], [0, 0, 0], [1, 1, 1]]))
    np.save(d / "xinf.npy", np.array([[0, 1, 2], [3, 4, 5], [np.inf, 0, 0], [1, 1, 1]]))
    np.save(d / "xbig.npy", np.array([[0, 1, 2], [3, 4, 5], [1e6, 0, 0], [1, 1, 1]]))
    np.save(d / "efloat.npy", np.array([[0.0, 1.0], [1.0, 2.0]]))
    (tmp_path / "exists").mkdir()
    return d


def _splits(d: Path, f: str) -> list:
    return [a for p in st.SPLIT_PARTS for a in (f"--{p}", d / f)]


CASES = {
    "missing file": (lambda d: ["--edges", d / "nope.npy"], "no such file"),
    "text in npy": (lambda d: ["--edges", d / "text.npy"], "not a readable .npy"),
    "corrupt parquet": (lambda d: ["--edges", d / "bad.parquet"], "not a readable Parquet"),
    "missing column": (lambda d: ["--edges", d / "named.parquet"], "no column 'src'"),
    "misnamed column": (lambda d: ["--edges", d / "e.parquet", "--dst-col", "to"],
                        "no column 'to'"),
    "csv columns": (lambda d: ["--edges", d / "e.csv"], "header row with columns 'src'"),
    "csv non-integer": (lambda d: ["--edges", d / "x.csv", "--ids", "dense"], "abc"),
    "float ids parquet": (lambda d: ["--edges", d / "float.parquet"], "must be integers"),
    "float ids npy": (lambda d: ["--edges", d / "efloat.npy"], "must be integers"),
    "negative id": (lambda d: ["--edges", d / "neg.npy", "--ids", "dense"],
                    "node id -1 is negative"),
    "id out of range": (lambda d: ["--edges", d / "big.npy", "--num-nodes", "5"],
                        "node id 9 is out of range [0, 5)"),
    "id beyond features": (lambda d: ["--edges", d / "big.npy", "--features", d / "x.npy"],
                           "out of range [0, 4)"),
    "features vs N": (lambda d: ["--edges", d / "e.npy", "--features", d / "x5.npy",
                                 "--num-nodes", "4"], "has 5 rows but N = 4"),
    "labels vs features": (lambda d: ["--edges", d / "e.npy", "--features", d / "x.npy",
                                      "--labels", d / "y5.npy"], "has 5 rows but N = 4"),
    "mask vs N": (lambda d: ["--edges", d / "e.npy", "--features", d / "x.npy",
                             *_splits(d, "mask5.npy")], "has 5 rows but N = 4"),
    "split id out of range": (lambda d: ["--edges", d / "e.npy", "--features", d / "x.npy",
                                         *_splits(d, "ids_oob.npy")], "node id 7 is out of range"),
    "split incomplete": (lambda d: ["--edges", d / "e.npy", "--train", d / "ids.npy"],
                         "give train, val and test together"),
    "nan feature": (lambda d: ["--edges", d / "e.npy", "--features", d / "xnan.npy"],
                    "row 1, column 1 is not finite"),
    "inf feature": (lambda d: ["--edges", d / "e.npy", "--features", d / "xinf.npy"],
                    "row 2, column 0 is not finite"),
    "float16 overflow": (lambda d: ["--edges", d / "e.npy", "--features", d / "xbig.npy",
                                    "--feature-dtype", "float16"], "overflows float16"),
    "empty edges": (lambda d: ["--edges", d / "empty.npy"], "edge list is empty"),
    "output exists": (lambda d: ["--edges", d / "e.npy", "--out", d.parent / "exists"],
                      "output exists"),
    "feature dtype": (lambda d: ["--edges", d / "e.npy", "--feature-dtype", "int8"],
                      "--feature-dtype: must be float32 or float16"),
    "memory limit": (lambda d: ["--edges", d / "e.npy", "--memory-limit", "abc"],
                     "--memory-limit: cannot read 'abc'"),
    "num nodes": (lambda d: ["--edges", d / "e.npy", "--num-nodes", "-1"],
                  "--num-nodes: must be positive"),
    "num nodes text": (lambda d: ["--edges", d / "e.npy", "--num-nodes", "ten"],
                       "--num-nodes: not an integer"),
    "no source": (lambda d: [], "exactly one of --npz, --edges, --ogb"),
    "two sources": (lambda d: ["--edges", d / "e.npy", "--npz", d / "e.npy"], "exactly one"),
    "npz not zip": (lambda d: ["--npz", d / "text.npy"], "not a readable .npz"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(case, tiny, run_cli):
    build, expected = CASES[case]
    args = [str(a) for a in build(tiny)]
    if "--out" not in args:
        args += ["--out", str(tiny.parent / "out")]
    before = sorted(p.name for p in tiny.parent.iterdir())
    rc, out, err = run_cli("preprocess", *args)
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert sorted(p.name for p in tiny.parent.iterdir()) == before     # nothing left behind


def test_bad_input_in_subprocess_and_no_torch(tiny, tmp_path):
    r = cli_run(["preprocess", "--edges", tiny / "neg.npy", "--ids", "dense",
                 "--out", tmp_path / "o"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"lrgi-ooc preprocess: error: {tiny / 'neg.npy'}: node id -1 is negative"
        " (--ids remap takes ids that are not 0..N-1)"]
    code = ("import sys; from lrgi_ooc.cli.main import main\n"
            f"assert main(['preprocess', '--edges', {str(tiny / 'e.npy')!r}, '--features', "
            f"{str(tiny / 'x.npy')!r}, '--out', {str(tmp_path / 'g')!r}]) == 0\n"
            f"assert main(['info', {str(tmp_path / 'g')!r}]) == 0\n"
            f"assert main(['validate', {str(tmp_path / 'g')!r}]) == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    from conftest import REPO, cli_env
    import subprocess
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_dask_client_side_of_preprocess_does_not_import_numba():
    # the client only plans the CSR build (histogram, ranges); the kernels run on workers
    code = ("import sys, lrgi_ooc.cli.main, lrgi_ooc.stages.preprocess, lrgi_ooc.csr.tasks, lrgi_ooc.csr.build\n"
            "from lrgi_ooc.csr.build import _Build\n"
            "import tempfile, numpy as np\n"
            "b = _Build(None, 1000, 's', True, True, True, 1 << 20, tempfile.mkdtemp())\n"
            "b.threads = 1; b.m = 10 ** 6; b.hist[:16] = 10 ** 5\n"
            "assert len(b.plan(8)) > 2\n"
            "assert 'numba' not in sys.modules, 'numba was imported'\n")
    from conftest import REPO, cli_env
    import subprocess
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- SIGKILL
def _big_inputs(d: Path) -> list:
    rng = np.random.default_rng(3)
    n, e = 500_000, 3_000_000
    np.save(d / "big_e.npy", rng.integers(0, n, (2, e)))
    np.save(d / "big_x.npy", rng.random((n, 8), dtype=np.float32))
    return ["--edges", d / "big_e.npy", "--features", d / "big_x.npy"]


def _kill_mid_run(args: list, out: Path) -> None:
    """Start preprocess, wait until it is building in its staging directory, kill -9 it."""
    p = cli_popen(["preprocess", *args, "--out", out])
    staging = out.parent / (staging_path(out).name.rsplit("-", 1)[0] + f"-{p.pid}")
    deadline = time.monotonic() + 120
    while not staging.exists():
        assert p.poll() is None, p.communicate()
        if time.monotonic() > deadline:
            pytest.fail("no staging directory appeared: preprocess seems stuck")
        time.sleep(0.005)
    time.sleep(0.3)
    assert p.poll() is None, "finished before it could be killed: make the input larger"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert staging.exists()          # killed mid-run, leftovers are there for clean_stale


def test_sigkill_leaves_nothing_valid(tmp_path, tiny):
    from lrgi_ooc.cli.main import main
    big = _big_inputs(tmp_path)
    out = tmp_path / "store"
    _kill_mid_run(big, out)
    assert not out.exists()
    assert main(["validate", str(out)]) == 2
    # --overwrite over an existing store: killed -> the old store is intact
    assert main(["preprocess", "--edges", str(tiny / "e.npy"), "--out", str(out)]) == 0
    _kill_mid_run([*big, "--overwrite"], out)
    assert main(["validate", str(out)]) == 0
    assert st.GraphStore(out).num_nodes == 4
    # a rerun cleans the leftovers and succeeds
    r = cli_run(["preprocess", *big, "--out", out, "--overwrite"])
    assert r.returncode == 0, r.stderr
    assert st.GraphStore(out).num_nodes == 500_000
    assert main(["validate", str(out)]) == 0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".store.")]
    assert leftovers == []
