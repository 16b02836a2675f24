"""A store's trained layers as one ordinary PyG model: `forward(x, edge_index)`.

The stages run each layer out of core with their own kernels; this module rebuilds the same
layers from PyG's `GATConv`, the linear skip and ELU, so the trained encoder can be used,
inspected, moved to a device or saved (`state_dict`) like any other PyTorch model, on the
store's graph or on a new one of the same feature width.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GATConv

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.nn.model import residual_mix
from lrgi_ooc.nn.trained import load_weights
from lrgi_ooc.store.layout import GraphStore, train_stage

StoreLike = str | os.PathLike | GraphStore   # a store path or an open store


def open_graph_store(store: StoreLike) -> GraphStore:
    """A `GraphStore` from a path (or the store itself): every adapter accepts either."""
    return store if isinstance(store, GraphStore) else GraphStore(store)


class LRGIEncoderLayer(nn.Module):
    """One LRGI layer, f(H) = ELU(GATConv(H) + W_skip H), with PyG's own `GATConv.forward`.

    Parameter names (`conv.*`, `skip.weight`) are those of the training block
    (`lrgi_ooc.nn.model.LRGIBlock`), so a trained block's state dict loads as is. GATConv
    replaces existing self loops by one per node: the semantics of the stored tables. A
    `residual` layer mixes its input in, b f(H) + a H with (a, b) = `residual_weights`
    (`--residual`, `--residual-scale`); flag and weights are buffers of the state dict."""

    def __init__(self, in_dim: int, dim: int, heads: int, residual: bool = False,
                 residual_weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        if dim % heads:
            raise InputError(f"layer width {dim} is not divisible by its {heads} heads")
        if residual and in_dim != dim:
            raise InputError(f"a residual layer needs equal widths, got {in_dim} -> {dim}")
        self.in_dim, self.dim, self.heads = int(in_dim), int(dim), int(heads)
        # in the state dict: a saved encoder rebuilt by hand gets its layers' flags back
        self.register_buffer("residual_flag", torch.tensor(bool(residual)))
        self.register_buffer("residual_weights",
                             torch.tensor([float(v) for v in residual_weights]))
        self.conv = GATConv(in_dim, dim // heads, heads=heads, concat=True, dropout=0.0,
                            add_self_loops=True, negative_slope=0.2)
        self.skip = nn.Linear(in_dim, dim, bias=False)

    @property
    def residual(self) -> bool:
        return bool(self.residual_flag)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # an encoder saved before the weights existed: its residual layers summed
        state_dict.setdefault(prefix + "residual_weights", torch.tensor([1.0, 1.0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        out = F.elu(self.conv(x, edge_index) + self.skip(x))
        if not self.residual:
            return out
        return residual_mix(out, x, tuple(float(v) for v in self.residual_weights))


class LRGIEncoder(nn.Module):
    """A stack of `LRGIEncoderLayer`s: the trained LRGI encoder as a plain PyG model.

    `load_encoder` builds one from a store; built by hand (same dims and heads) it accepts
    that encoder's `state_dict`, so a saved model needs no store to be loaded again."""

    def __init__(self, in_dim: int, dims: Sequence[int], heads: int | Sequence[int] = 4,
                 layer_numbers: Sequence[int] | None = None,
                 residual: bool | Sequence[bool] = False,
                 residual_weights: Sequence[tuple[float, float]] | None = None):
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims:
            raise InputError("an encoder needs at least one layer")
        hs = [int(heads)] * len(dims) if isinstance(heads, int) else [int(h) for h in heads]
        if len(hs) != len(dims):
            raise InputError(f"{len(dims)} layer widths but {len(hs)} head counts")
        res = ([bool(residual)] * len(dims) if isinstance(residual, bool)
               else [bool(r) for r in residual])
        if len(res) != len(dims):
            raise InputError(f"{len(dims)} layer widths but {len(res)} residual flags")
        mixes = [(1.0, 1.0)] * len(dims) if residual_weights is None else \
            [(float(a), float(b)) for a, b in residual_weights]
        if len(mixes) != len(dims):
            raise InputError(f"{len(dims)} layer widths but {len(mixes)} residual weights")
        widths = [int(in_dim), *dims]
        self.layers = nn.ModuleList(LRGIEncoderLayer(widths[i], widths[i + 1], hs[i], res[i],
                                                     mixes[i])
                                    for i in range(len(dims)))
        # which store layers these are (layer 1 reads the node features)
        self.layer_numbers = list(layer_numbers or range(1, len(dims) + 1))

    @property
    def in_dim(self) -> int:
        return self.layers[0].in_dim

    @property
    def out_dim(self) -> int:
        return self.layers[-1].dim

    def forward(self, x: Tensor, edge_index: Tensor, *, return_all: bool = False
                ) -> Tensor | list[Tensor]:
        """The last layer's output [N, D], or with `return_all` every layer's, in order.

        `edge_index`: [2, E] (source, target), messages flow source -> target (any
        adjacency `GATConv` accepts)."""
        outs = []
        for layer in self.layers:
            x = layer(x, edge_index)
            outs.append(x)
        return outs if return_all else x

    def extra_repr(self) -> str:
        return f"store layers {self.layer_numbers}"


