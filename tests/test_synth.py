"""`synth`: files and counts, determinism, homophily, heavy tail, feature signal, bad options."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from numba import njit

import lrgi_ooc
from lrgi_ooc.cli import main as cli
from lrgi_ooc.ingest import synth


def _edges(out: Path) -> tuple[np.ndarray, np.ndarray]:
    t = pq.read_table(out / "edges")
    return t["src"].to_numpy(), t["dst"].to_numpy()


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "g20k"
    info = synth.generate(out, nodes=20_000, avg_degree=20, classes=8, feature_dim=32,
                          homophily=0.8, seed=3, edges_per_part=60_000)
    return out, info


def test_files_and_counts(graph):
    out, info = graph
    parts = sorted((out / "edges").iterdir())
    assert [p.name for p in parts] == [f"part-{k:05d}.parquet" for k in range(4)]
    assert info["counts"]["parts"] == 4
    schema = pq.read_schema(parts[0])
    assert schema.names == ["src", "dst"]
    assert str(schema.field("src").type) == "int32" == str(schema.field("dst").type)
    src, dst = _edges(out)
    c = info["counts"]
    assert c["undirected_edges_requested"] == 200_000
    assert len(src) == c["edges_written"] == 200_000 - c["self_loops_dropped"]
    assert 0 < c["self_loops_dropped"] < 1000
    feats, labels = np.load(out / "features.npy"), np.load(out / "labels.npy")
    assert feats.shape == (20_000, 32) and feats.dtype == np.float32
    assert labels.shape == (20_000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [2500] * 8               # balanced
    on_disk = json.loads((out / "synth.json").read_text())
    assert on_disk == {k: v for k, v in info.items() if not k.startswith("_")}
    b = on_disk["bytes"]
    assert b["edges"] == sum(p.stat().st_size for p in parts)
    assert b["features"] == (out / "features.npy").stat().st_size
    assert b["per_edge"] == round(b["edges"] / c["edges_written"], 3)
    assert on_disk["files"]["id_dtype"] == "int32"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_ids_in_range_no_self_loops(graph):
    out, _ = graph
    src, dst = _edges(out)
    assert src.min() >= 0 and dst.min() >= 0 and max(src.max(), dst.max()) < 20_000
    assert not np.any(src == dst)


def test_homophily_matches_request(graph, tmp_path):
    out, info = graph
    src, dst = _edges(out)
    labels = np.load(out / "labels.npy")
    measured = float(np.mean(labels[src] == labels[dst]))
    assert abs(measured - 0.8) < 0.03
    assert measured == pytest.approx(info["counts"]["realised_homophily"], abs=1e-12)
    low = synth.generate(tmp_path / "low", nodes=20_000, classes=5, feature_dim=8,
                         homophily=0.2, seed=1)
    src, dst = _edges(tmp_path / "low")
    labels = np.load(tmp_path / "low" / "labels.npy")
    assert abs(float(np.mean(labels[src] == labels[dst])) - 0.2) < 0.03
    assert low["counts"]["realised_homophily"] == pytest.approx(
        float(np.mean(labels[src] == labels[dst])))


def test_degrees_heavy_tailed_and_clipped(graph):
    out, info = graph
    src, dst = _edges(out)
    deg = np.bincount(src, minlength=20_000) + np.bincount(dst, minlength=20_000)
    assert deg.mean() == pytest.approx(20, rel=0.01)
    assert deg.max() > 15 * deg.mean()                    # heavy tail
    assert np.median(deg) < deg.mean()                    # skewed
    cap = info["parameters"]["max_degree"]                # sqrt(N * D) by default
    assert cap == pytest.approx(np.sqrt(20_000 * 20))
    assert deg.max() < 1.3 * cap


def test_labels_and_hubs_scattered_over_ids(graph):
    """The Feistel permutation leaves no id structure: neighbours in id order are unrelated."""
    out, _ = graph
    labels = np.load(out / "labels.npy")
    assert abs(float(np.mean(labels[1:] == labels[:-1])) - 1 / 8) < 0.015
    src, dst = _edges(out)
    deg = np.bincount(src, minlength=20_000) + np.bincount(dst, minlength=20_000)
    halves = deg.reshape(2, -1).sum(1)
    assert abs(halves[0] - halves[1]) < 0.1 * halves.sum()


def test_features_need_structure(graph):
    """Raw features: clearly imperfect; one round of neighbour averaging: much better."""
    out, info = graph
    src, dst = _edges(out)
    y = np.load(out / "labels.npy")
    x = np.load(out / "features.npy").astype(np.float64)
    train = np.arange(len(y)) % 2 == 0

    def nearest_class_mean(z: np.ndarray) -> float:
        mu = np.stack([z[train & (y == c)].mean(0) for c in range(8)])
        d2 = (z[~train] ** 2).sum(1)[:, None] - 2 * z[~train] @ mu.T + (mu ** 2).sum(1)
        return float(np.mean(d2.argmin(1) == y[~train]))

    agg = np.zeros_like(x)
    np.add.at(agg, src, x[dst])
    np.add.at(agg, dst, x[src])
    deg = np.bincount(src, minlength=len(y)) + np.bincount(dst, minlength=len(y))
    raw = nearest_class_mean(x)
    mean1 = nearest_class_mean(agg / np.maximum(deg, 1)[:, None])
    assert info["derived"]["raw_bayes_accuracy"] == 0.6
    assert 0.5 < raw < 0.7
    assert mean1 > raw + 0.25


def test_deterministic_and_independent_of_part_size(tmp_path):
    kw = dict(nodes=3000, avg_degree=8, classes=4, feature_dim=6, homophily=0.7, seed=11)
    a = synth.generate(tmp_path / "a", edges_per_part=5000, **kw)
    synth.generate(tmp_path / "b", edges_per_part=5000, **kw)
    synth.generate(tmp_path / "c", edges_per_part=777, **kw)
    synth.generate(tmp_path / "d", edges_per_part=5000, **{**kw, "seed": 12})
    files = ["features.npy", "labels.npy", "synth.json"] + [
        f"edges/{p.name}" for p in sorted((tmp_path / "a" / "edges").iterdir())]
    assert len(files) == 3 + a["counts"]["parts"] == 6
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    for f in ["features.npy", "labels.npy"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "c" / f).read_bytes(), f
        assert (tmp_path / "a" / f).read_bytes() != (tmp_path / "d" / f).read_bytes(), f
    ea, ec, ed = (np.stack(_edges(tmp_path / k)) for k in "acd")
    assert np.array_equal(ea, ec)                          # same stream, other part sizes
    assert ea.shape != ed.shape or not np.array_equal(ea, ed)


def _digest(out: Path) -> str:
    """sha256 of the decoded edges and the node files (Parquet bytes name the writer)."""
    h = hashlib.sha256()
    src, dst = _edges(out)
    for a in (src, dst):
        h.update(np.ascontiguousarray(a).tobytes())
    for f in ("features.npy", "labels.npy"):
        h.update((out / f).read_bytes())
    return h.hexdigest()


def test_default_output_unchanged_by_new_options(tmp_path):
    """The digest of this graph before --labelled-fraction and --feature-dtype existed: their
    defaults must write the same graph, features and labels, and no split files."""
    kw = dict(nodes=3000, avg_degree=8, classes=4, feature_dim=6, homophily=0.7, seed=11,
              edges_per_part=5000)
    synth.generate(tmp_path / "a", **kw)
    synth.generate(tmp_path / "b", labelled_fraction=1.0, feature_dtype="float32", **kw)
    for out in (tmp_path / "a", tmp_path / "b"):
        assert _digest(out) == \
            "83843abf2146f884b2d1615ed3d116aaa11f13e73ac10a05638fc46c14b58b8d"
        assert not any((out / f).exists() for f in synth.SPLIT_FILES)


def test_labelled_fraction_and_split(tmp_path):
    kw = dict(nodes=3000, avg_degree=8, classes=4, feature_dim=6, homophily=0.7, seed=11,
              edges_per_part=5000)
    full = tmp_path / "full"
    synth.generate(full, **kw)
    info = synth.generate(tmp_path / "s", labelled_fraction=0.05, **kw)
    synth.generate(tmp_path / "s2", labelled_fraction=0.05, **kw)
    sparse = tmp_path / "s"
    for f in ["features.npy", "labels.npy", *synth.SPLIT_FILES]:    # deterministic
        assert (sparse / f).read_bytes() == (tmp_path / "s2" / f).read_bytes(), f
    # the graph and the features are those of the fully labelled run
    assert (sparse / "features.npy").read_bytes() == (full / "features.npy").read_bytes()
    assert np.array_equal(np.stack(_edges(sparse)), np.stack(_edges(full)))
    y, y_full = np.load(sparse / "labels.npy"), np.load(full / "labels.npy")
    labelled = np.flatnonzero(y >= 0)
    assert len(labelled) == 150 and set(np.unique(y)) == {-1, 0, 1, 2, 3}
    assert np.array_equal(y[labelled], y_full[labelled])
    assert labelled.min() < 300 and labelled.max() > 2700          # scattered over ids
    parts = [np.load(sparse / f) for f in synth.SPLIT_FILES]
    assert [len(p) for p in parts] == [118, 11, 21]                 # 11 : 1 : 2 of 150
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)
    assert np.array_equal(np.sort(np.concatenate(parts)), labelled)  # disjoint, labelled
    assert set(y[parts[0]]) == {0, 1, 2, 3}
    assert info["counts"]["labelled_nodes"] == 150
    assert info["counts"]["split_sizes"] == {"train": 118, "val": 11, "test": 21}
    assert info["files"]["splits"] == {"train": "train.npy", "val": "val.npy",
                                       "test": "test.npy"}
    assert info["parameters"]["labelled_fraction"] == 0.05
    assert synth.split_sizes(111_059_956, 1_546_782 / 111_059_956) == (1215329, 110484, 220969)


def test_float16_features_are_the_rounded_float32_ones(tmp_path):
    kw = dict(nodes=2000, avg_degree=4, classes=3, feature_dim=7, seed=5)
    synth.generate(tmp_path / "a", **kw)
    info = synth.generate(tmp_path / "h", feature_dtype="float16", **kw)
    x32, x16 = np.load(tmp_path / "a" / "features.npy"), np.load(tmp_path / "h" / "features.npy")
    assert x16.dtype == np.float16 and x16.shape == (2000, 7)
    assert np.array_equal(x16, x32.astype(np.float16))
    assert (tmp_path / "h" / "features.npy").stat().st_size < \
        0.51 * (tmp_path / "a" / "features.npy").stat().st_size
    assert info["files"]["features_dtype"] == "float16"
    for f in ("labels.npy",):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "h" / f).read_bytes()


def test_sparse_labels_reach_the_store_and_the_probe(tmp_path, run_cli):
    """preprocess carries label -1 and the split; evaluate probes exactly the split's rows."""
    g = tmp_path / "in"
    synth.generate(g, nodes=4000, avg_degree=6, classes=4, feature_dim=8, seed=2,
                   labelled_fraction=0.1, feature_dtype="float16")
    out = tmp_path / "g.zarr"
    rc, _, err = run_cli("preprocess", "--edges", g / "edges", "--features", g / "features.npy",
                         "--labels", g / "labels.npy", "--train", g / "train.npy",
                         "--val", g / "val.npy", "--test", g / "test.npy", "--undirected",
                         "--feature-dtype", "float16", "--out", out)
    assert rc == 0, err
    from lrgi_ooc.store import layout as st
    store = st.GraphStore(out)
    assert np.array_equal(store.mmap(st.LABELS)[:], np.load(g / "labels.npy"))
    sp = store.splits()
    assert len(sp) == 1 and all(np.array_equal(sp[0][p], np.load(g / f"{p}.npy"))
                                for p in ("train", "val", "test"))
    assert store.meta["feature_dtype"] == "float16"
    res = lrgi_ooc.evaluate(out, layer=0, epochs=50)
    assert res["split_source"] == "store" and res["num_splits"] == 1


