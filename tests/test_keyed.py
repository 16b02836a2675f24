"""Node tables keyed by node id (`ingest.keyed`): joins onto dense ids against a Python dict
reference, for int64 ids (negatives, near 2^63) and UTF-8 string ids, Parquet and CSV, one
range or many, and every one-line error (with no work files left behind)."""
from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.ingest import keyed
from lrgi_ooc.store import layout
from lrgi_ooc.store.idcols import INT, STR, StrCol
from lrgi_ooc.store.ids import IdIndex, write_ids
from lrgi_ooc.store.layout import FEATURES, LABELS, GraphStore

BIG = 2**63 - 1


# --------------------------------------------------------------------------- fixtures
def int_ids(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    extra = [-2**63, -2**63 + 1, -5, -1, 0, 1, 7, BIG - 1, BIG]
    rand = np.setdiff1d(rng.integers(-2**63, BIG, n, dtype=np.int64), extra)
    return sorted(extra + [int(v) for v in rand[: n - len(extra)]])


def str_ids(n: int) -> list[str]:
    stems = ["node-", "é", "日本", "Zürich-", "a", "ab", "😀"]
    out = {f"{stems[i % len(stems)]}{i}" for i in range(n - 3)} | {"a", "ab", "abc"}
    return sorted(out, key=lambda s: s.encode())


def make_store(tmp: Path, ids: list, kind: str) -> GraphStore:
    """A store with just its dictionary (no edges): what `join_rows` needs."""
    n = len(ids)
    store = GraphStore.create(tmp / "g.zarr", {"num_nodes": n, "id_kind": kind})
    if kind == INT:
        a = np.array(ids, np.int64)
        write_ids(store, INT, [a[s:s + 1000] for s in range(0, n, 1000)], n)
    else:
        blocks, total = [], 0
        for s in range(0, n, 1000):
            enc = [x.encode() for x in ids[s:s + 1000]]
            blocks.append(StrCol(np.r_[0, np.cumsum([len(e) for e in enc])].astype(np.int64),
                                 np.frombuffer(b"".join(enc), np.uint8).copy()))
            total += sum(len(e) for e in enc)
        write_ids(store, STR, blocks, n, total)
    return store


def write_table(path: Path, cols: dict[str, list], fmt: str) -> Path:
    if fmt == "parquet":
        pq.write_table(pa.table(cols), path, row_group_size=500)
        return path
    names = list(cols)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(names)
        for row in zip(*cols.values()):
            w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                        for v in row])
    return path


def no_files(work: Path) -> bool:
    return not any(p.is_file() for p in work.rglob("*"))


def join(store, table, key=FEATURES, **kw):
    args = dict(dtype=np.float32, fill=0.0, squeeze=False, ignore_unknown=False,
                memory_limit=1 << 26, work=store.path.parent / "work", finite=True)
    args.update(kw)
    return keyed.join_rows(store, key, table, IdIndex(store), **args)


SUFFIX = {"parquet": "x.parquet", "csv": "x.csv", "csv.gz": "x.csv.gz"}


# --------------------------------------------------------------------------- joins
@pytest.mark.parametrize("kind", [INT, STR])
@pytest.mark.parametrize("fmt", ["parquet", "csv", "csv.gz"])
@pytest.mark.parametrize("many", [False, True])
def test_features_match_a_dict_reference(tmp_path, monkeypatch, kind, fmt, many):
    if many:      # store arrays (and the dictionary) in 4096-row chunks, hundreds of ranges
        monkeypatch.setattr(layout, "TARGET_CHUNK_BYTES", 1)
    n = 9000 if many else 300
    ids = int_ids(n) if kind == INT else str_ids(n)
    n = len(ids)
    store = make_store(tmp_path, ids, kind)
    rng = np.random.default_rng(1)
    given = rng.permutation(n)[: int(0.7 * n)]              # shuffled subset of the nodes
    x = rng.normal(size=(len(given), 3))
    path = write_table(tmp_path / SUFFIX[fmt], {"id": [ids[i] for i in given],
                                                **{f"f{j}": x[:, j].tolist() for j in range(3)}},
                       fmt if fmt == "parquet" else "csv")
    t = keyed.open_keyed(path, "id", "--features")
    assert t.columns == ["f0", "f1", "f2"] and t.kind == (kind if fmt == "parquet" else t.kind)
    pos = {v: i for i, v in enumerate(ids)}
    ref = np.zeros((n, 3), np.float32)
    for row, i in enumerate(given):
        ref[pos[ids[i]]] = x[row]
    limit = 4000 if many else 1 << 26
    res = join(store, t, memory_limit=limit)
    assert res == {"rows": len(given), "matched": len(given), "missing": n - len(given),
                   "skipped": 0}
    got = GraphStore(store.path).read_rows(FEATURES, 0, n)
    assert got.dtype == np.float32 and got.shape == (n, 3)
    np.testing.assert_array_equal(got, ref)
    if many:
        assert store.info(FEATURES).num_chunks > 1
        assert keyed._range_rows(limit, 3 * 4) * 10 < n
    assert no_files(tmp_path / "work")


