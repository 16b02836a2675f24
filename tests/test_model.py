"""The LRGI block, propagation, predictors and loss (lrgi_ooc.nn.model) against LRGI.md."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv

from lrgi_ooc.sample.loader import BatchLoader
from lrgi_ooc.nn.model import (LRGIBlock, LRGILayer, Predictor, lrgi_loss, propagate,
                            propagate_full)
from lrgi_ooc.sample.onehop import OneHopSampler
from test_sampler import csr_from_edges, powerlaw_graph

torch.set_num_threads(1)


def small_graph(n=60, m=240, seed=0, max_deg=None):
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, n, m), rng.integers(0, n, m)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if max_deg is not None:                     # keep at most max_deg in-edges per node
        order = np.argsort(dst, kind="stable")
        src, dst = src[order], dst[order]
        rank = np.arange(dst.size) - np.searchsorted(dst, dst)
        src, dst = src[rank < max_deg], dst[rank < max_deg]
    indptr, indices = csr_from_edges(src, dst, n)
    dst_full = np.repeat(np.arange(n), np.diff(indptr))
    ei = torch.from_numpy(np.stack([indices.astype(np.int64), dst_full]))
    return indptr, indices, ei


def test_block_full_graph_equals_plain_gatconv():
    torch.manual_seed(0)
    _, _, ei = small_graph()
    x = torch.randn(60, 16, dtype=torch.float64)
    block = LRGIBlock(16, 32, heads=4).double()
    ref = GATConv(16, 8, heads=4, concat=True, dropout=0.0, add_self_loops=True,
                  negative_slope=0.2).double()
    ref.load_state_dict(block.conv.state_dict())
    want = F.elu(ref(x, ei) + x @ block.skip.weight.T)
    assert torch.allclose(block(x, ei, 60), want, atol=1e-6, rtol=0)
    assert torch.allclose(block(x, ei), want, atol=1e-6, rtol=0)


def test_sampled_block_equals_full_graph_when_degrees_fit():
    """With every in-degree <= k_conv the sampled bipartite layer sees the full neighbourhood."""
    torch.manual_seed(1)
    indptr, indices, ei = small_graph(80, 400, seed=1, max_deg=4)
    x = torch.randn(80, 8, dtype=torch.float64)
    block = LRGIBlock(8, 16, heads=2).double()
    full = block(x, ei, 80)
    b = OneHopSampler(indptr, indices, (3, 4)).sample(np.arange(0, 80, 5), 0, 0)
    local = torch.from_numpy(np.stack([b.conv_src, b.conv_dst]))
    out = block(x[torch.from_numpy(b.nodes)], local, b.num_targets)
    assert out.shape == (b.num_targets, 16)
    assert torch.allclose(out, full[torch.from_numpy(b.nodes[:b.num_targets])], atol=1e-10)


@pytest.mark.parametrize("norm", ["mean", "sym"])
def test_sampled_propagation_equals_full_when_degrees_fit(norm):
    indptr, indices, ei = small_graph(50, 200, seed=2, max_deg=6)
    u_all = torch.randn(50, 5, dtype=torch.float64)
    b = OneHopSampler(indptr, indices, (6, 2), norm=norm).sample(np.arange(50), 0, 0)
    u = u_all[torch.from_numpy(b.nodes[:b.num_targets])]
    v = propagate(u, torch.from_numpy(b.prop_src), torch.from_numpy(b.prop_dst),
                  torch.from_numpy(b.prop_weight), b.seeds.size)
    want = propagate_full(u_all, ei, 50, norm)
    assert torch.allclose(v, want, atol=1e-6)          # weights are float32


def test_sym_sampled_propagation_is_unbiased():
    indptr, indices = powerlaw_graph(300, 20, seed=3)
    dst = np.repeat(np.arange(300), np.diff(indptr))
    ei = torch.from_numpy(np.stack([indices.astype(np.int64), dst]))
    u_all = torch.randn(300, 3, dtype=torch.float64)
    want = propagate_full(u_all, ei, 300, "sym")
    s = OneHopSampler(indptr, indices, (4, 0), norm="sym")
    acc = torch.zeros_like(want)
    reps = 1600                                       # error ~ 1/sqrt(reps): 0.034 here
    for step in range(reps):
        b = s.sample(np.arange(300), 0, step)
        acc += propagate(u_all[torch.from_numpy(b.nodes[:b.num_targets])],
                         torch.from_numpy(b.prop_src), torch.from_numpy(b.prop_dst),
                         torch.from_numpy(b.prop_weight).double(), 300)
    err = (acc / reps - want).abs().mean() / want.abs().mean()
    assert err < 0.05


def test_propagate_full_against_dense():
    _, _, ei = small_graph(40, 150, seed=4)
    u = torch.randn(40, 3, dtype=torch.float64)
    A = np.zeros((40, 40))
    A[ei[1].numpy(), ei[0].numpy()] = 1.0             # A[i, j] = 1 if j -> i
    deg = A.sum(1)
    assert (deg == 0).any()                            # isolated targets get 0
    mean = A / np.maximum(deg, 1)[:, None]
    inv = 1 / np.sqrt(np.maximum(deg, 1))
    sym = inv[:, None] * A * inv[None, :]
    un = u.numpy()
    assert np.allclose(propagate_full(u, ei, 40, "mean").numpy(), mean @ un)
    assert np.allclose(propagate_full(u, ei, 40, "sym", K=2).numpy(), sym @ sym @ un)
    assert np.allclose(propagate_full(u, ei, 40, "mean").numpy()[deg == 0], 0)


def test_propagate_isolated_seed_gets_zero():
    u = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    v = propagate(u, torch.tensor([2, 3]), torch.tensor([0, 0]), torch.tensor([0.5, 0.5]), 2)
    assert torch.equal(v, torch.tensor([[7.5, 8.5, 9.5], [0.0, 0.0, 0.0]]))


def _np_terms(u, v, hu, hv):
    """Hand-written LRGI.md formulas (hu = h_phi(u), hv = h_psi(v))."""
    B, D = u.shape
    rec = ((hv - u) ** 2).sum() / (B * D) + ((hu - v) ** 2).sum() / (B * D)

    def var_cov(z):
        zc = z - z.mean(0)
        C = np.zeros((D, D))
        for d in range(D):
            for e in range(D):
                C[d, e] = sum(zc[b, d] * zc[b, e] for b in range(B)) / (B - 1)
        var = sum((C[d, d] - 1) ** 2 for d in range(D)) / D
        cov = sum(C[d, e] ** 2 for d in range(D) for e in range(D) if d != e) / D
        return var, cov
    (vu, cu), (vv, cv) = var_cov(u), var_cov(v)
    return rec, vu + vv, cu + cv


def test_loss_terms_match_formulas():
    torch.manual_seed(5)
    B, D = 7, 4
    u = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    v = (torch.randn(B, D, dtype=torch.float64) * 0.3 + 0.1).requires_grad_(True)
    h_phi, h_psi = Predictor(D, hid=2).double(), Predictor(D, hid=2).double()
    lam = (25.0, 10.0, 1.0)
    loss, terms = lrgi_loss(u, v, h_phi, h_psi, lam)
    with torch.no_grad():
        rec, var, cov = _np_terms(u.numpy(), v.numpy(), h_phi(u).numpy(), h_psi(v).numpy())
    assert terms["rec"] == pytest.approx(rec, rel=1e-12)
    assert terms["var"] == pytest.approx(var, rel=1e-12)
    assert terms["cov"] == pytest.approx(cov, rel=1e-12)
    assert terms["loss"] == pytest.approx(25 * rec + 10 * var + cov, rel=1e-12)
    assert float(loss) == terms["loss"]
    assert set(terms) == {"loss", "rec", "var", "cov"}
    assert all(isinstance(t, float) for t in terms.values())
    loss.backward()                                    # no stop-gradient on either view
    assert u.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert all(p.grad is not None for p in list(h_phi.parameters()) + list(h_psi.parameters()))
    with pytest.raises(ValueError):
        lrgi_loss(u[:1], v[:1], h_phi, h_psi)


def test_predictor_shape():
    p = Predictor(16, hid=8)
    assert [m.weight.shape for m in p.net if isinstance(m, torch.nn.Linear)] == [
        (128, 16), (16, 128)]


def test_layer_trains_on_loader_batches():
    torch.manual_seed(6)
    indptr, indices = powerlaw_graph(600, 8, seed=6)
    x = np.random.default_rng(6).standard_normal((600, 10)).astype(np.float32)
    s = OneHopSampler(indptr, indices, (10, 5), seed=1)
    layer = LRGILayer(10, 16, heads=4, hid=2)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    loader = BatchLoader(s, x, np.arange(600), 128, prefetch=2)
    losses = []
    with loader:
        for epoch in range(6):
            for tb in loader.iter_epoch(epoch):
                u, v = layer(tb)
                assert u.shape == v.shape == (tb.num_seeds, 16)
                loss, terms = lrgi_loss(u, v, layer.h_phi, layer.h_psi)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(terms["loss"])
    assert np.isfinite(losses).all()
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])     # 29.4 -> 20.2 when written
