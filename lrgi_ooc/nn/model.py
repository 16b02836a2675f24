"""The LRGI layer, its parameter-free propagation, the predictors and the loss (docs LRGI.md).

The block runs on a sampled bipartite subgraph: sources are all n gathered rows, targets
are the first T local rows (seeds + propagation neighbours), so each layer's cost per batch
is bounded by the sampler's row bound, independent of N and of depth.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv

from lrgi_ooc.nn.attention import block_output



def residual_mix(out: Tensor, x: Tensor, weights: tuple[float, float]) -> Tensor:
    """b * out + a * x, (a, b) = `weights`: a residual table's function in torch (the numpy
    paths: `blockweights.mix_residual`, same order); the plain sum (1, 1) is one addition."""
    a, b = weights
    return (out if b == 1.0 else out * b) + (x if a == 1.0 else x * a)


class LRGIBlock(nn.Module):
    """f(H)_i = ELU(GAT(H)_i + W_skip H_i); with `residual`, b f(H)_i + a H_i, (a, b) =
    `residual_weights`: the function of a `--residual` layer's table (training optimises
    the loss on f(H); docs/cli.md)."""

    def __init__(self, in_dim: int, dim: int, heads: int = 4, residual: bool = False,
                 residual_weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if residual and in_dim != dim:
            raise ValueError(f"a residual block needs in_dim ({in_dim}) == dim ({dim})")
        self.in_dim, self.dim, self.heads = in_dim, dim, heads
        self.residual = bool(residual)
        self.residual_weights = (float(residual_weights[0]), float(residual_weights[1]))
        self.conv = GATConv(in_dim, dim // heads, heads=heads, concat=True, dropout=0.0,
                            add_self_loops=True, negative_slope=0.2)
        self.skip = nn.Linear(in_dim, dim, bias=False)

    def forward(self, x: Tensor, edge_index: Tensor, num_targets: int | None = None) -> Tensor:
        """Output for local rows 0..num_targets-1 ([num_targets, dim]).

        Bipartite mode: PyG adds self loops i->i for i < min(n_src, n_dst), i.e. exactly for
        the targets, so with num_targets = n this is the plain full-graph layer.
        """
        t = x.size(0) if num_targets is None else int(num_targets)
        out = block_output(self.conv, self.skip.weight, x, edge_index, t)
        if self.residual:
            xt = (x.to_dense() if x.layout != torch.strided else x)[:t].to(out.dtype)
            out = residual_mix(out, xt, self.residual_weights)
        return out


def propagate(u: Tensor, prop_src: Tensor, prop_dst: Tensor, prop_weight: Tensor,
              num_out: int) -> Tensor:
    """v[d] = sum_e w_e u[src_e] over edges e into d (mean when w = 1/k).

    Seeds without any neighbour get v = 0, as PyG's mean aggregation in the reference code;
    they stay in the loss (their rec term then pulls h_phi(u) towards 0).
    """
    v = u.new_zeros((num_out, u.size(1)))
    msg = u.index_select(0, prop_src) * prop_weight.to(u.dtype).unsqueeze(1)
    return v.index_add(0, prop_dst, msg)


def propagate_full(u: Tensor, edge_index: Tensor, num_nodes: int, norm: str = "mean",
                   K: int = 1) -> Tensor:
    """K steps of full-graph propagation (edge_index = [src, dst], messages src -> dst).

    norm="mean": v_i = mean_{j in N(i)} u_j (0 without neighbours);
    norm="sym":  v = D^-1/2 A D^-1/2 u with D the in-degrees (no self loops added).
    """
    if norm not in ("mean", "sym"):
        raise ValueError(f"norm must be 'mean' or 'sym', got {norm!r}")
    src, dst = edge_index[0], edge_index[1]
    deg = torch.zeros(num_nodes, dtype=u.dtype, device=u.device)
    deg.index_add_(0, dst, torch.ones_like(dst, dtype=u.dtype))
    if norm == "mean":
        w = 1.0 / deg.clamp(min=1)[dst]
    else:
        inv = deg.clamp(min=1).rsqrt()
        w = inv[dst] * inv[src]
    v = u
    for _ in range(int(K)):
        v = propagate(v, src, dst, w, num_nodes)
    return v


class Predictor(nn.Module):
    """h: D -> hid*D -> D with ReLU (the predictors h_phi, h_psi)."""

    def __init__(self, dim: int, hid: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hid * dim), nn.ReLU(), nn.Linear(hid * dim, dim))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def drop_input(x: Tensor, p: float) -> Tensor:
    """Inverted dropout of the input rows, dense or CSR (a CSR batch keeps its structure:
    dropped entries become stored zeros, so the sparse kernels still take it)."""
    if p <= 0:
        return x
    if x.layout == torch.sparse_csr:
        vals = x.values()
        keep = (torch.rand(vals.shape, device=vals.device) >= p).to(vals.dtype)
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(),
                                       vals * keep / (1.0 - p), x.size(),
                                       check_invariants=False)
    return F.dropout(x, p, True)


class LRGILayer(nn.Module):
    """One trainable layer: encoder block plus the two predictors (dropped after training).

    `input_dropout` drops input entries while training only (RGI's transductive setting);
    the frozen block embeds without it."""

    def __init__(self, in_dim: int, dim: int, heads: int = 4, hid: int = 8,
                 residual: bool = False, input_dropout: float = 0.0):
        super().__init__()
        self.block = LRGIBlock(in_dim, dim, heads, residual)
        self.h_phi = Predictor(dim, hid)     # u -> v
        self.h_psi = Predictor(dim, hid)     # v -> u
        self.input_dropout = float(input_dropout)

    def forward(self, tb: Any) -> tuple[Tensor, Tensor]:
        """(u, v) of the seeds, [B, D] each. `tb`: any batch with the fields of
        `sample.loader.TensorBatch` (the model does not import the sampler)."""
        x = drop_input(tb.x, self.input_dropout) if self.training else tb.x
        u = self.block(x, tb.conv_edge_index, tb.num_targets)
        v = propagate(u, tb.prop_src, tb.prop_dst, tb.prop_weight, tb.num_seeds)
        return u[:tb.num_seeds], v


def _var_cov(z: Tensor) -> tuple[Tensor, Tensor]:
    b, d = z.shape
    zc = z - z.mean(dim=0, keepdim=True)
    c = zc.T @ zc / (b - 1)
    diag = torch.diagonal(c)
    var = ((diag - 1.0) ** 2).sum() / d
    cov = (c.pow(2).sum() - diag.pow(2).sum()) / d
    return var, cov


def lrgi_loss(u: Tensor, v: Tensor, h_phi: nn.Module, h_psi: nn.Module,
              lambdas: tuple[float, float, float] = (25.0, 10.0, 1.0)
              ) -> tuple[Tensor, dict[str, float]]:
    """L = l1 * rec + l2 * (var(u) + var(v)) + l3 * (cov(u) + cov(v)); needs B >= 2."""
    if u.size(0) < 2:
        raise ValueError("lrgi_loss needs at least 2 seeds (covariance over the batch)")
    l1, l2, l3 = lambdas
    rec = F.mse_loss(h_psi(v), u) + F.mse_loss(h_phi(u), v)
    var_u, cov_u = _var_cov(u)
    var_v, cov_v = _var_cov(v)
    var, cov = var_u + var_v, cov_u + cov_v
    loss = l1 * rec + l2 * var + l3 * cov
    return loss, {"loss": float(loss.detach()), "rec": float(rec.detach()),
                  "var": float(var.detach()), "cov": float(cov.detach())}
