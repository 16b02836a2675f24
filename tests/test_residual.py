"""`--residual`: layer l >= 2 is trained as the paper's layer f and writes H + f(H). Every
embed path (in memory, streamed; Dask runs the same task functions), `encode` and the PyG
encoder give the same table, and the paper's layer (no residual) keeps its configuration
hash."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lrgi_ooc
from graphs import edge_index_of, make_store, table
from lrgi_ooc.cli.main import main
from lrgi_ooc.nn.trained import load_block, load_weights
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.embed import embed_layer
from lrgi_ooc.store.layout import GraphStore, embed_stage, embeddings_key

TRAIN = dict(dim=16, heads=2, batch_size=64, fanout="4,3", steps=4, device="cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("residual")
    s = make_store(d / "g.zarr", n=700, avg_deg=5, feat=16, seed=3, hubs=3).path
    torch.set_num_threads(1)
    for layer in (1, 2, 3):
        lrgi_ooc.layer(s, layer=layer, residual=True, **TRAIN)
    return s


def test_flag_applies_from_layer_2_and_is_recorded(store):
    g = GraphStore(store)
    assert [load_block(g, layer)[1]["residual"] for layer in (1, 2, 3)] == [False, True, True]
    assert g.stage_record("train/2")["config"]["residual"] is True


def test_table_is_the_input_plus_the_block_output(store):
    """Layer 2's table minus layer 1's is the plain block's output: the same weights with the
    residual switched off give it (to float32 rounding)."""
    g = GraphStore(store)
    block, _ = load_weights(g, 2)
    assert block.residual
    x = torch.from_numpy(np.array(g.table(1), np.float32))
    ei = torch.from_numpy(edge_index_of(g))
    with torch.no_grad():
        full = block(x, ei).numpy()
        block.residual = False
        plain = block(x, ei).numpy()
    np.testing.assert_allclose(table(store, embeddings_key(2)), full, atol=1e-5)
    np.testing.assert_allclose(full - x.numpy(), plain, atol=1e-5)
    assert np.abs(plain).max() > 1e-3            # the correction is not nothing


def test_weights_are_the_papers_layer(store, tmp_path):
    """The loss sees f(H): the same seed trains the same weights with and without the
    residual (one thread); only the table differs, by its input."""
    plain = shutil.copytree(store, tmp_path / "p.zarr")
    shutil.copytree(str(store) + ".runs", str(plain) + ".runs")
    lrgi_ooc.layer(plain, layer=2, residual=False, **TRAIN)
    a, b = load_block(GraphStore(store), 2)[0], load_block(GraphStore(plain), 2)[0]
    for name in ("lin", "att_src", "att_dst", "bias", "skip"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_allclose(table(store, embeddings_key(2)) - table(store, embeddings_key(1)),
                               table(plain, embeddings_key(2)), atol=1e-5)


def test_streamed_embed_equals_in_memory(store, tmp_path):
    s = shutil.copytree(store, tmp_path / "c.zarr")
    shutil.copytree(str(store) + ".runs", str(s) + ".runs")
    want = table(store, embeddings_key(3))
    GraphStore(s).clear_stage(embed_stage(3))
    embed_layer(s, 3, chunk_rows=4096, source_blocks=3, max_edges=500)
    assert GraphStore(s).stage_record("embed/3")["plan"]["mode"] == "streamed"
    np.testing.assert_allclose(table(s, embeddings_key(3)), want, atol=1e-6)


def test_pyg_encoder_and_encode_reproduce_the_tables(store, tmp_path):
    g = GraphStore(store)
    enc = lrgi_ooc.load_encoder(store)
    assert [layer.residual for layer in enc.layers] == [False, True, True]
    x = torch.from_numpy(np.array(g.table(0), np.float32))
    with torch.no_grad():
        outs = enc(x, torch.from_numpy(edge_index_of(g)), return_all=True)
    for layer, out in enumerate(outs, start=1):
        np.testing.assert_allclose(out.numpy(), table(store, embeddings_key(layer)), atol=1e-4)
    target = make_store(tmp_path / "t.zarr", n=300, avg_deg=4, feat=16, seed=9).path
    lrgi_ooc.encode(store, target)
    t = GraphStore(target)
    xt = torch.from_numpy(np.array(t.table(0), np.float32))
    with torch.no_grad():
        want = enc(xt, torch.from_numpy(edge_index_of(t)))
    np.testing.assert_allclose(table(target, embeddings_key(3)), want.numpy(), atol=1e-4)


def test_off_keeps_the_papers_hash_and_weights():
    """Stores trained before the option existed keep their configuration hash (their
    layer 1 always; their deeper layers under --no-residual)."""
    assert "residual" not in TrainConfig(residual=False).result_fields(2)
    on = TrainConfig(residual=True)
    assert on.result_fields(2)["residual"] is True
    assert "residual" not in on.result_fields(1)      # layer 1 has none
    assert "residual" not in on.result_fields()       # nor train-e2e


def test_a_change_of_width_has_no_residual(tmp_path):
    s = make_store(tmp_path / "w.zarr", n=300, avg_deg=4, feat=16, seed=2).path
    lrgi_ooc.layer(s, layer=1, residual=True, **TRAIN)
    lrgi_ooc.layer(s, layer=2, residual=True, **{**TRAIN, "dim": 8})
    assert load_block(GraphStore(s), 2)[1]["residual"] is False


def test_train_e2e_refuses_the_flag(tmp_path, capsys):
    s = make_store(tmp_path / "e.zarr", n=200, avg_deg=4, feat=8, seed=1).path
    assert main(["train-e2e", str(s), "--num-layers", "2", "--residual"]) == 2
    assert "--residual" in capsys.readouterr().err
