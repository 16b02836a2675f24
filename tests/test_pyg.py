"""PyTorch / PyG interop (lrgi_ooc.pyg): the encoder reproduces the stored tables, the
FeatureStore / GraphStore adapters return exactly the stored rows and edges, read-only."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data.feature_store import TensorAttr
from torch_geometric.data.graph_store import EdgeAttr, EdgeLayout
from torch_geometric.nn import GATConv

import lrgi_ooc
from conftest import REPO, cli_env
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.nn.trained import load_weights
from lrgi_ooc.pyg import (LRGIEncoder, StoreFeatureStore, StoreGraphStore,
                          edge_index_from_store, load_encoder)
from lrgi_ooc.pyg.stores import EDGE_TYPE, csc_to_csr
from lrgi_ooc.store.layout import GraphStore

N, F_IN, DIM, HEADS = 300, 6, 8, 2


def _inputs(d, seed: int, n: int = N, e: int = 1500, self_loops: int = 20):
    rng = np.random.default_rng(seed)
    ei = rng.integers(0, n, size=(2, e)).astype(np.int64)
    ei[1, :self_loops] = ei[0, :self_loops]                # some self loops
    ei[:, -30:] = ei[:, :30]                               # and duplicates
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "e.npy", ei)
    np.save(d / "x.npy", rng.standard_normal((n, F_IN)).astype(np.float32))
    return d / "e.npy", d / "x.npy"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> GraphStore:
    """An undirected store with two trained and embedded layers (a few steps each)."""
    d = tmp_path_factory.mktemp("pyg")
    edges, x = _inputs(d / "in", seed=0)
    lrgi_ooc.preprocess(edges=edges, features=x, undirected=True, out=d / "g.zarr")
    for layer in (1, 2):
        lrgi_ooc.layer(d / "g.zarr", layer=layer, dim=DIM, heads=HEADS, steps=3, device="cpu")
    return GraphStore(d / "g.zarr")


@pytest.fixture(scope="module")
def directed(tmp_path_factory) -> GraphStore:
    """A directed store (self loops and duplicates kept), no layer trained."""
    d = tmp_path_factory.mktemp("pyg-directed")
    edges, x = _inputs(d / "in", seed=1)
    lrgi_ooc.preprocess(edges=edges, features=x, keep_self_loops=True, keep_duplicates=True,
                        out=d / "g.zarr")
    return GraphStore(d / "g.zarr")


def _csr_arrays(s: GraphStore) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(s.indptr(), dtype=np.int64), np.asarray(s.indices(), dtype=np.int64)


def _coo(s: GraphStore) -> tuple[np.ndarray, np.ndarray]:
    indptr, indices = _csr_arrays(s)
    return indices, np.repeat(np.arange(s.num_nodes), np.diff(indptr))


# ---------------------------------------------------------------------- the encoder
def test_encoder_reproduces_every_stored_table(trained):
    enc = load_encoder(trained.path)
    assert isinstance(enc, torch.nn.Module) and enc.layer_numbers == [1, 2]
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert all(isinstance(layer.conv, GATConv) for layer in enc.layers)
    x = torch.from_numpy(np.array(trained.table(0)))
    ei = edge_index_from_store(trained)
    assert ei.dtype == torch.int64 and ei.shape == (2, trained.num_edges)
    outs = enc(x, ei, return_all=True)
    assert len(outs) == 2
    for layer, out in zip((1, 2), outs):
        np.testing.assert_allclose(out.numpy(), np.asarray(trained.table(layer)),
                                   rtol=1e-5, atol=1e-5)
    assert torch.equal(enc(x, ei), outs[-1])
    # a normal module: its state dict rebuilds it without the store (the residual flags
    # included), it moves and casts
    assert [layer.residual for layer in enc.layers] == [False, True]
    again = LRGIEncoder(F_IN, [DIM, DIM], heads=HEADS)
    again.load_state_dict(enc.state_dict())
    assert torch.equal(again.eval()(x, ei), outs[-1])
    dbl = load_encoder(trained).to("cpu").double()
    np.testing.assert_allclose(dbl(x.double(), ei).numpy(), outs[-1].numpy(), atol=1e-5)
    # the public API returns the same encoder
    assert torch.equal(lrgi_ooc.load_encoder(trained.path)(x, ei), outs[-1])


def test_single_layer_encoder(trained):
    x = torch.from_numpy(np.array(trained.table(0)))
    ei = edge_index_from_store(trained.path)
    for layers in ([1], 1):
        enc = load_encoder(str(trained.path), layers=layers)
        assert len(enc.layers) == 1 and enc.out_dim == DIM and enc.in_dim == F_IN
        np.testing.assert_allclose(enc(x, ei).numpy(), np.asarray(trained.table(1)),
                                   rtol=1e-5, atol=1e-5)


def test_encoder_on_a_new_graph_equals_a_manual_gatconv_forward(trained):
    rng = np.random.default_rng(5)
    m = 60
    x = torch.from_numpy(rng.standard_normal((m, F_IN)).astype(np.float32))
    ei = torch.from_numpy(rng.integers(0, m, size=(2, 250)))
    ei[1, :10] = ei[0, :10]                                  # self loops, replaced by GAT
    ei = torch.cat([ei, ei[:, :20]], dim=1)                  # duplicate edges count twice
    got = load_encoder(trained)(x, ei, return_all=True)
    h = x
    for layer, out in zip((1, 2), got):
        block, _ = load_weights(trained, layer)
        conv = GATConv(h.size(1), DIM // HEADS, heads=HEADS)
        conv.load_state_dict(block.conv.state_dict())
        with torch.no_grad():
            want = F.elu(conv(h, ei) + h @ block.skip.weight.t())
            if block.residual:                              # layer 2: --residual
                a, b = block.residual_weights
                want = b * want + a * h
            np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
            # and the training block's own attention (an independent implementation)
            np.testing.assert_allclose(out.numpy(), block(h, ei).numpy(), atol=1e-5)
        h = want


def test_bad_layers_are_input_errors(trained, directed):
    for layers in ([2], [1, 3], [], [1, 2, 3], [0, 1]):
        with pytest.raises(InputError) as e:
            load_encoder(trained, layers)
        assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="layer 3"):
        load_encoder(trained, [1, 2, 3])
    with pytest.raises(InputError, match="no trained layer"):
        load_encoder(directed)
    with pytest.raises(InputError):
        load_encoder(trained.path.parent / "missing.zarr")


# ---------------------------------------------------------------------- FeatureStore
def test_feature_store_serves_exactly_the_stored_rows(trained):
    fs = StoreFeatureStore(trained.path)
    attrs = fs.get_all_tensor_attrs()
    assert [(a.group_name, a.attr_name) for a in attrs] == \
        [("node", "x"), ("node", "layer_1"), ("node", "layer_2")]
    rng = np.random.default_rng(2)
    idx = torch.from_numpy(rng.integers(0, N, 40))           # unsorted, with repeats
    for name, layer in (("x", 0), ("layer_1", 1), ("layer_2", 2)):
        table = np.asarray(trained.table(layer))
        want = table[idx.numpy()]
        for got in (fs["node", name, idx], fs.get_tensor("node", name, idx),
                    fs.get_tensor(group_name=None, attr_name=name, index=idx),
                    fs["node", name][idx], fs.get_tensor(TensorAttr("node", name, idx))):
            assert isinstance(got, torch.Tensor)
            np.testing.assert_array_equal(got.numpy(), want)
        np.testing.assert_array_equal(fs["node", name, 10:25].numpy(), table[10:25])
        np.testing.assert_array_equal(fs["node", name, 7].numpy(), table[7])
        mask = torch.zeros(N, dtype=torch.bool)
        mask[idx] = True
        np.testing.assert_array_equal(fs["node", name, mask].numpy(), table[mask.numpy()])
        whole = fs.get_tensor("node", name, None)
        assert isinstance(whole, np.ndarray) and not whole.flags.writeable
        np.testing.assert_array_equal(whole, table)
        assert fs.get_tensor_size("node", name) == table.shape
        assert fs.get_tensor_size("node", name, idx) == (40, table.shape[1])
        assert fs.get_tensor_size("node", name, slice(10, 25)) == (15, table.shape[1])
        assert fs.get_tensor_size("node", name, mask) == (int(mask.sum()), table.shape[1])
        # a returned tensor is a copy: writing it leaves the store alone
        fs["node", name, idx].fill_(7.0)
        np.testing.assert_array_equal(np.asarray(trained.table(layer))[idx.numpy()], want)
    both = fs.multi_get_tensor([TensorAttr("node", "x", idx), TensorAttr("node", "layer_2", idx)])
    np.testing.assert_array_equal(both[1].numpy(), np.asarray(trained.table(2))[idx.numpy()])
    for name in ("layer_3", "layer_0", "y", "layerx"):
        assert fs.get_tensor_size("node", name) is None
        with pytest.raises(KeyError):
            fs["node", name, idx]
    with pytest.raises(KeyError):
        fs["paper", "x", idx]


# ---------------------------------------------------------------------- GraphStore
def test_graph_store_serves_exactly_the_stored_edges(directed):
    gs = StoreGraphStore(directed.path)
    n = directed.num_nodes
    attrs = gs.get_all_edge_attrs()
    assert {a.layout for a in attrs} == {EdgeLayout.CSC, EdgeLayout.COO, EdgeLayout.CSR}
    assert all(a.edge_type == EDGE_TYPE and a.size == (n, n) for a in attrs)
    assert {a.layout: a.is_sorted for a in attrs} == \
        {EdgeLayout.CSC: True, EdgeLayout.COO: True, EdgeLayout.CSR: False}
    indptr, indices = _csr_arrays(directed)
    src, dst = _coo(directed)
    row, colptr = gs.get_edge_index(EDGE_TYPE, "csc")
    assert row.dtype == colptr.dtype == torch.int64
    np.testing.assert_array_equal(row.numpy(), indices)
    np.testing.assert_array_equal(colptr.numpy(), indptr)
    r, c = gs.get_edge_index(EDGE_TYPE, "coo")
    np.testing.assert_array_equal(r.numpy(), src)
    np.testing.assert_array_equal(c.numpy(), dst)
    assert not np.array_equal(src, dst)   # the test graph is directed, CSR must transpose
    rowptr, col = gs.get_edge_index(EDGE_TYPE, "csr")
    order = np.lexsort((dst, src))
    want_ptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    np.testing.assert_array_equal(rowptr.numpy(), want_ptr)
    np.testing.assert_array_equal(col.numpy(), dst[order])
    assert not np.array_equal(rowptr.numpy(), indptr)
    # attribute objects, None edge type, PyG's own conversion API
    a, b = gs.get_edge_index(EdgeAttr(None, "csc", size=(n, n)))
    np.testing.assert_array_equal(a.numpy(), indices)
    row_d, col_d, perm_d = gs.csc()
    assert torch.equal(row_d[EDGE_TYPE], row) and torch.equal(col_d[EDGE_TYPE], colptr)
    assert perm_d[EDGE_TYPE] is None
    row_d, col_d, _ = gs.csr()
    assert torch.equal(row_d[EDGE_TYPE], rowptr) and torch.equal(col_d[EDGE_TYPE], col)
    with pytest.raises(KeyError):
        gs.get_edge_index(("node", "cites", "node"), "csc")
    with pytest.raises(KeyError):
        gs.get_edge_index(EDGE_TYPE, "csc", size=(n + 1, n))


def test_symmetrized_store_csr_is_the_csc(trained):
    gs = StoreGraphStore(trained)
    assert gs.symmetrized
    indptr, indices = _csr_arrays(trained)
    rowptr, col = gs.get_edge_index(EDGE_TYPE, "csr")
    np.testing.assert_array_equal(rowptr.numpy(), indptr)
    np.testing.assert_array_equal(col.numpy(), indices)
    # the shortcut is what the transposition would give
    tp, tc = csc_to_csr(trained.indptr(), trained.indices(), trained.num_nodes)
    assert torch.equal(tp, rowptr) and torch.equal(tc, col)


def test_writes_are_refused(trained):
    fs, gs = StoreFeatureStore(trained.path), StoreGraphStore(trained.path)
    before = np.array(trained.table(1))
    x = torch.zeros(N, DIM)
    with pytest.raises(InputError, match="read-only"):
        fs["node", "layer_1", None] = x
    with pytest.raises(InputError, match="read-only"):
        fs.put_tensor(x, "node", "new", None)
    with pytest.raises(InputError, match="read-only"):
        fs.remove_tensor("node", "layer_1", None)
    with pytest.raises(InputError, match="read-only"):
        del fs["node", "x"]
    with pytest.raises(InputError, match="read-only"):
        fs.update_tensor(x, "node", "layer_1", None)
    ei = (torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(InputError, match="read-only"):
        gs.put_edge_index(ei, EDGE_TYPE, "coo")
    with pytest.raises(InputError, match="read-only"):
        gs.remove_edge_index(EDGE_TYPE, "csc")
    with pytest.raises(ValueError):
        fs.get_tensor(TensorAttr("node", "x"))        # index unset: PyG refuses it
    np.testing.assert_array_equal(np.asarray(trained.table(1)), before)


# ---------------------------------------------------------------------- docs/api.md
def test_docs_pyg_example_runs(tmp_path):
    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python-pyg\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "docs/api.md: expected one ```python-pyg block"
    env = dict(cli_env(), TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(tmp_path)          # it worked in the tmp dir
