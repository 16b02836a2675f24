"""`lrgi-ooc report`: the page, its figures, and statistics that match a direct computation."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import lrgi_ooc
from lrgi_ooc.stages import report as rp
from lrgi_ooc.store.layout import GraphStore


def _inputs(d: Path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    n = 600
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "e.npy", rng.integers(0, n, size=(2, 4000), dtype=np.int64))
    np.save(d / "x.npy", rng.standard_normal((n, 6)).astype(np.float32))
    np.save(d / "y.npy", rng.integers(0, 3, size=n).astype(np.int64))
    return {"edges": d / "e.npy", "features": d / "x.npy", "labels": d / "y.npy"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-layer store built by `run` (train, embed, evaluate): every figure has data."""
    root = tmp_path_factory.mktemp("report")
    files = _inputs(root / "in")
    store = root / "g.zarr"
    lrgi_ooc.run({"store": str(store), "num_layers": 2,
                  "preprocess": {k: str(v) for k, v in files.items()},
                  "train": {"dim": 8, "heads": 2, "steps": 5, "device": "cpu"},
                  "evaluate": {"num_splits": 1, "epochs": 5}})
    return store


def _img_srcs(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def test_report_of_a_trained_store(trained, tmp_path):
    out = tmp_path / "rep"
    index = lrgi_ooc.report(trained, out=out)
    assert index == out.absolute() / "index.html" and index.is_file()
    srcs = _img_srcs(index)
    assert set(srcs) == {"loss.png", "probe.png", "degree.png", "stages.png", "embeddings.png"}
    for s in srcs:
        png = out / s
        assert png.is_file() and png.stat().st_size > 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = index.read_text()
    assert "http://" not in text and "https://" not in text        # nothing fetched
    assert "imagesLoaded" in text                                  # the render tool's hook
    doc = json.loads((out / "report.json").read_text())
    g = GraphStore(trained)
    assert doc["counts"] == {"nodes": g.num_nodes, "edges": g.num_edges,
                             "features": 6, "layers": 2}
    assert set(doc["stages"]) == set(g.stages())
    assert [r["layer"] for r in doc["probe"]] == [0, 1, 2]
    deg = np.diff(np.asarray(g.indptr(), dtype=np.int64))
    assert doc["in_degree"]["max"] == deg.max() and doc["in_degree"]["zero_degree"] == (deg == 0).sum()
    assert not any("no training" in n or "no linear-probe" in n for n in doc["notes"])

    # the statistics: the same sample, computed directly (n x n Gram matrix, full SVD)
    st = doc["embedding_stats"]
    ids = rp.sample_nodes(g.num_nodes)
    assert st["sample_size"] == len(ids) == min(rp.SAMPLE_SIZE, g.num_nodes)
    assert np.array_equal(ids, rp.sample_nodes(g.num_nodes))      # seeded: stable
    assert [s["layer"] for s in st["layers"]] == [0, 1, 2]
    for s in st["layers"]:
        x = np.asarray(g.table(s["layer"]), dtype=np.float64)[ids]
        x = x[np.linalg.norm(x, axis=1) > 0]
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        gram = u @ u.T
        k = len(u)
        cos = (gram.sum() - np.trace(gram)) / (k * (k - 1))
        sv = np.linalg.svd(np.asarray(g.table(s["layer"]), dtype=np.float64)[ids],
                           compute_uv=False)
        p = sv / sv.sum()
        p = p[p > 0]
        erank = np.exp(-(p * np.log(p)).sum())
        assert s["dim"] == (6 if s["layer"] == 0 else 8)
        assert s["mean_cosine"] == pytest.approx(cos, rel=1e-9, abs=1e-12)
        assert s["effective_rank"] == pytest.approx(erank, rel=1e-9)
        assert f"{s['effective_rank']:.2f}" in text                # the page's table

    # a second report replaces the first in place; other data is never replaced
    (out / "stale.png").write_bytes(b"x")
    lrgi_ooc.report(trained, out=out)
    assert not (out / "stale.png").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(lrgi_ooc.InputError, match="not a report directory"):
        lrgi_ooc.report(trained, out=other)
    assert (other / "keep.txt").read_text() == "mine"


def test_untrained_store_omits_figures_with_a_note(tmp_path):
    files = _inputs(tmp_path / "in")
    store = tmp_path / "g.zarr"
    lrgi_ooc.preprocess(**files, out=store)
    runs_before = sorted(p.name for p in tmp_path.iterdir())
    out = lrgi_ooc.report(store, out=tmp_path / "rep").parent
    text = (out / "index.html").read_text()
    srcs = _img_srcs(out / "index.html")
    assert "loss.png" not in srcs and "probe.png" not in srcs
    assert {"degree.png", "embeddings.png"} <= set(srcs)
    assert all((out / s).stat().st_size > 0 for s in srcs)
    assert "no training metrics" in text and "no linear-probe results" in text
    doc = json.loads((out / "report.json").read_text())
    assert [s["layer"] for s in doc["embedding_stats"]["layers"]] == [0]
    assert any("no training metrics" in n for n in doc["notes"])
    assert doc["probe"] == []
    # reporting left no empty run dirs beside the store
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(runs_before + ["rep"])


def test_sample_is_bounded_and_seeded():
    a = rp.sample_nodes(10)
    assert np.array_equal(a, np.arange(10))
    b = rp.sample_nodes(100_000)
    assert len(b) == rp.SAMPLE_SIZE and np.all(np.diff(b) > 0) and b[-1] < 100_000
    assert not np.array_equal(b, rp.sample_nodes(100_000, seed=1))
    x = np.ones((5, 3))
    assert rp.mean_pairwise_cosine(x) == pytest.approx(1.0)
    assert rp.effective_rank(x) == pytest.approx(1.0)
    assert rp.effective_rank(np.eye(4)) == pytest.approx(4.0)


def test_cli(trained, tmp_path, run_cli):
    rc, out, err = run_cli("report", trained, "--out", tmp_path / "r")
    assert rc == 0, err
    assert out.strip() == f"report written to {(tmp_path / 'r').absolute() / 'index.html'}"
    rc, out, err = run_cli("report", tmp_path / "missing.zarr", "--out", tmp_path / "r2")
    assert rc == 2 and "store does not exist" in err and out == ""
    assert not (tmp_path / "r2").exists()
