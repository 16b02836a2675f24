"""embed: the full-neighbourhood write-back equals PyG's GATConv on the whole graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graphs import edge_index_of, make_store
from lrgi_ooc.stages.embed import block_forward
from lrgi_ooc.nn.model import LRGIBlock


@pytest.mark.parametrize("max_edges", [1 << 21, 37])
def test_block_forward_equals_full_graph_gatconv(tmp_path, max_edges):
    # hubs: a few nodes receive from a quarter of all edges, so with max_edges=37 single rows
    # are split into many pieces (online softmax) and pieces span several rows
    s = make_store(tmp_path / "g.zarr", n=300, avg_deg=5, feat=12, hubs=3)
    torch.manual_seed(0)
    block = LRGIBlock(12, 16, heads=4).eval()
    with torch.no_grad():
        block.conv.att_src.mul_(5)   # sharper attention: a wrong softmax would show
        block.conv.att_dst.mul_(5)
    x = torch.from_numpy(np.asarray(s.table(0)))
    ei = torch.from_numpy(edge_index_of(s))
    with torch.no_grad():
        ref = block(x, ei).numpy()
    targets = np.arange(s.num_nodes)
    got = block_forward(block, s.table(0), s.indptr(), s.indices(), targets, max_edges)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # an arbitrary subset of targets, in any order, gives the same rows
    sub = np.array([5, 0, 2, 1, 299, 42])
    got_sub = block_forward(block, s.table(0), s.indptr(), s.indices(), sub, max_edges)
    np.testing.assert_allclose(got_sub, ref[sub], rtol=1e-5, atol=1e-5)


def test_zero_degree_and_self_loops(tmp_path):
    from lrgi_ooc.csr.build import build_csr
    from lrgi_ooc.store.layout import FEATURES, GraphStore
    n = 6
    src = np.array([0, 1, 2, 2, 3])
    dst = np.array([1, 1, 2, 0, 0])          # 2->2 is a self loop; nodes 3,4,5 receive nothing
    s = GraphStore.create(tmp_path / "g.zarr", {"num_nodes": n, "num_edges": 0})
    build_csr(s, lambda: iter([(src, dst)]), n, source="t", remove_self_loops=False,
              workdir=tmp_path / "w")
    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    s.write_array(FEATURES, x)
    torch.manual_seed(1)
    block = LRGIBlock(4, 8, heads=2).eval()
    with torch.no_grad():
        ref = block(torch.from_numpy(x), torch.from_numpy(np.stack([src, dst]))).numpy()
    got = block_forward(block, s.table(0), s.indptr(), s.indices(), np.arange(n), 2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