def test_feistel_is_a_permutation_with_inverse():
    @njit
    def both(n, lbits, rbits, fkeys):
        fwd = np.empty(n, np.int64)
        back = np.empty(n, np.int64)
        for i in range(n):
            fwd[i] = synth._feistel(i, n, lbits, rbits, fkeys)
            back[i] = synth._feistel_inv(fwd[i], n, lbits, rbits, fkeys)
        return fwd, back

    fkeys = synth._keys(5)[synth._STREAMS:]
    for n in (2, 3, 1000, 4097):
        bits = max(2, (n - 1).bit_length())
        fwd, back = both(n, bits // 2, bits - bits // 2, fkeys)
        assert np.array_equal(np.sort(fwd), np.arange(n))
        assert np.array_equal(back, np.arange(n))


def test_failed_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(synth, "_write_nodes", boom)
    with pytest.raises(RuntimeError):
        synth.generate(tmp_path / "g", nodes=100, avg_degree=4, feature_dim=4)
    assert list(tmp_path.iterdir()) == []


def test_cli_run_and_overwrite(tmp_path, capsys):
    out = tmp_path / "g"
    base = ["synth", "--out", str(out), "--nodes", "500", "--avg-degree", "6",
            "--classes", "3", "--feature-dim", "5", "--homophily", "0.9", "--seed", "2"]
    assert cli.main(base) == 0
    assert "500 nodes" in capsys.readouterr().err
    first = (out / "labels.npy").read_bytes()
    assert cli.main(base) == 2                             # exists, no --overwrite
    assert "exists" in capsys.readouterr().err
    assert cli.main(base[:-1] + ["9", "--overwrite"]) == 0
    assert (out / "labels.npy").read_bytes() != first
    assert json.loads((out / "synth.json").read_text())["parameters"]["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


@pytest.mark.parametrize("extra, message", [
    (["--nodes", "1"], "--nodes"),
    (["--classes", "1"], "--classes"),
    (["--classes", "20", "--nodes", "10"], "--classes"),
    (["--homophily", "1.5"], "--homophily"),
    (["--homophily", "-0.1"], "--homophily"),
    (["--avg-degree", "0"], "--avg-degree"),
    (["--feature-dim", "0"], "--feature-dim"),
    (["--degree-exponent", "2"], "--degree-exponent"),
    (["--signal", "-1"], "--signal"),
    (["--edges-per-part", "0"], "--edges-per-part"),
    (["--labelled-fraction", "0"], "--labelled-fraction"),
    (["--labelled-fraction", "1.5"], "--labelled-fraction"),
    (["--labelled-fraction", "0.1"], "too few for a train/val/test split"),
    (["--feature-dtype", "float64"], "--feature-dtype"),
])
def test_bad_options_exit_2(tmp_path, capsys, extra, message):
    out = tmp_path / "g"
    assert cli.main(["synth", "--out", str(out), "--nodes", "100", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_overwrite_refuses_foreign_directory(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    assert cli.main(["synth", "--out", str(tmp_path), "--nodes", "100", "--overwrite"]) == 2
    assert "not an earlier synth output" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_rerun_removes_what_a_killed_synth_left(tmp_path):
    """Kill trial `run` (docs/reliability.md): a synth killed mid-write left its temporary
    directory beside the output for good. Directories of dead pids are removed on the next
    run; a live writer's are kept."""
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".out.synth-{dead.pid}"
    (left / "edges").mkdir(parents=True)
    (left / "features.npy").write_bytes(b"partial")
    live = tmp_path / f".out.synth-{os.getppid()}"
    live.mkdir()
    synth.generate(tmp_path / "out", nodes=500, avg_degree=4, classes=2, feature_dim=3, seed=1)
    assert not left.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]