@pytest.mark.parametrize("kind", [INT, STR])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_labels_squeeze_and_fill(tmp_path, kind, fmt):
    ids = int_ids(200) if kind == INT else str_ids(200)
    store = make_store(tmp_path, ids, kind)
    rng = np.random.default_rng(2)
    given = rng.permutation(len(ids))[:120]
    y = rng.integers(0, 5, len(given))
    path = write_table(tmp_path / f"y.{fmt}", {"id": [ids[i] for i in given],
                                               "label": [int(v) for v in y]}, fmt)
    t = keyed.open_keyed(path, "id", "--labels")
    res = join(store, t, key=LABELS, dtype=np.int64, fill=-1, squeeze=True, finite=False)
    ref = {ids[i]: int(v) for i, v in zip(given, y)}
    want = np.array([ref.get(v, -1) for v in ids], np.int64)
    got = store.read_rows(LABELS, 0, len(ids))
    assert got.shape == (len(ids),) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert res["matched"] == 120 and res["missing"] == len(ids) - 120
    assert res["min"] == int(y.min()) and res["max"] == int(y.max())


def test_nan_label_is_unlabelled_and_multi_column_labels(tmp_path):
    ids = int_ids(10)
    store = make_store(tmp_path, ids, INT)
    path = write_table(tmp_path / "y.parquet", {"id": ids[:3], "y": [1.0, float("nan"), 2.0]},
                       "parquet")
    join(store, keyed.open_keyed(path, "id", "--labels"), key=LABELS, dtype=np.int64,
         fill=-1, squeeze=True, finite=False)
    assert store.read_rows(LABELS, 0, 10).tolist() == [1, -1, 2] + [-1] * 7
    path = write_table(tmp_path / "m.parquet", {"id": ids[5:7], "a": [1, 0], "b": [1, 1]},
                       "parquet")
    join(store, keyed.open_keyed(path, "id", "--labels"), key=LABELS, dtype=np.uint8, fill=0,
         squeeze=True, finite=False)
    got = store.read_rows(LABELS, 0, 10)
    assert got.shape == (10, 2) and got[5:7].tolist() == [[1, 1], [0, 1]] and got[:5].sum() == 0


def test_parquet_directory_bool_and_int_values(tmp_path):
    ids = str_ids(50)
    store = make_store(tmp_path, ids, STR)
    d = tmp_path / "parts"
    d.mkdir()
    for k in range(3):
        sub = ids[k::3]
        pq.write_table(pa.table({"x": [i * 1.0 for i in range(len(sub))], "id": sub,
                                 "flag": [i % 2 == 0 for i in range(len(sub))]}),
                       d / f"p{k}.parquet")
    t = keyed.open_keyed(d, "id", "--features")
    assert t.columns == ["x", "flag"] and t.num_rows == 50 and t.kind == STR
    join(store, t)
    got = store.read_rows(FEATURES, 0, 50)
    for k in range(3):
        for i, v in enumerate(ids[k::3]):
            assert got[ids.index(v)].tolist() == [float(i), float(i % 2 == 0)]


def test_dense_graph_and_digit_strings_in_csv(tmp_path):
    # no dictionary: ids are dense ids
    store = GraphStore.create(tmp_path / "g.zarr", {"num_nodes": 5})
    path = write_table(tmp_path / "x.csv", {"id": [4, 0], "v": [1.5, 2.5]}, "csv")
    join(store, keyed.open_keyed(path, "id", "--features"), work=tmp_path / "w")
    assert store.read_rows(FEATURES, 0, 5)[:, 0].tolist() == [2.5, 0, 0, 0, 1.5]
    # string graph whose ids look like integers: CSV ids are read as text ("007" != "7")
    s2 = make_store(tmp_path / "s", ["007", "12", "7"], STR)
    path = write_table(tmp_path / "y.csv", {"id": ["7", "007"], "v": [1.0, 2.0]}, "csv")
    t = keyed.open_keyed(path, "id", "--features")
    assert t.kind == INT and t.retypable
    join(s2, t)
    assert s2.read_rows(FEATURES, 0, 3)[:, 0].tolist() == [2.0, 0.0, 1.0]


