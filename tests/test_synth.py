"""`synth`: files and counts, determinism, homophily, heavy tail, feature signal, bad options."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from numba import njit

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