def trained_layers(store: GraphStore) -> list[int]:
    """Layers 1, 2, ... whose training completed, up to the first that did not."""
    out, layer = [], 1
    while store.stage_complete(train_stage(layer)):
        out.append(layer)
        layer += 1
    return out


def _layer_list(store: GraphStore, layers: Sequence[int] | int | None) -> list[int]:
    if layers is None:
        got = trained_layers(store)
        if not got:
            raise InputError(f"{store.path}: no trained layer; run "
                             f"`lrgi-ooc train {store.path} --layer 1` first")
        return got
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    got = [int(layer) for layer in layers]
    if not got or got != list(range(1, len(got) + 1)):
        raise InputError(f"layers: expected consecutive layers from 1 (e.g. [1, 2]), "
                         f"got {got}")
    return got


def load_encoder(store: StoreLike, layers: Sequence[int] | int | None = None) -> LRGIEncoder:
    """The trained layers 1..L of `store` (default: every trained one) as an `LRGIEncoder`.

    Inference-only by default (`eval()`, no gradients): call `.train()` and
    `.requires_grad_(True)` to fine-tune it. On the store's own graph
    (`edge_index_from_store`) and features it reproduces the stored tables."""
    s = open_graph_store(store)
    numbers = _layer_list(s, layers)
    blocks = [load_weights(s, layer)[0] for layer in numbers]
    for prev, block, layer in zip(blocks, blocks[1:], numbers[1:]):
        if block.in_dim != prev.dim:
            raise InputError(f"{s.path}: layer {layer} was trained on width {block.in_dim} "
                             f"but layer {layer - 1} has width {prev.dim}; retrain layer "
                             f"{layer}")
    enc = LRGIEncoder(blocks[0].in_dim, [b.dim for b in blocks], [b.heads for b in blocks],
                      numbers, [b.residual for b in blocks],
                      [b.residual_weights for b in blocks])
    for layer, block in zip(enc.layers, blocks):
        layer.load_state_dict({**block.state_dict(), "residual_flag": layer.residual_flag,
                               "residual_weights": layer.residual_weights})
    return enc.eval().requires_grad_(False)


def edge_index_from_store(store: StoreLike) -> Tensor:
    """The store's graph as a [2, E] int64 (source, target) tensor, targets ascending.

    Loads the whole graph (16 E bytes): for a graph that fits in memory, as a full-graph
    PyG forward needs anyway; `StoreGraphStore` serves the CSC without the expansion."""
    s = open_graph_store(store)
    indptr = np.asarray(s.indptr())
    src = torch.from_numpy(np.asarray(s.indices()).astype(np.int64))
    dst = torch.repeat_interleave(torch.arange(s.num_nodes, dtype=torch.int64),
                                  torch.from_numpy(np.diff(indptr)))
    return torch.stack([src, dst])