def test_many_small_blocks_per_range_file(tmp_path, monkeypatch):
    # no floors: one-row batches, a buffer flush after every add, several blocks per range
    monkeypatch.setattr(keyed, "MIN_BATCH_ROWS", 1)
    monkeypatch.setattr(keyed, "MIN_BUFFER_BYTES", 1)
    ids = int_ids(60)
    store = make_store(tmp_path, ids, INT)
    order = np.random.default_rng(4).permutation(60)
    path = write_table(tmp_path / "x.parquet", {"id": [ids[i] for i in order],
                                                "v": [float(i) for i in order]}, "parquet")
    res = join(store, keyed.open_keyed(path, "id", "--features"), memory_limit=300)
    assert res["matched"] == 60 and keyed._range_rows(300, 4) == 15
    assert store.read_rows(FEATURES, 0, 60)[:, 0].tolist() == list(range(60))
    assert no_files(tmp_path / "work")


def test_header_only_csv_and_dictionary_encoded_ids(tmp_path):
    ids = str_ids(20)
    store = make_store(tmp_path, ids, STR)
    (tmp_path / "e.csv").write_text("id,v\n")
    assert join(store, keyed.open_keyed(tmp_path / "e.csv", "id", "--features")) == \
        {"rows": 0, "matched": 0, "missing": 20, "skipped": 0}
    assert not store.read_rows(FEATURES, 0, 20).any()
    cat = pa.array([ids[3], ids[1]]).dictionary_encode()          # pandas categoricals
    pq.write_table(pa.table({"id": cat, "v": [1.0, 2.0]}), tmp_path / "c.parquet")
    join(store, keyed.open_keyed(tmp_path / "c.parquet", "id", "--features"))
    assert store.read_rows(FEATURES, 0, 5)[:, 0].tolist() == [0, 2, 0, 1, 0]


def test_batches_are_bounded(tmp_path):
    ids = int_ids(100)
    path = write_table(tmp_path / "x.csv", {"id": ids, "v": [1.0] * 100}, "csv")
    blocks = list(keyed.open_keyed(path, "id", "--features").batches(7))
    assert max(len(v) for _, v in blocks) <= 7 and sum(len(v) for _, v in blocks) == 100
    assert np.concatenate([b for b, _ in blocks]).tolist() == ids


def test_ignore_unknown_counts_skipped_rows(tmp_path):
    ids = str_ids(30)
    store = make_store(tmp_path, ids, STR)
    path = write_table(tmp_path / "x.parquet",
                       {"id": ["nope", ids[3], "日本-zzz", ids[0]], "v": [9.0, 1.0, 9.0, 2.0]},
                       "parquet")
    res = join(store, keyed.open_keyed(path, "id", "--features"), ignore_unknown=True)
    assert res == {"rows": 4, "matched": 2, "missing": 28, "skipped": 2}
    got = store.read_rows(FEATURES, 0, 30)[:, 0]
    assert got[0] == 2.0 and got[3] == 1.0 and got.sum() == 3.0


# --------------------------------------------------------------------------- splits
@pytest.mark.parametrize("kind", [INT, STR])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_keyed_ids(tmp_path, kind, fmt):
    ids = int_ids(500) if kind == INT else str_ids(500)
    store = make_store(tmp_path, ids, kind)
    rng = np.random.default_rng(3)
    part = rng.permutation(len(ids))[:200]
    path = write_table(tmp_path / f"train.{fmt}", {"node": [ids[i] for i in part]}, fmt)
    pos = {v: i for i, v in enumerate(ids)}
    got = keyed.keyed_ids(path, IdIndex(store), ignore_unknown=False, what="--train")
    assert got.dtype == np.int64
    assert got.tolist() == sorted(pos[ids[i]] for i in part)
    t = keyed.open_keyed(path, "node", "--train", values=False)
    stats: dict = {}
    assert keyed.keyed_ids(t, IdIndex(store), ignore_unknown=True, what="--train",
                           stats=stats).tolist() == got.tolist()
    assert stats == {"rows": 200, "skipped": 0}


