"""info: exact statistics; validate: OK on sound stores, the first problem (exit 1) on each
kind of corruption, exit 2 on paths that are not stores. Streaming is exercised with tiny
blocks so that every block boundary case is crossed."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lrgi_ooc.stages import inspect as ins
from lrgi_ooc.store import layout as st

N, E = 300, 3000


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict]:
    from lrgi_ooc.cli.main import main
    d = tmp_path_factory.mktemp("inspect")
    rng = np.random.default_rng(7)
    src, dst = rng.integers(0, N - 20, E), rng.integers(0, N - 20, E)   # last 20: degree 0
    np.save(d / "e.npy", np.stack([src, dst]))
    np.save(d / "x.npy", rng.normal(size=(N, 5)).astype(np.float32))
    y = rng.integers(0, 4, N)
    y[:3] = -1
    np.save(d / "y.npy", y)
    perm = rng.permutation(N)
    for p, ids in zip(st.SPLIT_PARTS, (perm[:100], perm[100:150], perm[150:])):
        np.save(d / f"{p}.npy", ids)
    out = d / "store"
    assert main(["preprocess", "--edges", str(d / "e.npy"), "--features", str(d / "x.npy"),
                 "--labels", str(d / "y.npy"), "--out", str(out),
                 *[a for p in st.SPLIT_PARTS for a in (f"--{p}", str(d / f"{p}.npy"))]]) == 0
    return out, {"y": y}


@pytest.fixture
def store_copy(base, tmp_path) -> st.GraphStore:
    shutil.copytree(base[0], tmp_path / "s")
    return st.GraphStore(tmp_path / "s")


@pytest.fixture(params=[ins.BLOCK, 7], ids=["default-blocks", "tiny-blocks"])
def block(request, monkeypatch) -> int:
    monkeypatch.setattr(ins, "BLOCK", request.param)
    return request.param


def test_info_json_exact(base, block, run_cli):
    path, ref = base
    rc, out, err = run_cli("info", path, "--json")
    assert rc == 0, err
    i = json.loads(out)
    g = st.GraphStore(path)
    deg = np.diff(np.asarray(g.indptr()))
    srt = np.sort(deg)
    d = i["in_degree"]
    assert (d["min"], d["max"], d["zero_degree"]) == (srt[0], srt[-1], int((deg == 0).sum()))
    assert d["zero_degree"] >= 20 and d["mean"] == pytest.approx(deg.mean())
    for q, v in d["quantiles"].items():
        assert v == srt[int(np.floor(float(q) * (N - 1)))]
    y = ref["y"]
    assert i["labels"]["class_counts"] == np.bincount(y[y >= 0]).tolist()
    assert i["labels"]["unlabelled"] == 3 and i["labels"]["num_classes"] == 4
    assert i["splits"] == [{"train": 100, "val": 50, "test": 150}]
    assert i["num_nodes"] == N and i["num_features"] == 5 and i["feature_dtype"] == "float32"
    assert i["arrays"][st.INDICES]["dtype"] == "int32" and "preprocess" in i["stages"]


def test_info_text_and_large_degrees(tmp_path, run_cli):
    """A hub with in-degree > 65536 goes through the exact large-degree path."""
    hub = 70_000
    np.save(tmp_path / "e.npy", np.stack([np.arange(1, hub + 1), np.zeros(hub, np.int64)]))
    rc, _, err = run_cli("preprocess", "--edges", tmp_path / "e.npy", "--out", tmp_path / "g")
    assert rc == 0, err
    rc, out, _ = run_cli("info", tmp_path / "g", "--json")
    d = json.loads(out)["in_degree"]
    assert (d["min"], d["max"], d["zero_degree"]) == (0, hub, hub)
    assert d["mean"] == pytest.approx(hub / (hub + 1))
    rc, out, _ = run_cli("info", tmp_path / "g")
    assert rc == 0
    assert "nodes        70,001" in out and "features     none" in out
    assert f"max {hub}" in out and "labels       none" in out and "splits       none" in out


def test_validate_ok(base, block, run_cli):
    rc, out, err = run_cli("validate", base[0])
    assert rc == 0 and out.strip().endswith(": OK"), (out, err)


def _rewrite(g: st.GraphStore, key: str, change) -> None:
    """Apply change(whole array) and write the touched chunks back through the store."""
    a = g.info(key)
    data = g.read_rows(key, 0, a.num_rows)
    change(data)
    for i in range(a.num_chunks):
        s, e = a.chunk_bounds(i)
        g.write_chunk(key, i, data[s:e])


def _in_row(g: st.GraphStore, min_degree: int) -> tuple[int, int]:
    ptr = np.asarray(g.indptr())
    row = int(np.flatnonzero(np.diff(ptr) >= min_degree)[0])
    return row, int(ptr[row])


def _set(idx, value):
    def change(a):
        a[idx] = value
    return change


def _bump(idx):
    def change(a):
        a[idx] += 1
    return change


def _first_is_last(a):
    a[0] = a[-1]


CORRUPTIONS = {
    "indptr decreases": (lambda g: _rewrite(g, st.INDPTR, _set(10, 1000)),
                         "csr/indptr: decreases at node"),
    "indptr start": (lambda g: _rewrite(g, st.INDPTR, _set(0, 1)), "starts at 1"),
    "indptr end": (lambda g: _rewrite(g, st.INDPTR, _bump(N)), "ends at"),
    "index out of range": (lambda g: _rewrite(g, st.INDICES, _set(5, N + 3)), "is outside [0, 300)"),
    "negative index": (lambda g: _rewrite(g, st.INDICES, _set(17, -1)), "= -1 is outside"),
    "row not ascending": (lambda g: _rewrite(g, st.INDICES, _set(
        slice(_in_row(g, 2)[1], _in_row(g, 2)[1] + 2),
        g.read_rows(st.INDICES, _in_row(g, 2)[1], _in_row(g, 2)[1] + 2)[::-1])),
        "is not strictly ascending"),
    "self loop": (lambda g: _rewrite(g, st.INDICES, _set(_in_row(g, 1)[1], _in_row(g, 1)[0])),
                  "self loop at node"),
    "nan feature": (lambda g: _rewrite(g, st.FEATURES, _set((123, 2), np.nan)),
                    "node/features: row 123 is not finite"),
    "label below -1": (lambda g: _rewrite(g, st.LABELS, _set(4, -5)), "class -5 < -1 at node 4"),
    "split out of range": (lambda g: _rewrite(g, st.split_key("val"), _set(-1, N)),
                           "split/val: node id 300 outside"),
    "split unsorted": (lambda g: _rewrite(g, st.split_key("test"), _first_is_last),
                       "split/test: ids not strictly ascending"),
    "missing chunk": (lambda g: g.info(st.INDICES).chunk_path(0).unlink(),
                      "csr/indices: chunk 0 is missing"),
    "truncated chunk": (lambda g: open(g.info(st.FEATURES).chunk_path(0), "r+b").truncate(100),
                        "truncated chunk file"),
    "stage missing": (lambda g: g.clear_stage("preprocess"), "preprocess did not complete"),
    "array missing": (lambda g: g.delete(st.INDICES), "csr/indices: missing"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_validate_finds_corruption(case, store_copy, block, run_cli):
    corrupt, expected = CORRUPTIONS[case]
    corrupt(store_copy)
    rc, out, err = run_cli("validate", store_copy.path)
    assert rc == 1, (out, err)
    assert "CORRUPT" in out and expected in out, out


def test_not_a_store_exits_2(tmp_path, run_cli):
    rc, _, err = run_cli("validate", tmp_path / "nope")
    assert rc == 2 and "does not exist" in err
    (tmp_path / "dir").mkdir()
    rc, _, err = run_cli("validate", tmp_path / "dir")
    assert rc == 2 and "not a Zarr v3 store" in err
    rc, _, err = run_cli("info", tmp_path / "dir")
    assert rc == 2 and len(err.strip().splitlines()) == 1
