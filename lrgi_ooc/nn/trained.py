"""A trained layer's frozen block, kept inside the store (format >= 2: `layers/<l>/weights`).

`train` saves it, `embed`, `encode`, `train-e2e` and the PyG encoder load it. The arrays and
the configuration they were trained with live in the store itself, so copying the store
directory carries the model; `<store>.runs/` keeps only checkpoints, metrics and logs. The
files live here, below every stage, so that no stage imports another to find a layer's
weights.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lrgi_ooc.base.errors import InputError, space_for
from lrgi_ooc.nn.blockweights import BLOCK_FILE, GATWeights, residual_weights
from lrgi_ooc.store.layout import GraphStore, train_stage, weights_key

WEIGHTS_FILE = "layer.pt"                  # format v1: the block's torch checkpoint in .runs
ARRAYS = ("lin", "att_src", "att_dst", "bias", "skip")


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, fsync'd, then renamed into place: a write that
    fails (a full disk: DiskFull naming `path`) leaves the previous file and no temporary."""
    import io

    import torch
    buf = io.BytesIO()        # torch.save to a file hides its ENOSPC in an opaque RuntimeError
    torch.save(obj, buf)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with space_for(path, tmp):
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def write_weights(store: GraphStore, layer: int, w: GATWeights, conf: dict[str, Any],
                  in_dim: int) -> None:
    """Layer L's arrays, then the group attributes that make them valid (written last)."""
    group = weights_key(layer)
    store.delete(group)
    for name in ARRAYS:
        store.write_small(weights_key(layer, name), np.asarray(getattr(w, name), np.float32))
    store.write_group_attrs(group, {
        "config": conf, "in_dim": int(in_dim), "dim": int(conf["dim"]), "heads": int(w.heads),
        "negative_slope": float(w.negative_slope), "inductive": bool(conf.get("inductive")),
        "residual": bool(w.residual),
        "residual_weights": [float(v) for v in w.residual_weights],
        "arrays": list(ARRAYS)})


def save_layer(store: GraphStore, layer: int, conf: dict[str, Any], in_dim: int,
               block: Any, residual: bool = False,
               residual_weights: tuple[float, float] = (1.0, 1.0)) -> None:
    """The frozen block of layer L, into the store (call before marking train/L complete);
    `residual`: its table is a * input + b * block output, (a, b) = `residual_weights`
    (`--residual`; from `--residual-scale` and `--residual-damping`: `residual_weights`)."""
    w = replace(GATWeights.from_block(block), residual=residual,
                residual_weights=tuple(residual_weights) if residual else (1.0, 1.0))
    write_weights(store, layer, w, conf, in_dim)


def _attrs(store: GraphStore, layer: int) -> dict[str, Any]:
    attrs = store.group_attrs(weights_key(layer))
    if not store.stage_complete(train_stage(layer)) or attrs is None:
        raise InputError(f"{store.path}: layer {layer} is not trained; run "
                         f"`lrgi-ooc train {store.path} --layer {layer}` first")
    return attrs


def load_block(store: GraphStore, layer: int) -> tuple[GATWeights, dict[str, Any]]:
    """Layer L's block as numpy arrays (`GATWeights`, no torch) and
    {in_dim, dim, heads, inductive, config}."""
    a = _attrs(store, layer)
    arrays = {n: np.ascontiguousarray(store.read_small(weights_key(layer, n)), np.float32)
              for n in ARRAYS}
    residual = bool(a.get("residual", False))      # absent: written before the option
    mix = tuple(float(v) for v in a.get("residual_weights", (1.0, 1.0)))     # likewise
    w = GATWeights(**arrays, heads=int(a["heads"]), negative_slope=float(a["negative_slope"]),
                   residual=residual, residual_weights=mix)
    return w, {"in_dim": int(a["in_dim"]), "dim": int(a["dim"]), "heads": int(a["heads"]),
               "inductive": int(bool(a["inductive"])), "residual": residual,
               "residual_weights": mix, "config": a["config"]}


def weights_stamp(store: GraphStore, layer: int) -> tuple[int, int]:
    """Changes whenever layer L's weights are rewritten (the group metadata is replaced)."""
    st = os.stat(store.path / weights_key(layer) / "zarr.json")
    return st.st_ino, st.st_mtime_ns


def state_dict(w: GATWeights) -> dict[str, Any]:
    """The `LRGIBlock` state dict the arrays stand for (PyG GATConv's parameter names)."""
    import torch
    H, C = w.att_src.shape
    return {"conv.att_src": torch.from_numpy(w.att_src.reshape(1, H, C).copy()),
            "conv.att_dst": torch.from_numpy(w.att_dst.reshape(1, H, C).copy()),
            "conv.bias": torch.from_numpy(w.bias.copy()),
            "conv.lin.weight": torch.from_numpy(w.lin.copy()),
            "skip.weight": torch.from_numpy(w.skip.copy())}


def load_blob(store: GraphStore, layer: int) -> dict[str, Any]:
    """Layer L as {"block": state dict, "config", "in_dim", "residual",
    "residual_weights"} (torch only, no PyG)."""
    w, meta = load_block(store, layer)
    return {"block": state_dict(w), "config": meta["config"], "in_dim": meta["in_dim"],
            "residual": meta["residual"], "residual_weights": meta["residual_weights"]}


def load_weights(store: GraphStore, layer: int) -> tuple[Any, dict[str, Any]]:
    """The trained block of layer L as a torch module (predictors dropped) and its blob."""
    blob = load_blob(store, layer)
    from lrgi_ooc.nn.model import LRGIBlock
    c = blob["config"]
    block = LRGIBlock(blob["in_dim"], c["dim"], heads=c["heads"], residual=blob["residual"],
                      residual_weights=blob["residual_weights"])
    block.load_state_dict(blob["block"])
    block.eval()
    return block, blob


def upgrade_v1(store: GraphStore) -> tuple[list[int], list[int]]:
    """Format v1's part of `upgrade`: every trained layer's weights move from
    `<store>.runs/train-<l>/` (block.npz, or the torch checkpoint layer.pt of older stores)
    into the store. The format version is bumped last (by `stages.upgrade`), in one durable
    write: killed before it, the store is still a v1 store and the upgrade simply runs again. Returns (layers moved, layers whose
    weights were not found: their train record is cleared, their table kept)."""
    moved: list[int] = []
    lost: list[int] = []
    for name in sorted(store.stages()):
        kind, _, num = name.partition("/")
        if kind != "train" or not num.isdigit():
            continue
        layer = int(num)
        run = store.run_dir(name)
        conf = store.stage_record(name)["config"]
        if (run / BLOCK_FILE).exists():
            w, meta = GATWeights.load(run / BLOCK_FILE)
            in_dim = meta["in_dim"]
        elif (run / WEIGHTS_FILE).exists():
            import torch
            blob = torch.load(run / WEIGHTS_FILE, map_location="cpu", weights_only=False)
            w, in_dim = GATWeights.from_state(blob["block"], int(conf["heads"])), blob["in_dim"]
        else:                        # e.g. a v1 store copied without its .runs directory
            lost.append(layer)
            continue
        residual = bool(conf.get("residual")) and layer >= 2 and in_dim == conf["dim"]
        mix = residual_weights(layer, conf.get("residual_scale", 1.0),
                               conf.get("residual_damping", 1.0)) if residual else (1.0, 1.0)
        write_weights(store, layer, replace(w, residual=residual, residual_weights=mix),
                      conf, in_dim)
        moved.append(layer)
    for layer in lost:              # its table stays; `train` can rebuild the model
        store.clear_stage(train_stage(layer))
    return moved, lost
