"""The end-to-end baseline: multi-hop sampler (lrgi_ooc.sample.multihop), encoder and train-e2e."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from graphs import edge_index_of, make_store
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.endtoend import EndToEndEncoder, MultiHopLoader
from lrgi_ooc.sample.loader import BatchLoader
from lrgi_ooc.nn.model import LRGILayer, lrgi_loss
from lrgi_ooc.sample.multihop import MultiHopSampler, depth_fanouts
from lrgi_ooc.sample.onehop import Batch, OneHopSampler
from lrgi_ooc.store.layout import GraphStore
from lrgi_ooc.nn.trained import load_weights
from lrgi_ooc.stages.train import train_layer
from test_model import small_graph
from test_sampler import check_batch, edge_keys, powerlaw_graph

torch.set_num_threads(1)
FIELDS = ("seeds", "nodes", "conv_src", "conv_dst", "prop_src", "prop_dst", "prop_weight")


def test_depth_fanouts():
    assert depth_fanouts(1) == (10, 5)
    assert depth_fanouts(3) == (10, 10, 10, 5)
    with pytest.raises(ValueError):
        depth_fanouts(0)


def test_one_layer_is_the_layerwise_sampler():
    indptr, indices = powerlaw_graph(3000, 8, seed=1)
    one = OneHopSampler(indptr, indices, (10, 5), seed=7)
    multi = MultiHopSampler(indptr, indices, depth_fanouts(1), seed=7)
    assert multi.max_rows(256) == one.max_rows(256) == min(256 * 11 * 6, 3000)
    assert multi.max_rows(32) == 32 * 11 * 6
    for step, seeds in enumerate(one.epoch_batches(np.arange(3000), 256, 0)[:3]):
        a, b = one.sample(seeds, 0, step), multi.sample(seeds, 0, step)
        for f in FIELDS:
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert a.num_targets == b.num_targets
        assert list(b.hop_sizes) == [a.num_targets, a.num_nodes]
        assert b.num_layers == 1 and b.layer_edges(1)[2] == a.num_targets


def check_hops(b, indptr, indices, fanouts):
    """Every hop's contract: prefixes, fanout bounds, edges in the CSR, no repeats."""
    kp, ks = fanouts[0], fanouts[1:]
    sizes, n = b.hop_sizes, b.nodes.size
    deg = np.diff(indptr)
    keys = edge_keys(indptr, indices)
    # hop 1 (with the propagation hop) is a layer-wise batch on the prefix S_1
    check_batch(Batch(b.seeds, b.nodes[:sizes[1]], b.num_targets, b.conv_src, b.conv_dst,
                      b.prop_src, b.prop_dst, b.prop_weight), indptr, indices, kp, ks[0])
    assert sizes[0] == b.num_targets and sizes[-1] == n and np.all(np.diff(sizes) >= 0)
    assert np.unique(b.nodes).size == n
    bound = b.seeds.size * (1 + kp)
    for j, k in enumerate(ks):
        src, dst = b.hop_src[j], b.hop_dst[j]
        bound *= 1 + k
        assert sizes[j + 1] <= bound
        assert dst.size == 0 or (dst.min() >= 0 and dst.max() < sizes[j])
        assert src.size == 0 or (src.min() >= 0 and src.max() < sizes[j + 1])
        assert np.array_equal(np.bincount(dst, minlength=sizes[j]),
                              np.minimum(deg[b.nodes[:sizes[j]]], k))
        assert np.unique(dst * n + src).size == dst.size
        assert np.isin(b.nodes[dst] * (indptr.size - 1) + b.nodes[src], keys).all()
        # S_j = S_{j-1} plus exactly the new sources of hop j
        new = set(b.nodes[sizes[j]:sizes[j + 1]].tolist())
        assert new == set(b.nodes[src].tolist()) - set(b.nodes[:sizes[j]].tolist())


@pytest.mark.parametrize("fanouts", [(4, 3, 3, 2), (10, 10, 5), (3, 0, 2)])
def test_hop_contract(fanouts):
    indptr, indices = powerlaw_graph(4000, 6, seed=2)
    s = MultiHopSampler(indptr, indices, fanouts, seed=1)
    for step, seeds in enumerate(s.epoch_batches(np.arange(4000), 64, 1)[:3]):
        b = s.sample(seeds, 1, step)
        assert b.num_layers == len(fanouts) - 1
        check_hops(b, indptr, indices, fanouts)


def test_deterministic_and_thread_independent():
    indptr, indices = powerlaw_graph(5000, 10, seed=4)
    s = MultiHopSampler(indptr, indices, depth_fanouts(3), seed=5)
    seeds = np.arange(0, 5000, 37)
    a = s.sample(seeds, 2, 3)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("b", s.sample(seeds, 2, 3)))
    th.start()
    th.join()
    b = MultiHopSampler(indptr, indices, depth_fanouts(3), seed=5).sample(seeds, 2, 3)
    for other in (out["b"], b):
        assert np.array_equal(a.nodes, other.nodes) and np.array_equal(a.hop_sizes,
                                                                       other.hop_sizes)
        for j in range(3):
            assert np.array_equal(a.hop_src[j], other.hop_src[j])
            assert np.array_equal(a.hop_dst[j], other.hop_dst[j])
    assert not np.array_equal(s.sample(seeds, 2, 4).nodes, a.nodes)
    assert not np.array_equal(
        MultiHopSampler(indptr, indices, depth_fanouts(3), seed=6).sample(seeds, 2, 3).nodes,
        a.nodes)