def test_is_keyed(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    pq.write_table(pa.table({"c0": [1.0]}), tmp_path / "pos.parquet")
    write_table(tmp_path / "k.csv", {"id": [1], "v": [1.0]}, "csv")
    assert keyed.is_keyed(tmp_path / "k.csv") and keyed.is_keyed(tmp_path / "pos.parquet")
    assert keyed.is_keyed(tmp_path / "k.csv.gz")           # by name, before it exists
    assert not keyed.is_keyed(tmp_path / "x.npy") and not keyed.is_keyed(tmp_path / "x.npz")
    assert keyed.is_keyed(tmp_path / "k.csv", "id")
    assert not keyed.is_keyed(tmp_path / "pos.parquet", "id")


# --------------------------------------------------------------------------- errors
def _err(tmp_path, build, call, match):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    ids = int_ids(40)
    store = make_store(tmp_path, ids, INT)
    sstore = make_store(tmp_path / "s", str_ids(40), STR)
    ctx = {"d": tmp_path, "ids": ids, "store": store, "sstore": sstore, "work": work}
    build(ctx)
    with pytest.raises(InputError) as e:
        call(ctx)
    msg = str(e.value)
    assert "\n" not in msg and all(m in msg for m in match), msg
    assert no_files(work)
    assert not store.has(FEATURES) and not store.has(LABELS)


def _pq(name, cols):
    return lambda c: pq.write_table(pa.table(cols(c)), c["d"] / name)


def _csv(name, cols):
    return lambda c: write_table(c["d"] / name, cols(c), "csv")


def _open(name, what="--features", id_col="id", **kw):
    return lambda c: keyed.open_keyed(c["d"] / name, id_col, what, **kw)


def _join(name, store="store", **kw):
    def call(c):
        args = dict(dtype=np.float32, fill=0.0, squeeze=False, ignore_unknown=False,
                    memory_limit=2000, work=c["work"], finite=True)
        args.update(kw)
        t = keyed.open_keyed(c["d"] / name, "id", "--features")
        return keyed.join_rows(c[store], FEATURES if args["dtype"] != np.int64 else LABELS, t,
                               IdIndex(c[store]), **args)
    return call


def _ids(name, store="store"):
    return lambda c: keyed.keyed_ids(c["d"] / name, IdIndex(c[store]), ignore_unknown=False,
                                     what="--val")


ERRORS = {
    "no such file": (lambda c: None, _open("nope.parquet"), ["--features", "no such file"]),
    "npy is not keyed": (lambda c: np.save(c["d"] / "x.npy", np.zeros(3)), _open("x.npy"),
                         ["Parquet or CSV"]),
    "misnamed id column": (_pq("x.parquet", lambda c: {"node": [1], "v": [1.0]}),
                           _open("x.parquet"), ["x.parquet", "no id column 'id'", "node, v",
                                                "--id-col"]),
    "misnamed id column csv": (_csv("x.csv", lambda c: {"node": [1], "v": [1.0]}),
                               _open("x.csv"), ["x.csv", "'id'", "--id-col"]),
    "no value column": (_pq("x.parquet", lambda c: {"id": [1]}), _open("x.parquet"),
                        ["x.parquet", "no value column"]),
    "non-numeric value": (_pq("x.parquet", lambda c: {"id": [1], "v": ["a"]}),
                          _open("x.parquet"), ["x.parquet", "'v'", "numeric"]),
    "non-numeric value csv": (_csv("x.csv", lambda c: {"id": [1], "v": ["abc"]}),
                              _open("x.csv"), ["x.csv", "'v'", "numeric"]),
    "float id column": (_pq("x.parquet", lambda c: {"id": [1.5], "v": [1.0]}),
                        _open("x.parquet"), ["x.parquet", "'id'", "double",
                                             "integers or strings"]),
    "null id": (_pq("x.parquet", lambda c: {"id": [c["ids"][0], c["ids"][1], None],
                                           "v": [1.0, 2.0, 3.0]}),
                _join("x.parquet"), ["x.parquet", "row 2", "null"]),
    "null id csv": (_csv("x.csv", lambda c: {"id": [c["ids"][0], None], "v": [1.0, 2.0]}),
                    _join("x.csv"), ["x.csv", "row 1", "null"]),
    "empty id": (_pq("x.parquet", lambda c: {"id": ["a", ""], "v": [1.0, 2.0]}),
                 _join("x.parquet", store="sstore"), ["x.parquet", "row 1", "empty"]),
    "null label": (_pq("x.parquet", lambda c: {"id": c["ids"][:3], "y": [1, None, 2]}),
                   _join("x.parquet", dtype=np.int64, fill=-1, squeeze=True, finite=False),
                   ["x.parquet", "row 1", "'y'", "null"]),
    "unknown id": (_pq("x.parquet", lambda c: {"id": [c["ids"][0], 12345], "v": [1.0, 2.0]}),
                   _join("x.parquet"), ["x.parquet", "12345", "not in the graph"]),
    "unknown string id": (_pq("x.parquet", lambda c: {"id": ["日本-nope\n"], "v": [1.0]}),
                          _join("x.parquet", store="sstore"),
                          ["'日本-nope\\n'", "not in the graph"]),
    "duplicate id": (_pq("x.parquet", lambda c: {"id": [c["ids"][5], c["ids"][2], c["ids"][5]],
                                                "v": [1.0, 2.0, 3.0]}),
                     _join("x.parquet"), ["x.parquet", str(int_ids(40)[5]), "more than one"]),
    "duplicate id far apart": (_pq("x.parquet", lambda c: {"id": c["ids"] + [c["ids"][-1]],
                                                          "v": [1.0] * 41}),
                               _join("x.parquet", memory_limit=200),
                               [str(int_ids(40)[-1]), "more than one"]),
    "nan feature": (_pq("x.parquet", lambda c: {"id": c["ids"][:2], "a": [1.0, 2.0],
                                               "b": [0.0, float("nan")]}),
                    _join("x.parquet"), ["x.parquet", str(int_ids(40)[1]), "'b'",
                                         "not finite"]),
    "inf feature csv": (_csv("x.csv", lambda c: {"id": c["ids"][:2], "a": [1.0, float("inf")]}),
                        _join("x.csv"), ["x.csv", str(int_ids(40)[1]), "'a'", "not finite"]),
    "float16 overflow": (_pq("x.parquet", lambda c: {"id": c["ids"][:1], "a": [1e6]}),
                         _join("x.parquet", dtype=np.float16),
                         ["x.parquet", "'a'", "does not fit float16"]),
    "fractional label": (_pq("x.parquet", lambda c: {"id": c["ids"][:2], "y": [1.0, 2.5]}),
                         _join("x.parquet", dtype=np.int64, fill=-1, squeeze=True,
                               finite=False), ["x.parquet", "'y'", "2.5", "not an integer"]),
    "label too large": (_pq("x.parquet", lambda c: {"id": c["ids"][:1],
                                                   "y": pa.array([2**64 - 1], pa.uint64())}),
                        _join("x.parquet", dtype=np.int64, fill=-1, squeeze=True,
                              finite=False), ["x.parquet", "'y'", "does not fit int64"]),
    "string table, int graph": (_pq("x.parquet", lambda c: {"id": ["a"], "v": [1.0]}),
                                _join("x.parquet"), ["x.parquet", "strings", "integers"]),
    "int table, string graph": (_pq("x.parquet", lambda c: {"id": [1], "v": [1.0]}),
                                _join("x.parquet", store="sstore"),
                                ["x.parquet", "integers", "strings"]),
    "text csv, int graph": (_csv("x.csv", lambda c: {"id": ["a"], "v": [1.0]}),
                            _join("x.csv"), ["x.csv", "strings", "integers"]),
    "split duplicate": (_pq("s.parquet", lambda c: {"id": [c["ids"][3], c["ids"][3]]}),
                        _ids("s.parquet"), ["s.parquet", "row 1", str(int_ids(40)[3]),
                                            "more than once"]),
    "split unknown": (_csv("s.csv", lambda c: {"id": [c["ids"][3], 99]}), _ids("s.csv"),
                      ["s.csv", "99", "not in the graph"]),
    "split with values": (_pq("s.parquet", lambda c: {"id": [c["ids"][3]], "v": [1.0]}),
                          _ids("s.parquet"), ["s.parquet", "just the id column", "v"]),
    "split kind mismatch": (_pq("s.parquet", lambda c: {"id": ["x"]}), _ids("s.parquet"),
                            ["s.parquet", "strings", "integers"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_leave_no_files(tmp_path, monkeypatch, case):
    monkeypatch.setattr(keyed, "MIN_BATCH_ROWS", 1)     # duplicates across blocks and files
    monkeypatch.setattr(keyed, "MIN_BUFFER_BYTES", 1)
    build, call, match = ERRORS[case]
    _err(tmp_path, build, call, match)
