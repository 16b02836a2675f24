"""`lrgi-ooc train-e2e STORE --num-layers L`: the end-to-end baseline (all L layers at once).

Why: it is what LRGI is measured against (docs/benchmarks.md "Depth", "Oversmoothing"), and a
plain option for graphs small enough that an L-hop neighbourhood per batch fits in memory.
The encoder is L stacked `LRGIBlock`s trained jointly with the SAME loss as one layer-wise
layer (`lrgi_loss` on the last block's u and its propagation v), on `[k_prop] + [k_prop] *
(L-1) + [k_conv]` neighbourhoods (`multihop.MultiHopSampler`): per-batch rows grow ~10^L.

Afterwards every layer's block is saved as `train/l` weights (the format `train` writes), and
`embed.embed_layer` writes `layers/1..L/embeddings` with full neighbourhoods, so `embed`,
`evaluate` and a layer-wise `train --layer L+1` work on top of it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.nn.device import torch_device
from lrgi_ooc.nn.model import LRGIBlock, Predictor, propagate
from lrgi_ooc.nn.trained import save_layer
from lrgi_ooc.sample.loader import BatchLoader, TensorBatch
from lrgi_ooc.sample.multihop import MultiHopBatch, MultiHopSampler, depth_fanouts
from lrgi_ooc.sample.subgraph import graph_for, seed_nodes
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.embed import DEFAULT_MAX_EDGES, embed_layer
from lrgi_ooc.stages.train import fit, input_hash, total_steps
from lrgi_ooc.store.layout import GraphStore, config_hash, embed_stage, train_stage
from lrgi_ooc.store.lock import writes_store

E2E_STAGE = "train/e2e"


# ------------------------------------------------------------------ batches as tensors
@dataclass
class MultiHopTensorBatch(TensorBatch):
    """A `TensorBatch` (x = rows S_L, conv_edge_index = hop 1) plus the deeper hops."""
    hop_edge_index: list = field(default_factory=list)   # [2, E_j] int64, j = 0..L-1
    hop_sizes: list = field(default_factory=list)        # |S_0|, ..., |S_L|


class MultiHopLoader(BatchLoader):
    """`BatchLoader` (same gathering, slots and prefetch) over a `MultiHopSampler`."""

    def _tensors(self, b: MultiHopBatch, slot) -> MultiHopTensorBatch:
        tb = super()._tensors(b, slot)
        nb = self.device.type == "cuda"
        hops = [tb.conv_edge_index] + [
            torch.from_numpy(np.stack([s, d])).to(self.device, non_blocking=nb)
            for s, d in zip(b.hop_src[1:], b.hop_dst[1:])]
        return MultiHopTensorBatch(**{f.name: getattr(tb, f.name) for f in fields(tb)},
                                   hop_edge_index=hops,
                                   hop_sizes=[int(s) for s in b.hop_sizes])


# ------------------------------------------------------------------ the model
class EndToEndEncoder(nn.Module):
    """L stacked LRGI blocks (block l's output is block l+1's input) plus the predictors."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, heads: int = 4, hid: int = 8):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.blocks = nn.ModuleList(LRGIBlock(in_dim if l == 0 else dim, dim, heads)
                                    for l in range(num_layers))
        self.h_phi = Predictor(dim, hid)     # created after the blocks: with L = 1 the
        self.h_psi = Predictor(dim, hid)     # initialisation equals LRGILayer's

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def forward(self, tb: MultiHopTensorBatch) -> tuple[Tensor, Tensor]:
        """(u, v) of the seeds, [B, D] each: block l runs on hop L - l + 1."""
        h = tb.x
        for l, block in enumerate(self.blocks):
            j = self.num_layers - 1 - l
            h = block(h, tb.hop_edge_index[j], tb.hop_sizes[j])
        v = propagate(h, tb.prop_src, tb.prop_dst, tb.prop_weight, tb.num_seeds)
        return h[:tb.num_seeds], v


def e2e_fanouts(cfg: TrainConfig, num_layers: int) -> tuple[int, ...]:
    """--fanout k_prop,k_conv -> (k_prop, k_prop x (L-1), k_conv): `[10] * L + [5]`."""
    kp, kc = cfg.fanout
    return depth_fanouts(num_layers, kp, kp, kc)


