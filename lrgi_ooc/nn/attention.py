"""GAT attention with PyG `GATConv` semantics, computed from a `GATConv`'s own parameters.

Why not call `GATConv.forward`: its input projection is a dense matmul, and typical node
features (bag-of-words, keyword counts) are 1-3 % non-zero. Sparse rows (a CSR batch from
the loader, or a dense batch with at most `SPARSE_DENSITY` non-zeros) are projected by the
compiled kernels of `sparseproj`, the lin and the skip in one pass, forward and backward
(Coauthor CS: docs/benchmarks.md "Time to embeddings"); dense rows by the dense matmuls.
The attention below is exactly GATConv's (LeakyReLU, softmax over incoming edges, self
loops replaced by one per target, heads concatenated, bias), tested against it.
"""
from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lrgi_ooc.nn import sparseproj
from lrgi_ooc.nn.sparseproj import SPARSE_DENSITY  # noqa: F401  (the threshold, re-exported)

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
_scratch = threading.local()


def _scratch_rows(name: str, rows: int, cols: int) -> np.ndarray:
    """A float32 [rows, cols] work array reused from step to step: the first touch of fresh
    pages is slow on these machines (the transposes of [lin; skip] on Coauthor CS: 22 ms a
    step into a fresh array, 13 ms into this one)."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.shape[1] != cols or buf.shape[0] < rows:
        buf = np.empty((rows if buf is None else max(rows, int(rows * 1.25)), cols), np.float32)
        setattr(_scratch, name, buf)
    return buf[:rows]


class _SparseProjection(torch.autograd.Function):
    """(x @ lin.T, x[:t] @ skip.T) of CSR rows x; gradients for the two weights only (x is
    input data)."""

    @staticmethod
    def forward(ctx, lin: Tensor, skip: Tensor, crow: np.ndarray, col: np.ndarray,
                val: np.ndarray, t: int) -> tuple[Tensor, Tensor]:
        (d, f), ds = lin.shape, skip.shape[0]
        wt = _scratch_rows("wt", f, d + ds)              # [lin; skip].T
        sparseproj.transpose_into(lin.detach().contiguous().numpy(), wt, 0)
        sparseproj.transpose_into(skip.detach().contiguous().numpy(), wt, d)
        h = np.empty((crow.shape[0] - 1, d), np.float32)
        s = np.empty((t, ds), np.float32)
        sparseproj.csr_project(crow, col, val, wt, t, f, h, s)
        ctx.csr, ctx.t, ctx.width = (crow, col, val), t, f
        return torch.from_numpy(h), torch.from_numpy(s)

    @staticmethod
    def backward(ctx, gh: Tensor, gs: Tensor):
        (n, d), ds, t = gh.shape, gs.shape[1], ctx.t
        g = _scratch_rows("g", n, d + ds)                # [gh | gs], gs: rows < t only
        g[:, :d] = gh.detach().float().numpy()
        g[:t, d:] = gs.detach().float().numpy()
        ptr, rows, vals = sparseproj.csr_transpose(*ctx.csr, ctx.width)
        g_lin = np.empty((d, ctx.width), np.float32)
        g_skip = np.empty((ds, ctx.width), np.float32)
        sparseproj.csr_project(ptr, rows, vals, g, ctx.width, t, g_lin, g_skip, True)
        return torch.from_numpy(g_lin), torch.from_numpy(g_skip), None, None, None, None


def _csr_parts(x: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(crow, col, val) of x when the sparse kernels take it: a CSR tensor, or a dense one
    with at most SPARSE_DENSITY non-zeros (float32 on the CPU, no gradient wanted)."""
    if x.is_cuda or x.dim() != 2 or x.dtype != torch.float32 or x.requires_grad:
        return None
    if x.layout == torch.sparse_csr:
        return (x.crow_indices().numpy(), x.col_indices().numpy(), x.values().numpy())
    if x.layout != torch.strided or x.numel() == 0:
        return None
    nnz = int(torch.count_nonzero(x))
    if not sparseproj.is_sparse(nnz, x.size(0), x.size(1)):
        return None
    crow = np.empty(x.size(0) + 1, np.int64)
    col, val = np.empty(nnz, np.int64), np.empty(nnz, np.float32)
    sparseproj.dense_to_csr(x.contiguous().numpy(), nnz, crow, col, val)
    return crow, col, val


def input_projections(x: Tensor, lin: Tensor, skip: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """(x @ lin.T for every row, x[:t] @ skip.T): by the sparse kernels when x is sparse
    (CSR, or few non-zeros), else by the two dense matmuls."""
    parts = None if lin.dtype != torch.float32 or lin.is_cuda else _csr_parts(x)
    if parts is not None:
        return _SparseProjection.apply(lin, skip, *parts, int(t))
    if x.layout == torch.sparse_csr:
        x = x.to_dense()
    return x @ lin.t(), x[:t] @ skip.t()


def block_output(conv, skip_weight: Tensor, x: Tensor, edge_index: Tensor,
                 num_targets: int) -> Tensor:
    """ELU(GATConv((x, x[:t]), edge_index) + x[:t] @ skip_weight.T) for local rows 0..t-1."""
    from torch_geometric.utils import softmax     # here: importing this module must not load PyG
    t = int(num_targets)
    H, C = conv.heads, conv.out_channels
    h, skip = input_projections(x, conv.lin.weight, skip_weight, t)
    h = h.view(-1, H, C)
    a_src = (h * conv.att_src).sum(-1)
    a_dst = (h[:t] * conv.att_dst).sum(-1)
    src, dst = edge_index[0], edge_index[1]
    keep = src != dst
    loop = torch.arange(t, device=x.device)
    src = torch.cat([src[keep], loop])
    dst = torch.cat([dst[keep], loop])
    e = F.leaky_relu(a_src[src] + a_dst[dst], conv.negative_slope)
    alpha = softmax(e, dst, num_nodes=t)
    out = h.new_zeros((t, H, C)).index_add_(0, dst, alpha.unsqueeze(-1) * h[src])
    out = out.reshape(t, H * C)
    if conv.bias is not None:
        out = out + conv.bias
    return F.elu(out + skip)
