"""Stores carry their model (format v2): copies work anywhere, `encode` applies a store's
layers to another graph, and format-v1 stores are upgraded in place."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lrgi_ooc
from graphs import downgrade_to_v1
from lrgi_ooc.cli.main import main
from lrgi_ooc.nn.trained import ARRAYS, load_block
from lrgi_ooc.store.layout import GraphStore, weights_key

TRAIN = dict(dim=16, heads=2, batch_size=64, fanout="4,3", steps=3, device="cpu")


def _inputs(d: Path, n: int, seed: int, feat: int = 6) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    e = rng.integers(0, n, size=(2, 6 * n), dtype=np.int64)
    e[:, :50] = [[0] * 50, list(range(1, 51))]            # a hub: node 0 -> 50 others
    np.save(d / "e.npy", e)
    np.save(d / "x.npy", rng.standard_normal((n, feat)).astype(np.float32))
    np.save(d / "y.npy", rng.integers(0, 3, size=n))
    return {"edges": d / "e.npy", "features": d / "x.npy", "labels": d / "y.npy"}


def _graph(path: Path, files: dict[str, Path]) -> Path:
    lrgi_ooc.preprocess(**files, undirected=True, out=path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    d = tmp_path_factory.mktemp("model")
    files = _inputs(d / "in", 900, 1)
    s = _graph(d / "g.zarr", files)
    for layer in (1, 2):
        lrgi_ooc.layer(s, layer=layer, **TRAIN)
    return s, files


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)                 # the store only: no <store>.runs
    return dst


def test_weights_live_in_the_store_readable_by_zarr(trained):
    import zarr
    s, _ = trained
    store = GraphStore(s)
    w, meta = load_block(store, 1)
    for name in ARRAYS:
        a = zarr.open_array(str(s / weights_key(1, name)), mode="r")[...]
        np.testing.assert_array_equal(a, getattr(w, name))
    g = zarr.open_group(str(s / weights_key(1)), mode="r")
    assert g.attrs["lrgi_ooc"]["config"] == store.stage_record("train/1")["config"]
    assert (meta["in_dim"], meta["dim"], meta["heads"]) == (6, 16, 2)
    runs = Path(str(s) + ".runs")
    assert not list(runs.rglob("block.npz")) and not list(runs.rglob("layer.pt"))


def test_a_copied_store_embeds_evaluates_and_encodes_like_the_original(trained, tmp_path):
    s, files = trained
    c = _copy(s, tmp_path / "copy.zarr")
    GraphStore(c).delete("layers/2/embeddings")
    GraphStore(c).clear_stage("embed/2")
    lrgi_ooc.embed_layer(c, layer=2)
    np.testing.assert_array_equal(np.asarray(GraphStore(c).table(2)),
                                  np.asarray(GraphStore(s).table(2)))
    a = lrgi_ooc.evaluate(s, layer=2, num_splits=1, epochs=5)
    b = lrgi_ooc.evaluate(c, layer=2, num_splits=1, epochs=5)
    assert a["test_mean"] == b["test_mean"]
    import pyarrow.parquet as pq
    for src, name in ((s, "a"), (c, "b")):
        lrgi_ooc.export(src, layer=2, out=tmp_path / f"{name}.parquet")
        lrgi_ooc.export(src, layer=2, out=tmp_path / f"{name}.npy")
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    t1, t2 = _graph(tmp_path / "t1.zarr", files), _graph(tmp_path / "t2.zarr", files)
    lrgi_ooc.encode(s, t1)
    lrgi_ooc.encode(c, t2)
    for layer in (1, 2):
        np.testing.assert_array_equal(np.asarray(GraphStore(t1).table(layer)),
                                      np.asarray(GraphStore(t2).table(layer)))


def test_encoding_a_store_with_its_own_model_gives_its_own_tables(trained, tmp_path, capsys):
    s, files = trained
    t = _graph(tmp_path / "t.zarr", files)
    assert main(["encode", str(s), str(t)]) == 0
    assert "encoded layers 1, 2" in capsys.readouterr().out
    for layer in (1, 2):
        np.testing.assert_array_equal(np.asarray(GraphStore(t).table(layer)),
                                      np.asarray(GraphStore(s).table(layer)))
    recs = lrgi_ooc.encode(s, t)                       # resumable: nothing left to do
    assert [r["config"]["encoded"] for r in recs] == [True, True]
    assert "already written" in capsys.readouterr().out


def _gat_forward(x: torch.Tensor, edge_index: torch.Tensor, store: GraphStore,
                 layer: int) -> torch.Tensor:
    from torch_geometric.nn import GATConv
    w, meta = load_block(store, layer)
    h = meta["heads"]
    conv = GATConv(meta["in_dim"], meta["dim"] // h, heads=h, add_self_loops=True)
    with torch.no_grad():
        conv.lin.weight.copy_(torch.from_numpy(w.lin))
        conv.att_src.copy_(torch.from_numpy(w.att_src).view(1, h, -1))
        conv.att_dst.copy_(torch.from_numpy(w.att_dst).view(1, h, -1))
        conv.bias.copy_(torch.from_numpy(w.bias))
        out = F.elu(conv(x, edge_index) + x @ torch.from_numpy(w.skip).T)
        if not meta["residual"]:
            return out
        a, b = meta["residual_weights"]       # --residual (the default, layers >= 2)
        assert (a, b) == (2 ** -0.5, 2 ** -0.5)     # --residual-scale's default
        return b * out + a * x


def test_encoding_another_graph_equals_a_pyg_gatconv_forward(trained, tmp_path):
    s, _ = trained
    t = _graph(tmp_path / "other.zarr", _inputs(tmp_path / "in2", 650, 7))
    assert lrgi_ooc.encode(s, t, layers="1..2")[-1]["config"]["layer"] == 2
    g = GraphStore(t)
    indptr, indices = np.asarray(g.indptr()), np.asarray(g.indices())
    dst = np.repeat(np.arange(g.num_nodes), np.diff(indptr))
    ei = torch.from_numpy(np.stack([indices, dst]).astype(np.int64))
    x = torch.from_numpy(np.array(g.table(0)))
    assert [load_block(GraphStore(s), layer)[1]["residual"] for layer in (1, 2)] == [False, True]
    for layer in (1, 2):
        x = _gat_forward(x, ei, GraphStore(s), layer)
        np.testing.assert_allclose(np.asarray(g.table(layer)), x.numpy(), atol=1e-5)


def test_encode_refuses_other_widths_and_bad_layers(trained, tmp_path, capsys):
    s, _ = trained
    t = _graph(tmp_path / "w.zarr", _inputs(tmp_path / "in3", 300, 2, feat=5))
    assert main(["encode", str(s), str(t)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"lrgi-ooc encode: error: {t}: feature width 5 differs from {s}'s "
                   "layer 1 input width 6")
    assert GraphStore(t).layers() == [] and list(GraphStore(t).stages()) == ["preprocess"]
    for bad, msg in [("3", "layer 3 is not trained"), ("2..1", "names no layer"),
                     ("1,3", "consecutive"), ("x", "expected a range"),
                     ("2", "layer 1 table is missing")]:
        t2 = tmp_path / f"t{len(msg)}.zarr"
        if not t2.exists():
            _graph(t2, _inputs(tmp_path / "in4", 300, 3))
        assert main(["encode", str(s), str(t2), "--layers", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("npz", [True, False])
def test_a_v1_store_gets_the_upgrade_command_then_works(trained, tmp_path, capsys, npz):
    s, _ = trained
    c = _copy(s, tmp_path / "old.zarr")
    shutil.copytree(str(s) + ".runs", str(c) + ".runs")
    ref = {l: np.array(GraphStore(s).table(l)) for l in (1, 2)}
    downgrade_to_v1(c, [1, 2], npz=npz)
    for cmd in (["embed", str(c), "--layer", "1"], ["info", str(c)],
                ["evaluate", str(c), "--layer", "1"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"run `lrgi-ooc upgrade {c}` once (moves them in, atomically)")
        assert len(err.splitlines()) == 1
    assert main(["upgrade", str(c)]) == 0
    assert "v1 -> v3; weights of layers 1, 2 moved" in capsys.readouterr().out
    assert main(["upgrade", str(c)]) == 0
    assert "already format v3" in capsys.readouterr().out
    g = GraphStore(c)
    for layer in (1, 2):
        assert (load_block(g, layer)[0].lin == load_block(GraphStore(s), layer)[0].lin).all()
        g.delete(f"layers/{layer}/embeddings")
    lrgi_ooc.embed_layer(c, layer=1)
    lrgi_ooc.embed_layer(c, layer=2)
    for layer in (1, 2):
        np.testing.assert_array_equal(np.asarray(GraphStore(c).table(layer)), ref[layer])


def test_an_upgrade_killed_before_the_version_bump_leaves_a_v1_store(trained, tmp_path):
    from lrgi_ooc.nn.trained import upgrade_v1
    s, _ = trained
    c = _copy(s, tmp_path / "old.zarr")
    shutil.copytree(str(s) + ".runs", str(c) + ".runs")
    downgrade_to_v1(c, [1, 2])
    upgrade_v1(GraphStore(c, _upgrading=True))     # the weights moved, the version not yet
    with pytest.raises(lrgi_ooc.InputError, match="format version 1"):
        GraphStore(c)
    r = lrgi_ooc.upgrade(c)
    assert (r["from"], r["to"], r["layers"], r["lost"]) == (1, 3, [1, 2], [])
    assert GraphStore(c).meta["format_version"] == 3


def test_a_v1_copy_without_runs_upgrades_and_can_be_retrained(trained, tmp_path, capsys):
    s, _ = trained
    c = _copy(s, tmp_path / "old.zarr")
    shutil.copytree(str(s) + ".runs", str(c) + ".runs")
    downgrade_to_v1(c, [1, 2])
    shutil.rmtree(str(c) + ".runs")                 # copied without .runs: weights gone
    assert main(["upgrade", str(c)]) == 0
    err = capsys.readouterr().err
    assert "layers 1, 2 were recorded as trained" in err and len(err.splitlines()) == 1
    g = GraphStore(c)
    assert not g.stage_complete("train/1") and g.layers() == [1, 2]    # tables kept
    lrgi_ooc.layer(c, layer=1, **TRAIN)           # the same model again (float sums aside)
    np.testing.assert_allclose(np.asarray(GraphStore(c).table(1)),
                               np.asarray(GraphStore(s).table(1)), atol=1e-4)
