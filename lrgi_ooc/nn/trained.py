"""A trained layer's frozen block, saved in and loaded from the store's run directory.

`train` saves it, `embed`, `train-e2e` and the probes load it: the files live here, below
every stage, so that no stage imports another to find a layer's weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.nn.blockweights import BLOCK_FILE, GATWeights
from lrgi_ooc.store.layout import GraphStore, train_stage

WEIGHTS_FILE = "layer.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, fsync'd, then renamed into place."""
    import torch
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def weights_path(store: GraphStore, layer: int) -> Path:
    """The file `embed` reads layer L's weights from (block.npz, or an older store's layer.pt)."""
    run = store.run_dir(train_stage(layer))
    return run / BLOCK_FILE if (run / BLOCK_FILE).exists() else run / WEIGHTS_FILE


def load_blob(store: GraphStore, layer: int) -> dict[str, Any]:
    """Layer L's saved weights: {"block": state dict, "config", "in_dim"} (torch only, no PyG)."""
    import torch
    path = store.run_dir(train_stage(layer)) / WEIGHTS_FILE
    if not store.stage_complete(train_stage(layer)) or not path.exists():
        raise InputError(f"{store.path}: layer {layer} is not trained; run "
                         f"`lrgi-ooc train {store.path} --layer {layer}` first")
    return torch.load(path, map_location="cpu", weights_only=False)


def save_layer(run: Path, conf: dict[str, Any], in_dim: int, block: Any) -> None:
    """The frozen block: its torch checkpoint and the numpy arrays `embed` reads."""
    save_atomic({"config": conf, "in_dim": in_dim,
                 "block": {k: v.cpu() for k, v in block.state_dict().items()}},
                run / WEIGHTS_FILE)
    GATWeights.from_block(block).save(run / BLOCK_FILE, in_dim=int(in_dim),
                                      dim=int(conf["dim"]),
                                      inductive=bool(conf.get("inductive")))


def load_block(store: GraphStore, layer: int) -> tuple[GATWeights, dict[str, int]]:
    """Layer L's block as numpy arrays (`GATWeights`) and {in_dim, dim, heads, inductive},
    without torch; a store trained before block.npz existed is read from its checkpoint."""
    path = store.run_dir(train_stage(layer)) / BLOCK_FILE
    if store.stage_complete(train_stage(layer)) and path.exists():
        w, meta = GATWeights.load(path)
        return w, {**meta, "heads": w.heads}
    blob = load_blob(store, layer)
    c = blob["config"]
    return (GATWeights.from_state(blob["block"], int(c["heads"])),
            {"in_dim": int(blob["in_dim"]), "dim": int(c["dim"]), "heads": int(c["heads"]),
             "inductive": int(bool(c.get("inductive")))})


def load_weights(store: GraphStore, layer: int) -> tuple[Any, dict[str, Any]]:
    """The trained block of layer L as a torch module (predictors dropped) and its blob."""
    blob = load_blob(store, layer)
    from lrgi_ooc.nn.model import LRGIBlock
    c = blob["config"]
    block = LRGIBlock(blob["in_dim"], c["dim"], heads=c["heads"])
    block.load_state_dict(blob["block"])
    block.eval()
    return block, blob
