"""Arbitrary node ids (issue 16): sparse int64 and string ids remapped out-of-core, node tables
joined by id, the dictionary in the store, and results written back under the user's ids."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

import lrgi_ooc
from conftest import cli_env
from lrgi_ooc.cli.main import main
from lrgi_ooc.store import idcols, ids
from lrgi_ooc.store.layout import FEATURES, LABELS, GraphStore

PYARROW_MB = 40
WRAPPER = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "sys.exit(p.returncode)")


def _int_ids(rng, k: int) -> np.ndarray:
    pool = rng.integers(-2**63, 2**63 - 1, size=k, dtype=np.int64)
    pool[:4] = [-2**63, 2**63 - 1, -1, 0]                      # the extremes and around zero
    return np.unique(pool)


def _str_ids(k: int) -> list[str]:
    return [f"user/{i * 7919 % 100003:06d}/{'é' * (i % 3)}{'x' * (i % 11)}" for i in range(k)]


def _graph(tmp: Path, kind: str, n_ids: int = 3000, n_edges: int = 20000, seed: int = 0):
    """Edges, features, labels and a split keyed by id (subsets, shuffled)."""
    rng = np.random.default_rng(seed)
    pool = _int_ids(rng, n_ids) if kind == "int64" else np.array(_str_ids(n_ids), dtype=object)
    s, d = rng.integers(0, len(pool), n_edges), rng.integers(0, len(pool), n_edges)
    d[:50] = s[:50]                                            # self loops
    s[-100:], d[-100:] = s[:100], d[:100]                      # duplicates
    src, dst = pool[s], pool[d]
    tmp.mkdir(parents=True, exist_ok=True)
    tab = pa.table({"src": pa.array(src), "dst": pa.array(dst)})
    pq.write_table(tab, tmp / "edges.parquet", row_group_size=3000)
    used = np.unique(np.concatenate([s, d]))
    feat_nodes = rng.permutation(used)[: int(len(used) * 0.8)]
    x = rng.standard_normal((len(feat_nodes), 4)).astype(np.float32)
    pq.write_table(pa.table({"id": pa.array(pool[feat_nodes]),
                             **{f"f{j}": x[:, j] for j in range(4)}}), tmp / "x.parquet")
    y_nodes = rng.permutation(used)[: len(used) // 2]
    y = rng.integers(0, 3, len(y_nodes))
    pcsv.write_csv(pa.table({"id": pa.array(pool[y_nodes]), "y": y}), tmp / "y.csv")
    perm = rng.permutation(used)
    split = {"train": perm[:100], "val": perm[100:150], "test": perm[150:250]}
    for part, nodes in split.items():
        pq.write_table(pa.table({"id": pa.array(pool[nodes])}), tmp / f"{part}.parquet")
    files = {"edges": tmp / "edges.parquet", "features": tmp / "x.parquet",
             "labels": tmp / "y.csv", **{p: tmp / f"{p}.parquet" for p in split}}
    ref = {"src": src, "dst": dst, "feat": dict(zip(pool[feat_nodes].tolist(), x)),
           "labels": dict(zip(pool[y_nodes].tolist(), y.tolist())),
           "split": {p: set(pool[v].tolist()) for p, v in split.items()}}
    return files, ref


def _reference_csr(src, dst, order: dict, undirected: bool):
    """Dense ids from a Python dict over the sorted distinct ids; CSR rows = in-neighbours."""
    a = np.array([order[v] for v in src.tolist()], np.int64)
    b = np.array([order[v] for v in dst.tolist()], np.int64)
    if undirected:
        a, b = np.concatenate([a, b]), np.concatenate([b, a])
    keep = a != b
    pairs = np.unique(np.stack([b[keep], a[keep]], axis=1), axis=0)    # (target, source)
    n = len(order)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=n), out=indptr[1:])
    return indptr, pairs[:, 1]


def _check_store(out: Path, ref: dict, kind: str, undirected: bool = True) -> None:
    g = GraphStore(out)
    everything = np.concatenate([ref["src"], ref["dst"]])
    ordered = sorted(set(everything.tolist()), key=(lambda v: v.encode()) if kind == "string"
                     else None)
    order = {v: i for i, v in enumerate(ordered)}
    assert g.num_nodes == len(order) and g.meta["id_kind"] == kind
    got_ids = ids.external(g, 0, g.num_nodes)
    got_list = [idcols.display(got_ids, i) for i in range(g.num_nodes)] if kind == "string" \
        else got_ids.tolist()
    assert got_list == ordered
    indptr, indices = _reference_csr(ref["src"], ref["dst"], order, undirected)
    np.testing.assert_array_equal(np.asarray(g.indptr()), indptr)
    np.testing.assert_array_equal(np.asarray(g.indices()), indices)
    feats = np.zeros((g.num_nodes, 4), np.float32)
    for v, row in ref["feat"].items():
        feats[order[v]] = row
    np.testing.assert_array_equal(np.asarray(g.mmap(FEATURES)), feats)
    labels = np.full(g.num_nodes, -1, np.int64)
    for v, c in ref["labels"].items():
        labels[order[v]] = c
    np.testing.assert_array_equal(g.read_rows(LABELS, 0, g.num_nodes), labels)
    sp = g.splits()[0]
    for part, members in ref["split"].items():
        assert sp[part].tolist() == sorted(order[v] for v in members)
    assert g.meta["features_missing"] == g.num_nodes - len(ref["feat"])


def _preprocess(files: dict, out: Path, *extra: str) -> int:
    args = ["preprocess", "--out", str(out), "--undirected", "--memory-limit", "1MB"]
    for k, v in files.items():
        args += [f"--{k}", str(v)]
    return main([*args, *extra])


@pytest.fixture(params=["partitioned", "in-memory"])
def path(request, monkeypatch):
    """Both remap paths: bucket files, and the dictionary held in memory when it fits."""
    from lrgi_ooc.ingest import remap
    monkeypatch.setattr(remap, "IN_MEMORY", request.param == "in-memory")
    return request.param


@pytest.mark.parametrize("kind", ["int64", "string"])
def test_remapped_store_equals_an_in_memory_reference(kind, path, tmp_path):
    files, ref = _graph(tmp_path / "in", kind)
    assert _preprocess(files, tmp_path / "g.zarr") == 0
    _check_store(tmp_path / "g.zarr", ref, kind)
    # reruns give the same bytes
    assert _preprocess(files, tmp_path / "again.zarr") == 0
    _same_arrays(tmp_path / "g.zarr", tmp_path / "again.zarr")


def test_passes_after_the_remap_leave_out_what_it_left_resident(tmp_path, monkeypatch):
    """The partitioned passes (after a dictionary that did not fit) and the CSR build get
    --memory-limit less the anonymous memory the passes before them left resident."""
    from lrgi_ooc.base import memory
    from lrgi_ooc.csr import build as csrbuild
    from lrgi_ooc.ingest import remap
    from lrgi_ooc.stages import remapped
    files, ref = _graph(tmp_path / "in", "int64")
    monkeypatch.setattr(remap, "IN_MEMORY", True)
    monkeypatch.setattr(remap.InMemory, "collect", lambda self, *a: False)   # did not fit
    grown = iter(range(0, 1 << 40, 100 << 10))              # +100 KB each time it is read
    monkeypatch.setattr(memory, "anon_rss_bytes", lambda: next(grown))
    limits = {}
    init = remap.Remap.__init__
    monkeypatch.setattr(remap.Remap, "__init__", lambda self, w, k, limit, *a, **kw:
                        limits.setdefault("remap", limit) and init(self, w, k, limit, *a, **kw))
    build = csrbuild.build_csr
    monkeypatch.setattr(csrbuild, "build_csr", lambda *a, memory_limit, **kw:
                        limits.setdefault("csr", memory_limit) and build(*a, memory_limit=
                                                                         memory_limit, **kw))
    assert _preprocess(files, tmp_path / "g.zarr") == 0         # --memory-limit 1MB
    assert limits["remap"] == (1 << 20) - (100 << 10)       # one read since the start
    assert limits["csr"] == (1 << 20) - (100 << 10) * 2
    monkeypatch.setattr(memory, "anon_rss_bytes", lambda: 1 << 30)
    assert remapped._left(1 << 20, 0) == 1 << 19            # never below half the limit
    _check_store(tmp_path / "g.zarr", ref, "int64")


def _same_arrays(a: Path, b: Path) -> None:
    """Every file but the root zarr.json (its provenance names the command and the time)."""
    fa = {str(p.relative_to(a)): p.read_bytes() for p in sorted(a.rglob("*"))
          if p.is_file() and p != a / "zarr.json"}
    fb = {str(p.relative_to(b)): p.read_bytes() for p in sorted(b.rglob("*"))
          if p.is_file() and p != b / "zarr.json"}
    assert fa.keys() == fb.keys() and len(fa) > 10
    assert [k for k in fa if fa[k] != fb[k]] == []


@pytest.mark.parametrize("kind", ["int64", "string"])
def test_remap_on_a_local_cluster_is_identical(kind, path, tmp_path):
    files, _ = _graph(tmp_path / "in", kind, n_edges=8000)
    assert _preprocess(files, tmp_path / "a.zarr") == 0
    assert _preprocess(files, tmp_path / "b.zarr", "--workers", "2") == 0
    _same_arrays(tmp_path / "a.zarr", tmp_path / "b.zarr")


def test_auto_keeps_dense_ids_and_remaps_sparse_or_negative_ones(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "dense.npy", np.array([[0, 1, 2, 3], [1, 2, 3, 0]]))
    np.save(d / "neg.npy", np.array([[-5, 1, 2], [1, 2, -5]]))
    np.save(d / "sparse.npy", np.array([[10**15, 7], [7, 10**12]]))
    assert main(["preprocess", "--edges", str(d / "dense.npy"), "--out", str(tmp_path / "a")]) == 0
    assert ids.id_kind(GraphStore(tmp_path / "a")) == "dense"
    for name in ("neg", "sparse"):
        assert main(["preprocess", "--edges", str(d / f"{name}.npy"),
                     "--out", str(tmp_path / name)]) == 0
        g = GraphStore(tmp_path / name)
        assert ids.id_kind(g) == "int64" and g.num_nodes == 3
    assert ids.external(GraphStore(tmp_path / "neg"), 0, 3).tolist() == [-5, 1, 2]
    assert main(["preprocess", "--edges", str(d / "dense.npy"), "--ids", "remap",
                 "--out", str(tmp_path / "r")]) == 0
    assert ids.id_kind(GraphStore(tmp_path / "r")) == "int64"
    capsys.readouterr()
    assert main(["preprocess", "--edges", str(d / "neg.npy"), "--ids", "dense",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "negative" in err and "--ids remap" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("kind", ["int64", "string"])
def test_export_and_info_carry_the_users_ids(kind, tmp_path, capsys):
    files, ref = _graph(tmp_path / "in", kind)
    out = tmp_path / "g.zarr"
    assert _preprocess(files, out) == 0
    g = GraphStore(out)
    want = ids.external(g, 0, g.num_nodes)
    want = want.to_arrow().cast(pa.large_string()).to_pylist() if kind == "string" \
        else want.tolist()
    lrgi_ooc.export(out, layer=0, out=tmp_path / "x.parquet")
    t = pq.read_table(tmp_path / "x.parquet")
    assert t.column_names == ["id", "embedding"] and t["id"].to_pylist() == want
    lrgi_ooc.export(out, layer=0, out=tmp_path / "y.csv", dense_ids=True)
    c = pcsv.read_csv(tmp_path / "y.csv")
    assert c.column_names[:2] == ["id", "node"]
    assert c["node"].to_pylist() == list(range(g.num_nodes))
    assert [str(v) for v in c["id"].to_pylist()] == [str(v) for v in want]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ids")][0]
    assert kind in line and str(want[0]) in line
    if kind == "int64":      # --nodes takes the user's ids on a remapped int64 store
        np.save(tmp_path / "pick.npy", np.array([want[5], want[2]], np.int64))
        lrgi_ooc.export(out, layer=0, out=tmp_path / "p.parquet", nodes=tmp_path / "pick.npy")
        assert pq.read_table(tmp_path / "p.parquet")["id"].to_pylist() == [want[5], want[2]]


def test_encode_on_a_remapped_target_keeps_its_ids(tmp_path):
    files, _ = _graph(tmp_path / "in", "string", n_ids=400, n_edges=3000)
    out = tmp_path / "g.zarr"
    assert _preprocess(files, out) == 0
    lrgi_ooc.layer(out, layer=1, dim=8, heads=2, steps=2, batch_size=64, fanout="3,2",
                   device="cpu")
    files2, _ = _graph(tmp_path / "in2", "string", n_ids=300, n_edges=2000, seed=3)
    other = tmp_path / "o.zarr"
    assert _preprocess(files2, other) == 0
    lrgi_ooc.encode(out, other)
    lrgi_ooc.export(other, layer=1, out=tmp_path / "o.parquet")
    t = pq.read_table(tmp_path / "o.parquet")
    g = GraphStore(other)
    assert t["id"].to_pylist() == ids.external(g, 0, g.num_nodes).to_arrow().cast(
        pa.large_string()).to_pylist()


def _bad_edges(tmp: Path, name: str) -> Path:
    if name == "null ids":
        t = pa.table({"src": pa.array(["a", None, "c"]), "dst": pa.array(["b", "c", "a"])})
    elif name == "empty ids":
        t = pa.table({"src": pa.array(["a", "", "c"]), "dst": pa.array(["b", "c", "a"])})
    elif name == "mixed types":
        t = pa.table({"src": pa.array([1, 2, 3]), "dst": pa.array(["b", "c", "a"])})
    else:
        t = pa.table({"from": pa.array(["a"]), "dst": pa.array(["b"])})
    p = tmp / f"{name.replace(' ', '_')}.parquet"
    pq.write_table(t, p)
    return p


@pytest.mark.parametrize("case,msg", [("null ids", "null"), ("empty ids", "empty node id"),
                                      ("mixed types", "mix id types"),
                                      ("missing column", "no column 'src'")])
def test_bad_edge_ids_are_one_line_errors(case, msg, tmp_path, capsys):
    p = _bad_edges(tmp_path, case)
    assert main(["preprocess", "--edges", str(p), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and str(p) in err and len(err.splitlines()) == 1, err
    assert sorted(x.name for x in tmp_path.iterdir()) == [p.name]


def test_an_empty_id_is_named_by_column_and_row_of_the_input(tmp_path, capsys):
    n = 5000
    dst = [f"n{i + 1}" for i in range(n)]
    dst[3210] = ""
    p = tmp_path / "e.parquet"
    pq.write_table(pa.table({"a": [f"n{i}" for i in range(n)], "b": dst}), p,
                   row_group_size=1000)
    assert main(["preprocess", "--edges", str(p), "--src-col", "a", "--dst-col", "b",
                 "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{p}: empty node id (column 'b', row 3211 of the edge list)" in err, err
    assert not (tmp_path / "g").exists()


def test_mixed_types_in_one_csv_column(tmp_path, capsys):
    p = tmp_path / "e.csv"
    rows = ["src,dst"] + [f"{i},{i + 1}" for i in range(300000)] + ["abc,5"]
    p.write_text("\n".join(rows) + "\n")
    assert main(["preprocess", "--edges", str(p), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert "id types" in err and "mix" in err and len(err.splitlines()) == 1, err


def test_node_table_errors_and_ignore_unknown_ids(tmp_path, capsys):
    files, ref = _graph(tmp_path / "in", "string", n_ids=200, n_edges=1000)
    extra = tmp_path / "in" / "x_extra.parquet"
    t = pq.read_table(files["features"])
    unknown = pa.table({"id": ["nobody"], **{f"f{j}": pa.array([1.0], pa.float32())
                                              for j in range(4)}})
    pq.write_table(pa.concat_tables([t, unknown]), extra)
    bad = dict(files, features=extra)
    assert _preprocess(bad, tmp_path / "g") == 2
    err = capsys.readouterr().err.strip()
    assert "nobody" in err and str(extra) in err and len(err.splitlines()) == 1
    assert _preprocess(bad, tmp_path / "g", "--ignore-unknown-ids") == 0
    assert GraphStore(tmp_path / "g").meta["unknown_ids_skipped"] == 1
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    assert _preprocess(dict(files, features=tmp_path / "x.npy"), tmp_path / "h") == 2
    assert "--id-col" in capsys.readouterr().err
    assert _preprocess(files, tmp_path / "i", "--id-col", "key") == 2
    err = capsys.readouterr().err.strip()
    assert "key" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "h").exists() and not (tmp_path / "i").exists()


@pytest.mark.slow
def test_remap_20m_edges_of_random_64_bit_ids_within_256mb(tmp_path):
    from test_preprocess_memory import FIXED_OVERHEAD_MB, LIMIT_MB
    rng = np.random.default_rng(0)
    pool = np.unique(rng.integers(-2**63, 2**63 - 1, size=2_000_000, dtype=np.int64))
    edges, total = tmp_path / "edges.parquet", 20_000_000
    schema = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
    with pq.ParquetWriter(edges, schema) as w:
        for _ in range(0, total, 1 << 21):
            k = 1 << 21
            w.write_table(pa.table({"src": pool[rng.integers(0, len(pool), k)],
                                    "dst": pool[rng.integers(0, len(pool), k)]},
                                   schema=schema)[:min(k, total)])
    stores = []
    for in_memory in ("1", "0"):                 # the dictionary in memory, then partitioned
        out = tmp_path / f"g{in_memory}.zarr"
        cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "lrgi_ooc", "preprocess",
               "--edges", str(edges), "--out", str(out), "--memory-limit", f"{LIMIT_MB}MB"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200,
                           env=dict(cli_env(), LRGI_OOC_REMAP_IN_MEMORY=in_memory))
        assert p.returncode == 0, p.stderr[-2000:]
        peak_mb = int(p.stdout.strip().splitlines()[-1]) // 1024
        # the dense-id test reads .npy; Parquet input loads pyarrow too (40 MB measured)
        assert peak_mb < LIMIT_MB + FIXED_OVERHEAD_MB + PYARROW_MB, (in_memory, peak_mb)
        g = GraphStore(out)
        assert g.meta["id_kind"] == "int64" and g.num_nodes == len(pool)
        np.testing.assert_array_equal(g.read_rows("node/ids", 0, g.num_nodes), pool)
        assert int(np.asarray(g.indptr())[-1]) == g.num_edges > 0
        stores.append(g)
    for key in ("csr/indptr", "csr/indices"):
        np.testing.assert_array_equal(np.asarray(stores[0].mmap(key)),
                                      np.asarray(stores[1].mmap(key)))


def test_compiled_string_and_int_lookups_equal_the_exact_ones():
    # the kernels run on blocks of >= 65536 ids, which the small graphs above never reach
    rng = np.random.default_rng(5)
    pool = [f"user-{x:016x}" for x in rng.integers(0, 2**62, 70000)] + ["é", "a\x00b", "a"]
    col = idcols.StrCol.from_arrow(pa.array([pool[i] for i in rng.integers(0, len(pool),
                                                                          200000)]))
    d = idcols.distinct(col)
    assert sorted(d.to_arrow().to_pylist()) == sorted(set(col.to_arrow().to_pylist()))
    u = idcols.unique_sorted(col)
    np.testing.assert_array_equal(idcols.rank(col, u), idcols._index_in(col, u))
    ints = _int_ids(rng, 100000)
    q = ints[rng.integers(0, len(ints), 300000)]
    np.testing.assert_array_equal(idcols.rank(q, ints), np.searchsorted(ints, q))
    np.testing.assert_array_equal(idcols.unique_sorted(q), np.unique(q))