def build_e2e_model(in_dim: int, num_layers: int, cfg: TrainConfig) -> EndToEndEncoder:
    torch.manual_seed(cfg.seed)
    return EndToEndEncoder(in_dim, cfg.dim, num_layers, heads=cfg.heads, hid=cfg.hid)


# ------------------------------------------------------------------ the stage
def e2e_config(store: GraphStore, num_layers: int, cfg: TrainConfig) -> dict[str, Any]:
    return {"num_layers": int(num_layers), "input": input_hash(store, 1),
            **cfg.result_fields()}


def layer_config(conf: dict[str, Any], layer: int) -> dict[str, Any]:
    """train/<layer> record of a jointly trained layer (has dim/heads/inductive like train's)."""
    return {**conf, "layer": int(layer), "end_to_end": config_hash(conf)}


def _fit(store: GraphStore, num_layers: int, cfg: TrainConfig,
         conf: dict[str, Any]) -> tuple[EndToEndEncoder, int]:
    """Train jointly, resumable from checkpoints (as `train`); returns (model, steps)."""
    table = store.table(0)
    device = torch_device(cfg.device)
    seeds = seed_nodes(store, cfg.inductive)
    indptr, indices = graph_for(store, cfg.inductive)
    sampler = MultiHopSampler(indptr, indices, e2e_fanouts(cfg, num_layers), norm=cfg.norm,
                              seed=cfg.seed)
    per_epoch = len(sampler.epoch_batches(seeds, cfg.batch_size, 0))
    if per_epoch == 0:
        raise InputError(f"{store.path}: fewer than 2 seed nodes to train on")
    steps = total_steps(cfg, per_epoch)
    run = store.run_dir(E2E_STAGE)
    model = build_e2e_model(int(table.shape[1]), num_layers, cfg).to(device)
    loader = MultiHopLoader(sampler, table, seeds, cfg.batch_size, device=device)
    fit(model, loader, cfg, steps=steps, per_epoch=per_epoch, run=run,
        chash=config_hash(conf), desc=f"train {num_layers} layers end-to-end")
    return model.eval(), steps


@writes_store("store_path", "train-e2e of {num_layers} layers")
def train_e2e(store_path: str | Path, num_layers: int, cfg: TrainConfig,
              max_edges: int | None = None) -> dict[str, Any]:
    """Train layers 1..L jointly, record them as train/1..L, then embed every layer."""
    store = GraphStore(store_path)
    if num_layers < 1:
        raise InputError(f"--num-layers: must be >= 1, got {num_layers}")
    if cfg.input_dropout:       # from a config file (the flag is refused by the CLI)
        raise InputError("input_dropout: applies to layer-wise training (`layer`, `train`)")
    if not store.has(store.table_key(0)):
        raise InputError(f"{store.path}: store has no node features to train on")
    conf = e2e_config(store, num_layers, cfg)
    layers = range(1, num_layers + 1)
    if store.stage_complete(E2E_STAGE, conf) and all(
            store.stage_complete(train_stage(l), layer_config(conf, l)) for l in layers):
        print(f"train-e2e: {num_layers} layers already trained with this configuration "
              "(skipping to embed)")
    else:
        stale = [l for l in store.layers() if l > num_layers]
        if stale:
            print(f"train-e2e: layers {stale} were built on the tables being replaced; "
                  "their stage records are cleared (retrain them)")
        for l in sorted(set(layers) | set(stale)):
            store.clear_stage(train_stage(l))
            store.clear_stage(embed_stage(l))
        store.clear_stage(E2E_STAGE)
        t0 = time.time()
        model, steps = _fit(store, num_layers, cfg, conf)
        in_dim = int(store.info(store.table_key(0)).shape[1])
        for l, block in zip(layers, model.blocks):
            lconf = layer_config(conf, l)
            save_layer(store, l, lconf, in_dim if l == 1 else cfg.dim, block)
            store.mark_stage(train_stage(l), lconf, steps=steps)
        store.mark_stage(E2E_STAGE, conf, steps=steps, seconds=round(time.time() - t0, 2))
    for l in layers:
        embed_layer(store.path, l, max_edges=max_edges or DEFAULT_MAX_EDGES, device=cfg.device)
    return store.stage_record(E2E_STAGE)