def test_rows_bound_and_growth():
    """Rows <= B (1+k_prop) (1+10)^(L-1) (1+5), capped at N; they grow with L."""
    n = 200_000
    indptr, indices = powerlaw_graph(n, 12, seed=3)
    seeds = np.random.default_rng(0).choice(n, 32, replace=False)
    rows = []
    for L in (1, 2, 3):
        s = MultiHopSampler(indptr, indices, depth_fanouts(L), seed=0)
        b = s.sample(seeds, 0, 0)
        bound = 32 * 11 * 11 ** (L - 1) * 6
        assert s.max_rows(32) == min(bound, n)
        assert b.num_nodes <= min(bound, n)
        rows.append(b.num_nodes)
    assert rows[0] < rows[1] < rows[2]
    assert rows[2] > 5 * rows[1] > 25 * rows[0] / 2      # ~10x a layer before saturating
    assert MultiHopSampler(indptr, indices, depth_fanouts(6)).max_rows(512) == n


def _stacked_full(blocks, x, ei):
    for blk in blocks:
        x = blk(x, ei, x.size(0))
    return x


@pytest.mark.parametrize("L", [1, 2, 3])
def test_encoder_equals_full_graph_when_degrees_fit(L):
    """Degrees <= every fanout: the sampled L-hop encoder sees the full L-hop neighbourhood."""
    torch.manual_seed(0)
    indptr, indices, ei = small_graph(90, 300, seed=3, max_deg=4)
    x = torch.randn(90, 6)
    model = EndToEndEncoder(6, 8, L, heads=2, hid=2)
    seeds = np.arange(0, 90, 4)
    sampler = MultiHopSampler(indptr, indices, (4,) * (L + 1), seed=1)
    loader = MultiHopLoader(sampler, x.numpy(), seeds, seeds.size, prefetch=0)
    tb = next(iter(loader))
    with torch.no_grad():
        u, _ = model(tb)
        want = _stacked_full(model.blocks, x, ei)[torch.from_numpy(tb.seeds)]
    assert torch.allclose(u, want, atol=1e-5)


def test_one_layer_loss_equals_layerwise():
    torch.manual_seed(2)
    indptr, indices, _ = small_graph(120, 400, seed=5, max_deg=5)
    x = np.random.default_rng(0).standard_normal((120, 6)).astype(np.float32)
    layer = LRGILayer(6, 8, heads=2, hid=2)
    e2e = EndToEndEncoder(6, 8, 1, heads=2, hid=2)
    e2e.blocks[0].load_state_dict(layer.block.state_dict())
    e2e.h_phi.load_state_dict(layer.h_phi.state_dict())
    e2e.h_psi.load_state_dict(layer.h_psi.state_dict())
    seeds = np.arange(120)
    one = BatchLoader(OneHopSampler(indptr, indices, (10, 5), seed=3), x, seeds, 40,
                      prefetch=0)
    multi = MultiHopLoader(MultiHopSampler(indptr, indices, (10, 5), seed=3), x, seeds, 40,
                           prefetch=0)
    for ta, tb in zip(one, multi):
        la, _ = lrgi_loss(*layer(ta), layer.h_phi, layer.h_psi)
        lb, _ = lrgi_loss(*e2e(tb), e2e.h_phi, e2e.h_psi)
        assert float(la.detach()) == float(lb.detach())


def test_train_e2e_cli_tables_equal_full_forward(tmp_path, run_cli):
    store = make_store(tmp_path / "g.zarr", n=300, avg_deg=5, feat=8)
    cfg = TrainConfig(dim=8, heads=2, steps=2, batch_size=64, hid=2, device="cpu")
    train_layer(store.path, 1, cfg)                       # a layer-wise record to replace
    assert "end_to_end" not in store.stage_record("train/1")["config"]
    rc, _, err = run_cli("train-e2e", store.path, "--num-layers", 2, "--dim", 16,
                         "--heads", 2, "--steps", 3, "--batch-size", 64, "--hid", 2,
                         "--device", "cpu")
    assert rc == 0, err
    store = GraphStore(store.path)
    for l in (1, 2):
        assert store.stage_record(f"train/{l}")["config"]["end_to_end"]
        assert store.stage_complete(f"embed/{l}")
    assert store.stage_complete("train/e2e")
    blocks = [load_weights(store, l)[0] for l in (1, 2)]
    ei = torch.from_numpy(edge_index_of(store))
    h = torch.from_numpy(np.array(store.table(0)))
    with torch.no_grad():
        for l, blk in enumerate(blocks, 1):
            h = blk(h, ei, h.size(0))
            assert np.allclose(np.asarray(store.table(l)), h.numpy(), atol=1e-5, rtol=0)
    rc, out, err = run_cli("evaluate", store.path, "--layer", 2, "--epochs", 5,
                           "--num-splits", 1)
    assert rc == 0, err
    rc, _, err = run_cli("train-e2e", store.path, "--num-layers", 2, "--layer", 1)
    assert rc == 2 and "--layer" in err
