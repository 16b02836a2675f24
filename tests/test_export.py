"""`export`: every format reads back exactly the store's table, in bounded blocks, atomically."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

import lrgi_ooc
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.cli.main import main as cli_main
from lrgi_ooc.converters import export as export_mod
from lrgi_ooc.store import layout
from lrgi_ooc.store.layout import GraphStore

N, F, D = 700, 6, 8
SUFFIXES = (".parquet", ".npy", ".csv", ".csv.gz")


def _add_table(store: GraphStore, layer: int, table: np.ndarray) -> None:
    """A fake layer table, written chunk by chunk through the store's own writer."""
    key = store.table_key(layer)
    store.create_array(key, table.shape, table.dtype)
    w = store.stream_writer(key)
    w.write(table)
    w.close()


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> dict:
    """A preprocessed store (features = layer 0) with a random float32 layer-1 table."""
    d = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(5)
    np.save(d / "e.npy", rng.integers(0, N, size=(2, 4000), dtype=np.int64))
    x = rng.standard_normal((N, F)).astype(np.float32)
    np.save(d / "x.npy", x)
    lrgi_ooc.preprocess(edges=d / "e.npy", features=d / "x.npy", out=d / "g.zarr")
    store = GraphStore(d / "g.zarr")
    y = (rng.standard_normal((N, D)) * np.exp(rng.uniform(-6, 6, (N, D)))).astype(np.float32)
    _add_table(store, 1, y)
    return {"store": d / "g.zarr", "x": x, "y": y}


