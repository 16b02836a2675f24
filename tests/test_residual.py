"""`--residual`: layer l >= 2 is trained as the paper's layer f and writes s (H + f(H))
(`--residual-scale s`; the fixture's s = 0.5 multiplies exactly). Every embed path (in
memory, streamed; Dask runs the same task functions), `encode` and the PyG encoder give the
same table, and the paper's layer (no residual) keeps its configuration hash."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lrgi_ooc
from graphs import edge_index_of, make_store, table
from lrgi_ooc.cli.main import main
from lrgi_ooc.nn.blockweights import residual_weights
from lrgi_ooc.nn.trained import load_block, load_weights
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.embed import embed_layer
from lrgi_ooc.store.layout import GraphStore, embed_stage, embeddings_key, weights_key

TRAIN = dict(dim=16, heads=2, batch_size=64, fanout="4,3", steps=4, device="cpu")
S = 0.5
MIX = [(1.0, 1.0), (S, S), (S, S)]          # (a, b) of a H + b f(H), layers 1..3


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("residual")
    s = make_store(d / "g.zarr", n=700, avg_deg=5, feat=16, seed=3, hubs=3).path
    torch.set_num_threads(1)
    for layer in (1, 2, 3):
        lrgi_ooc.layer(s, layer=layer, residual=True, residual_scale=S, **TRAIN)
    return s


def test_flag_applies_from_layer_2_and_is_recorded(store):
    g = GraphStore(store)
    assert [load_block(g, layer)[1]["residual"] for layer in (1, 2, 3)] == [False, True, True]
    assert [load_block(g, layer)[1]["residual_weights"] for layer in (1, 2, 3)] == MIX
    assert g.group_attrs(weights_key(2))["residual_weights"] == [S, S]
    assert g.stage_record("train/2")["config"]["residual"] is True
    assert g.stage_record("train/2")["config"]["residual_scale"] == S
    assert "residual_scale" not in g.stage_record("train/1")["config"]


def test_table_is_the_scaled_sum_of_the_input_and_the_block_output(store):
    """Layer 2's table is s (layer 1's + the plain block's output): the same weights with
    the residual switched off give that output (to float32 rounding)."""
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
    np.testing.assert_allclose(full, (x.numpy() + plain) * S, atol=1e-5)
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
    np.testing.assert_allclose(table(store, embeddings_key(2)) / S - table(store, embeddings_key(1)),
                               table(plain, embeddings_key(2)), atol=1e-5)


def test_deeper_tables_weigh_older_layers_less(store):
    """Layer 3's table is s^2 H^1 + s^2 f_2(H^1) + s f_3(H^2): each layer's output counts s
    times less for every layer above it."""
    g = GraphStore(store)
    ei = torch.from_numpy(edge_index_of(g))
    h = [torch.from_numpy(np.array(g.table(layer), np.float32)) for layer in (1, 2)]
    outs = []
    for layer, x in zip((2, 3), h):
        block, _ = load_weights(g, layer)
        block.residual = False
        with torch.no_grad():
            outs.append(block(x, ei).numpy())
    np.testing.assert_allclose(table(store, embeddings_key(3)),
                               S * S * (h[0].numpy() + outs[0]) + S * outs[1], atol=1e-5)


def test_damping_weighs_deeper_outputs_less_and_keeps_the_spread():
    """From layer 3 on the output enters at D times its input's weight, rescaled so that
    two parts of one spread keep the spread of s (H + f(H)); layer 2 and D = 1 are s (H +
    f(H))."""
    assert residual_weights(2, S, 0.5) == (S, S)
    assert residual_weights(3, S, 1.0) == (S, S)
    a, b = residual_weights(3, 2 ** -0.5, 0.5)
    assert b == pytest.approx(0.5 * a) and a * a + b * b == pytest.approx(1.0)
    a, b = residual_weights(4, S, 0.25)
    assert b == pytest.approx(0.25 * a) and a * a + b * b == pytest.approx(2 * S * S)


def test_a_damped_layer_trains_the_same_weights_and_writes_the_damped_table(store, tmp_path):
    """Layer 3 with --residual-damping 0.5 on a copy of the store: the same weights as the
    undamped layer (the loss sees f(H)); its table is a H^2 + b f_3(H^2), (a, b) recorded
    in layers/3/weights; the PyG encoder applies the same weights."""
    d = shutil.copytree(store, tmp_path / "d.zarr")
    shutil.copytree(str(store) + ".runs", str(d) + ".runs")
    lrgi_ooc.layer(d, layer=3, residual=True, residual_scale=S, residual_damping=0.5, **TRAIN)
    g, a_b = GraphStore(d), residual_weights(3, S, 0.5)
    assert tuple(g.group_attrs(weights_key(3))["residual_weights"]) == a_b
    assert g.stage_record("train/3")["config"]["residual_damping"] == 0.5
    assert "residual_damping" not in g.stage_record("train/2")["config"]
    for name in ("lin", "att_src", "att_dst", "bias", "skip"):
        np.testing.assert_array_equal(getattr(load_block(g, 3)[0], name),
                                      getattr(load_block(GraphStore(store), 3)[0], name))
    block, _ = load_weights(g, 3)
    block.residual = False
    x = torch.from_numpy(np.array(g.table(2), np.float32))
    ei = torch.from_numpy(edge_index_of(g))
    with torch.no_grad():
        plain = block(x, ei).numpy()
    want = a_b[0] * x.numpy() + a_b[1] * plain
    np.testing.assert_allclose(table(d, embeddings_key(3)), want, atol=1e-5)
    assert np.abs(table(d, embeddings_key(3)) - table(store, embeddings_key(3))).max() > 1e-3
    with torch.no_grad():
        out = lrgi_ooc.load_encoder(d)(torch.from_numpy(np.array(g.table(0), np.float32)), ei)
    np.testing.assert_allclose(out.numpy(), want, atol=1e-4)


def test_scale_one_adds_the_block_output(tmp_path):
    s = make_store(tmp_path / "s.zarr", n=300, avg_deg=4, feat=16, seed=4).path
    for layer in (1, 2):
        lrgi_ooc.layer(s, layer=layer, residual=True, residual_scale=1.0, **TRAIN)
    g = GraphStore(s)
    block, _ = load_weights(g, 2)
    assert block.residual_weights == (1.0, 1.0)
    block.residual = False
    x = torch.from_numpy(np.array(g.table(1), np.float32))
    with torch.no_grad():
        plain = block(x, torch.from_numpy(edge_index_of(g))).numpy()
    np.testing.assert_allclose(table(s, embeddings_key(2)), x.numpy() + plain, atol=1e-5)
    assert "residual_scale" not in g.stage_record("train/2")["config"]   # 1: the old hash


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
    assert [tuple(layer.residual_weights.tolist()) for layer in enc.layers] == \
        [tuple(torch.tensor(m).tolist()) for m in MIX]
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


def test_a_saved_encoder_loads_with_its_weights(store):
    """A hand-built encoder takes the state dict with its residual weights; one saved before
    they existed (no residual_weights buffers) loads as plain sums."""
    from lrgi_ooc.pyg.encoder import LRGIEncoder
    enc = lrgi_ooc.load_encoder(store)
    state = enc.state_dict()
    again = LRGIEncoder(enc.in_dim, [16, 16, 16], 2, residual=[False, True, True])
    again.load_state_dict(state)
    for layer, mix in zip(again.layers, MIX):
        np.testing.assert_allclose(layer.residual_weights.numpy(), mix, rtol=1e-7)
    old = {k: v for k, v in state.items() if not k.endswith("residual_weights")}
    again.load_state_dict(old)
    assert [layer.residual_weights.tolist() for layer in again.layers] == [[1.0, 1.0]] * 3


def test_off_keeps_the_papers_hash_and_weights():
    """Stores trained before the option existed keep their configuration hash (their
    layer 1 always; their deeper layers under --no-residual)."""
    assert "residual" not in TrainConfig(residual=False).result_fields(2)
    on = TrainConfig(residual=True)
    assert on.result_fields(2)["residual"] is True
    assert "residual" not in on.result_fields(1)      # layer 1 has none
    assert "residual" not in on.result_fields()       # nor train-e2e
    assert "residual_scale" not in TrainConfig(residual_scale=1.0).result_fields(2)
    assert "residual_scale" not in TrainConfig(residual=False, residual_scale=S
                                               ).result_fields(2)
    assert "residual_scale" not in TrainConfig(residual_scale=S).result_fields(1)
    assert TrainConfig(residual_scale=S).result_fields(2)["residual_scale"] == S
    assert "residual_damping" not in TrainConfig().result_fields(3)          # 1: the old hash
    assert "residual_damping" not in TrainConfig(residual_damping=0.5).result_fields(2)
    assert "residual_damping" not in TrainConfig(residual=False, residual_damping=0.5
                                                 ).result_fields(3)
    assert TrainConfig(residual_damping=0.5).result_fields(3)["residual_damping"] == 0.5


def test_a_change_of_width_has_no_residual(tmp_path):
    s = make_store(tmp_path / "w.zarr", n=300, avg_deg=4, feat=16, seed=2).path
    lrgi_ooc.layer(s, layer=1, residual=True, **TRAIN)
    lrgi_ooc.layer(s, layer=2, residual=True, **{**TRAIN, "dim": 8})
    assert load_block(GraphStore(s), 2)[1]["residual"] is False


def test_train_e2e_refuses_the_flag(tmp_path, capsys):
    s = make_store(tmp_path / "e.zarr", n=200, avg_deg=4, feat=8, seed=1).path
    assert main(["train-e2e", str(s), "--num-layers", "2", "--residual"]) == 2
    assert "--residual" in capsys.readouterr().err
    assert main(["train-e2e", str(s), "--num-layers", "2", "--residual-scale", "0.5"]) == 2
    assert "--residual-scale" in capsys.readouterr().err
    assert main(["train-e2e", str(s), "--num-layers", "2", "--residual-damping", "0.5"]) == 2
    assert "--residual-damping" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["flag", "config"])
@pytest.mark.parametrize("what", ["scale", "damping"])
def test_a_scale_that_is_not_positive_is_refused(tmp_path, capsys, how, what):
    s = make_store(tmp_path / "z.zarr", n=200, avg_deg=4, feat=8, seed=1).path
    conf = tmp_path / "c.toml"
    conf.write_text(f"[train]\nresidual_{what} = -1\n")
    args = [f"--residual-{what}", "0"] if how == "flag" else ["--config", str(conf)]
    assert main(["layer", str(s), "--layer", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "residual" in err and what in err and "positive" in err
    assert len(err.splitlines()) == 1
    assert not GraphStore(s).stage_complete("train/1")