def read_back(path: Path, dtype: str = "float32") -> tuple[np.ndarray | None, np.ndarray]:
    """(node column or None for .npy, values) through pyarrow, pandas and numpy, checking
    that the readers agree with each other and the schema is the documented one."""
    np_dtype = np.dtype(dtype)
    name = path.name
    if name.endswith(".npy"):
        v = np.load(path)
        assert v.dtype == np_dtype and v.ndim == 2
        np.testing.assert_array_equal(np.load(path, mmap_mode="r"), v)
        return None, v
    if name.endswith(".parquet"):
        t = pq.read_table(path)
        assert t.schema.field("node").type == pa.int64()
        df = pd.read_parquet(path)
        nodes = t["node"].to_numpy()
        np.testing.assert_array_equal(df["node"].to_numpy(), nodes)
        if "embedding" in t.column_names:
            assert t.column_names == ["node", "embedding"]
            typ = t.schema.field("embedding").type
            assert pa.types.is_fixed_size_list(typ)
            assert typ.value_type == (pa.float16() if dtype == "float16" else pa.float32())
            v = t["embedding"].combine_chunks().flatten().to_numpy()
            v = v.reshape(len(t), typ.list_size)
            pv = np.stack(df["embedding"].to_list()) if len(df) else v
            np.testing.assert_array_equal(pv, v)
        else:
            dims = t.column_names[1:]
            assert dims == [f"dim_{j}" for j in range(len(dims))]
            v = np.stack([t[c].to_numpy() for c in dims], axis=1)
            np.testing.assert_array_equal(df[dims].to_numpy(), v)
        assert v.dtype == np_dtype
        return nodes, v
    # CSV: header, then text that pyarrow (float32 columns) and pandas read back exactly
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt") as f:
        header = f.readline().rstrip("\n").split(",")
    assert header[0] == "node" and header[1:] == [f"dim_{j}" for j in range(len(header) - 1)]
    t = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={"node": pa.int64(), **{c: pa.float32() for c in header[1:]}}))
    df = pd.read_csv(path)
    nodes = t["node"].to_numpy()
    v = np.stack([t[c].to_numpy() for c in header[1:]], axis=1)
    np.testing.assert_array_equal(df["node"].to_numpy(), nodes)
    np.testing.assert_array_equal(df[header[1:]].to_numpy().astype(np.float32), v)
    return nodes, v.astype(np_dtype)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_format_reads_back_the_table_exactly(graph, tmp_path, suffix, dtype):
    out = tmp_path / f"emb{suffix}"
    res = lrgi_ooc.export(graph["store"], layer=1, out=out, dtype=dtype)
    want = graph["y"].astype(dtype)
    nodes, v = read_back(out, dtype)
    np.testing.assert_array_equal(v, want)
    if nodes is not None:
        np.testing.assert_array_equal(nodes, np.arange(N))
    fmt = suffix.lstrip(".")
    assert res == {"path": str(out), "format": fmt, "rows": N, "dim": D, "dtype": dtype,
                   "bytes": out.stat().st_size, "seconds": res["seconds"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]   # no temp file left


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_wide_parquet_has_one_column_per_dimension(graph, tmp_path, dtype):
    out = tmp_path / "wide.parquet"
    lrgi_ooc.export(graph["store"], layer=1, out=out, wide=True, dtype=dtype)
    t = pq.read_table(out)
    assert t.column_names == ["node"] + [f"dim_{j}" for j in range(D)]
    want_type = pa.float16() if dtype == "float16" else pa.float32()
    assert all(t.schema.field(f"dim_{j}").type == want_type for j in range(D))
    nodes, v = read_back(out, dtype)
    np.testing.assert_array_equal(nodes, np.arange(N))
    np.testing.assert_array_equal(v, graph["y"].astype(dtype))


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nodes_subset_in_shuffled_order_with_repeats(graph, tmp_path, suffix):
    rng = np.random.default_rng(1)
    ids = rng.permutation(N)[:300]
    ids = np.concatenate([ids, ids[:5]]).astype(np.int32)      # repeats are allowed
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / f"sub{suffix}"
    res = lrgi_ooc.export(graph["store"], layer=1, out=out, nodes=tmp_path / "ids.npy")
    assert res["rows"] == len(ids)
    nodes, v = read_back(out)
    np.testing.assert_array_equal(v, graph["y"][ids])
    if nodes is not None:
        np.testing.assert_array_equal(nodes, ids)


def test_empty_nodes_file_writes_an_empty_table(graph, tmp_path):
    np.save(tmp_path / "ids.npy", np.zeros(0, dtype=np.int64))
    for suffix in (".parquet", ".npy"):
        out = tmp_path / f"e{suffix}"
        assert lrgi_ooc.export(graph["store"], layer=1, out=out,
                               nodes=tmp_path / "ids.npy")["rows"] == 0
        _, v = read_back(out)
        assert len(v) == 0


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".csv"])
def test_layer_zero_exports_the_features(graph, tmp_path, suffix):
    out = tmp_path / f"x{suffix}"
    assert lrgi_ooc.export(graph["store"], layer=0, out=out)["dim"] == F
    nodes, v = read_back(out)
    np.testing.assert_array_equal(v, graph["x"])
    np.testing.assert_array_equal(v, GraphStore(graph["store"]).table(0))


@pytest.fixture
def big(tmp_path, monkeypatch) -> dict:
    """12,345 rows in 4096-row chunks, exported in 1024-row blocks (= Parquet row groups)."""
    monkeypatch.setattr(layout, "TARGET_CHUNK_BYTES", 1)
    monkeypatch.setattr(export_mod, "BLOCK_BYTES", 1024 * 5 * 4)
    n = 12_345
    store = GraphStore.create(tmp_path / "big.zarr", {"num_nodes": n, "num_edges": 0})
    y = np.random.default_rng(2).standard_normal((n, 5)).astype(np.float32)
    _add_table(store, 1, y)
    info = store.info(store.table_key(1))
    assert info.chunk_rows == 4096 and info.num_chunks == 4
    return {"store": store.path, "y": y, "n": n}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_multi_chunk_tables_stream_in_blocks(big, tmp_path, suffix, monkeypatch):
    out = tmp_path / f"all{suffix}"
    # a full export reads with plain reads: the memory map is never touched
    monkeypatch.setattr(GraphStore, "mmap", lambda *a, **k: pytest.fail("mmap used"))
    lrgi_ooc.export(big["store"], layer=1, out=out)
    nodes, v = read_back(out)
    np.testing.assert_array_equal(v, big["y"])
    if nodes is not None:
        np.testing.assert_array_equal(nodes, np.arange(big["n"]))
    if suffix == ".parquet":
        md = pq.ParquetFile(out).metadata
        assert md.num_row_groups == -(-big["n"] // 1024)
        assert md.row_group(0).num_rows == 1024


def test_multi_chunk_subset_gathers_across_chunks(big, tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "RELEASE_BYTES", 20 * 5 * 4)   # many short windows
    ids = np.random.default_rng(3).integers(0, big["n"], 5000).astype(np.uint64)
    np.save(tmp_path / "ids.npy", ids)
    for suffix in (".parquet", ".npy"):
        out = tmp_path / f"sub{suffix}"
        lrgi_ooc.export(big["store"], layer=1, out=out, nodes=tmp_path / "ids.npy",
                        dtype="float16")
        nodes, v = read_back(out, "float16")
        np.testing.assert_array_equal(v, big["y"][ids.astype(np.int64)].astype(np.float16))
        if nodes is not None:
            np.testing.assert_array_equal(nodes, ids.astype(np.int64))


def test_float16_overflow_is_an_error_and_leaves_nothing(big, tmp_path):
    store = GraphStore(big["store"])
    y = big["y"].copy()
    y[9000, 2] = 1e6                       # in a late block: the error comes mid-stream
    _add_table(store, 2, y)
    out = tmp_path / "o.parquet"
    with pytest.raises(InputError, match="node 9000 .*float16") as e:
        lrgi_ooc.export(big["store"], layer=2, out=out, dtype="float16")
    assert "\n" not in str(e.value)
    assert [p for p in tmp_path.iterdir() if p.name.startswith((".o", "o"))] == []
    lrgi_ooc.export(big["store"], layer=2, out=out)             # float32 is fine
    np.testing.assert_array_equal(read_back(out)[1], y)


def _bad_cases(d: Path) -> dict[str, tuple[dict, str]]:
    d.mkdir()
    np.save(d / "ok.npy", np.arange(10))
    np.save(d / "float.npy", np.arange(10, dtype=np.float32))
    np.save(d / "2d.npy", np.zeros((3, 2), dtype=np.int64))
    np.save(d / "big.npy", np.array([3, 1, N + 7, 2, N + 9]))
    np.save(d / "neg.npy", np.array([3, -4, 2]))
    (d / "junk.npy").write_bytes(b"not an npy file at all")
    np.savez(d / "z.npz", a=np.arange(3))
    (d / "exists.npy").write_bytes(b"old")
    return {   # name -> (export kwargs, a regex the message matches)
        "missing layer": ({"layer": 3}, r"layer 3 table is missing: run `lrgi-ooc embed .* "
                                        r"--layer 3` first"),
        "negative layer": ({"layer": -1}, r"--layer: must be >= 0"),
        "bad suffix": ({"out": d / "o.txt"}, r"--out .*o\.txt.*\.parquet, \.npy, \.csv"),
        "no suffix": ({"out": d / "parquet"}, r"--out .*unknown output format"),
        "exists": ({"out": d / "exists.npy"}, r"--out .*exists\.npy: output exists \(use "
                                              r"--overwrite to replace it\)"),
        "out dir": ({"out": d / "nodir" / "o.npy"}, r"--out .*does not exist"),
        "bad dtype": ({"dtype": "float64"}, r"--dtype: must be float32 or float16"),
        "wide npy": ({"wide": True}, r"--wide"),
        "missing nodes": ({"nodes": d / "none.npy"}, r"--nodes .*none\.npy: file does not"),
        "junk nodes": ({"nodes": d / "junk.npy"}, r"--nodes .*junk\.npy: not a readable"),
        "npz nodes": ({"nodes": d / "z.npz"}, r"--nodes .*z\.npz"),
        "float nodes": ({"nodes": d / "float.npy"}, r"--nodes .*float\.npy: expected integer"),
        "2-d nodes": ({"nodes": d / "2d.npy"}, r"--nodes .*2d\.npy: expected a 1-D"),
        "out of range": ({"nodes": d / "big.npy"},
                         rf"--nodes .*big\.npy: node id {N + 7} \(position 2\) is out of "
                         rf"range \[0, {N}\)"),
        "negative id": ({"nodes": d / "neg.npy"}, r"--nodes .*neg\.npy: node id -4 "),
    }


def test_bad_inputs_raise_one_line_and_leave_no_file(graph, tmp_path):
    d = tmp_path / "bad"
    cases = _bad_cases(d)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    for name, (kw, pattern) in cases.items():
        args = {"layer": 1, "out": d / "o.npy", **kw}
        with pytest.raises(InputError, match=pattern) as e:
            lrgi_ooc.export(graph["store"], **args)
        assert "\n" not in str(e.value), name
        assert {p.name: p.read_bytes() for p in d.iterdir()} == before, name
    with pytest.raises(InputError, match="store does not exist"):
        lrgi_ooc.export(tmp_path / "nostore", layer=1, out=d / "o.npy")


def test_overwrite_replaces_an_existing_output(graph, tmp_path):
    out = tmp_path / "o.npy"
    out.write_bytes(b"old")
    lrgi_ooc.export(graph["store"], layer=1, out=out, overwrite=True)
    np.testing.assert_array_equal(np.load(out), graph["y"])


def test_incomplete_table_is_refused(big, tmp_path):
    store = GraphStore(big["store"])
    os.remove(store.info(store.table_key(1)).chunk_path(2))
    with pytest.raises(InputError, match=r"layer 1 table is incomplete \(1 of 4 chunks "
                                         r"missing\): run `lrgi-ooc embed"):
        lrgi_ooc.export(big["store"], layer=1, out=tmp_path / "o.npy")


def test_stale_temp_files_of_dead_exports_are_removed(graph, tmp_path):
    stale = tmp_path / ".o.npy.tmp-999999999"
    stale.write_bytes(b"partial")
    lrgi_ooc.export(graph["store"], layer=1, out=tmp_path / "o.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npy"]


def test_cli_writes_the_same_file_and_exits_2_on_bad_input(graph, tmp_path, capsys):
    api_out, cli_out = tmp_path / "api.npy", tmp_path / "cli.npy"
    lrgi_ooc.export(graph["store"], layer=1, out=api_out, dtype="float16")
    capsys.readouterr()
    rc = cli_main(["export", str(graph["store"]), "--layer", "1", "--out", str(cli_out),
                   "--dtype", "float16"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert cli_out.read_bytes() == api_out.read_bytes()
    lines = out.strip().splitlines()
    assert len(lines) == 1 and f"{N:,} rows" in lines[0] and str(cli_out) in lines[0]
    assert "npy" in lines[0] and "rows/s" in lines[0]

    pq_out = tmp_path / "w.parquet"
    assert cli_main(["export", str(graph["store"]), "--layer", "1", "--out", str(pq_out),
                     "--wide"]) == 0
    np.testing.assert_array_equal(read_back(pq_out)[1], graph["y"])

    capsys.readouterr()
    rc = cli_main(["export", str(graph["store"]), "--layer", "1", "--out", str(cli_out)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.strip().count("\n") == 0 and "output exists" in err
    rc = cli_main(["export", str(graph["store"]), "--layer", "4", "--out",
                   str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "layer 4 table is missing" in err and not (tmp_path / "x.csv").exists()


def test_gather_rows_reads_any_ids_exactly(big, monkeypatch):
    store = GraphStore(big["store"])
    key, y, n = store.table_key(1), big["y"], big["n"]
    rng = np.random.default_rng(4)
    cases = [np.array([], dtype=np.int64), np.array([0]), np.array([n - 1, 0, n - 1]),
             np.arange(4090, 4100)[::-1], rng.permutation(n), rng.integers(0, n, 50),
             np.repeat(rng.integers(0, n, 300), 3)]
    for window in (1, 400, 1 << 20):             # every id alone ... one window per block
        monkeypatch.setattr(export_mod, "RELEASE_BYTES", window)
        for ids in cases:
            np.testing.assert_array_equal(export_mod.gather_rows(store, key, ids), y[ids])
