"""`lrgi-ooc train STORE --layer L`: train one LRGI layer on the frozen table of layer L-1.

Resumable: checkpoints hold model, optimiser, scheduler, RNG and the global step; the
sampler's randomness is a pure function of (seed, epoch, step), so a resumed run draws the
same batches as an uninterrupted one and ends with the same weights.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import config as cfgmod
from .config import TrainConfig
from .errors import InputError
from .store import GraphStore, config_hash

WEIGHTS_FILE = "layer.pt"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


def train_stage(layer: int) -> str:
    return f"train/{int(layer)}"


def embed_stage(layer: int) -> str:
    return f"embed/{int(layer)}"


# ------------------------------------------------------------------ CLI
def add_train_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by `train` and `layer`; every flag maps onto a TrainConfig field."""
    p.add_argument("store", help="store directory")
    p.add_argument("--layer", type=int, required=True, help="layer to train (1 = on features)")
    p.add_argument("--config", help="TOML file with the same keys (its [train] table or top level)")
    p.add_argument("--dim", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--fanout", help="k_prop,k_conv (default 10,5)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps", type=int, help="step budget (instead of --epochs)")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lambdas", help="lambda1,lambda2,lambda3 (default 25,10,1)")
    p.add_argument("--hid", type=int, help="predictor hidden width factor (default 8)")
    p.add_argument("--norm", choices=["mean", "sym"])
    p.add_argument("--warmup", type=float, help="warm-up fraction of the steps")
    p.add_argument("--seed", type=int)
    p.add_argument("--inductive", action="store_true", default=None,
                   help="train on the subgraph induced by the training nodes")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--device", help="auto, cpu or cuda[:N]")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from .cluster import add_dask_options
    add_train_options(p)
    add_dask_options(p, gpu=True)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    base = None
    if getattr(args, "config", None):
        doc = cfgmod.load_toml(args.config)
        table = doc.get("train", doc) if isinstance(doc.get("train"), dict) else doc
        base = cfgmod.build(TrainConfig, table, f"{args.config}")
    flags = {f: getattr(args, f) for f in TrainConfig.__dataclass_fields__
             if getattr(args, f, None) is not None}
    return cfgmod.build(TrainConfig, flags, "option", base=base)


def main_train(args: argparse.Namespace) -> int:
    from .cluster import dask_client
    from .pipeline import run_train
    cfg = config_from_args(args)
    with dask_client(args.workers, args.scheduler, gpu=bool(args.gpu_task)) as client:
        run_train(args.store, args.layer, cfg, client, bool(args.gpu_task))
    return 0


# ------------------------------------------------------------------ stage logic
def input_hash(store: GraphStore, layer: int) -> str:
    """Identity of layer L's input table: what upstream produced it, with which config."""
    if layer == 1:
        rec = store.stage_record("preprocess")
        return rec["config_hash"] if rec else "features"
    rec = store.stage_record(embed_stage(layer - 1))
    if rec is None:
        raise InputError(f"{store.path}: layer {layer - 1}'s table is missing; run "
                         f"`lrgi-ooc layer {store.path} --layer {layer - 1}` first")
    return rec["config_hash"]


def stage_config(store: GraphStore, layer: int, cfg: TrainConfig) -> dict[str, Any]:
    return {"layer": int(layer), "input": input_hash(store, layer), **cfg.result_fields()}


def resolve_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def seed_nodes(store: GraphStore, inductive: bool) -> np.ndarray:
    if not inductive:
        return np.arange(store.num_nodes, dtype=np.int64)
    splits = store.splits()
    if not splits:
        raise InputError(f"{store.path}: --inductive needs a training split in the store")
    return np.unique(splits[0]["train"]).astype(np.int64)


def graph_for(store: GraphStore, inductive: bool) -> tuple[np.ndarray, np.ndarray]:
    """The CSR the layer trains on: the whole graph, or the training-induced subgraph."""
    if not inductive:
        return store.indptr(), store.indices()
    from .subgraph import training_subgraph
    return training_subgraph(store, seed_nodes(store, True))


def total_steps(cfg: TrainConfig, per_epoch: int) -> int:
    """Total steps. Default budget: 10 epochs, clamped to [50, 2000] steps.

    LRGI over-trains on small graphs (the reference code loses 2 points on Cora going from
    30 to 100 full-batch epochs; docs/benchmarks.md), and a large graph needs far less than
    an epoch per layer to fit one GAT layer, so the default is short and bounded."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.epochs is not None:
        return cfg.epochs * per_epoch
    return int(min(max(10 * per_epoch, 50), 2000))


def lr_lambda(total: int, warmup: float):
    warm = int(total * warmup)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    return f


def _save_atomic(obj: Any, path: Path) -> None:
    import torch
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _trim_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we restart from."""
    if not path.exists():
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= upto_step:
                    keep.append(line)
            except ValueError:
                break
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def build_model(in_dim: int, cfg: TrainConfig):
    import torch
    from .model import LRGILayer
    torch.manual_seed(cfg.seed)
    return LRGILayer(in_dim, cfg.dim, heads=cfg.heads, hid=cfg.hid)


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
    from .blockweights import BLOCK_FILE, GATWeights
    _save_atomic({"config": conf, "in_dim": in_dim,
                  "block": {k: v.cpu() for k, v in block.state_dict().items()}},
                 run / WEIGHTS_FILE)
    GATWeights.from_block(block).save(run / BLOCK_FILE, in_dim=int(in_dim),
                                      dim=int(conf["dim"]),
                                      inductive=bool(conf.get("inductive")))


def load_block(store: GraphStore, layer: int) -> tuple[Any, dict[str, int]]:
    """Layer L's block as numpy arrays (`GATWeights`) and {in_dim, dim, heads, inductive},
    without torch; a store trained before block.npz existed is read from its checkpoint."""
    from .blockweights import BLOCK_FILE, GATWeights
    path = store.run_dir(train_stage(layer)) / BLOCK_FILE
    if store.stage_complete(train_stage(layer)) and path.exists():
        w, meta = GATWeights.load(path)
        return w, {**meta, "heads": w.heads}
    blob = load_blob(store, layer)
    c = blob["config"]
    return (GATWeights.from_state(blob["block"], int(c["heads"])),
            {"in_dim": int(blob["in_dim"]), "dim": int(c["dim"]), "heads": int(c["heads"]),
             "inductive": int(bool(c.get("inductive")))})


def load_weights(store: GraphStore, layer: int):
    """The trained block of layer L (predictors dropped) and its config."""
    blob = load_blob(store, layer)
    from .model import LRGIBlock
    c = blob["config"]
    block = LRGIBlock(blob["in_dim"], c["dim"], heads=c["heads"])
    block.load_state_dict(blob["block"])
    block.eval()
    return block, blob


def train_step(model, opt, tb, lambdas: tuple[float, float, float]) -> dict[str, float]:
    """One optimiser step of the LRGI loss (any model with forward(tb) -> (u, v))."""
    from .model import lrgi_loss
    u, v = model(tb)
    loss, terms = lrgi_loss(u, v, model.h_phi, model.h_psi, lambdas)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return terms


def fit(model, loader, cfg: TrainConfig, *, steps: int, per_epoch: int, run: Path,
        chash: str, desc: str) -> float:
    """The resumable optimisation loop of layer-wise and end-to-end training.

    Adam with warm-up and cosine decay; a checkpoint (model, optimiser, scheduler, RNG,
    step) every `checkpoint_every` steps and at the end; metrics as JSON lines. A checkpoint
    of another configuration (`chash`) is discarded. Returns the seconds spent."""
    import torch
    from .progress import bar
    ckpt_path, metrics_path = run / CHECKPOINT_FILE, run / METRICS_FILE
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, cfg.warmup))
    step = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck.get("config_hash") == chash:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optim"])
            sched.load_state_dict(ck["sched"])
            torch.set_rng_state(ck["torch_rng"])
            step = int(ck["step"])
            print(f"{desc}: resuming from step {step}/{steps}")
        else:
            print(f"{desc}: configuration changed; the old checkpoint is discarded")
            ckpt_path.unlink()
            metrics_path.unlink(missing_ok=True)
    else:
        metrics_path.unlink(missing_ok=True)
    _trim_metrics(metrics_path, step)

    def checkpoint() -> None:
        _save_atomic({"config_hash": chash, "step": step, "model": model.state_dict(),
                      "optim": opt.state_dict(), "sched": sched.state_dict(),
                      "torch_rng": torch.get_rng_state()}, ckpt_path)

    model.train()
    t0 = time.time()
    pbar = bar(steps, desc, unit="step", initial=step)
    with open(metrics_path, "a") as mf, loader:
        while step < steps:
            epoch, start = divmod(step, per_epoch)
            for tb in loader.iter_epoch(epoch, start):
                terms = train_step(model, opt, tb, cfg.lambdas)
                sched.step()
                step += 1
                pbar.update(1)
                pbar.set_postfix({k: f"{terms[k]:.3g}" for k in ("loss", "rec", "var", "cov")},
                                 refresh=False)
                if step % cfg.log_every == 0 or step == steps:
                    mf.write(json.dumps({"step": step, "epoch": epoch, "rows": int(tb.x.shape[0]),
                                         **terms, "lr": sched.get_last_lr()[0],
                                         "seconds": round(time.time() - t0, 3)}) + "\n")
                    mf.flush()
                if step % cfg.checkpoint_every == 0 or step == steps:
                    checkpoint()
                if step >= steps:
                    break
    pbar.close()
    model.eval()
    return time.time() - t0


def train_layer(store_path: str | Path, layer: int, cfg: TrainConfig) -> dict[str, Any]:
    from .loader import BatchLoader
    from .sampler import OneHopSampler

    store = GraphStore(store_path)
    if layer < 1:
        raise InputError(f"--layer: must be >= 1, got {layer}")
    stage = train_stage(layer)
    conf = stage_config(store, layer, cfg)
    if store.stage_complete(stage, conf):
        print(f"layer {layer}: already trained with this configuration (skipping)")
        return store.stage_record(stage)
    if not store.has(store.table_key(layer - 1)):
        raise InputError(f"{store.path}: no input table for layer {layer}")
    table = store.table(layer - 1)
    in_dim = int(table.shape[1])
    # whatever happened before, a stage being (re)trained is not complete, nor is its output
    store.clear_stage(stage)
    store.clear_stage(embed_stage(layer))

    device = resolve_device(cfg.device)
    seeds = seed_nodes(store, cfg.inductive)
    indptr, indices = graph_for(store, cfg.inductive)
    sampler = OneHopSampler(indptr, indices, tuple(cfg.fanout), norm=cfg.norm, seed=cfg.seed)
    per_epoch = len(sampler.epoch_batches(seeds, cfg.batch_size, 0))
    if per_epoch == 0:
        raise InputError(f"{store.path}: fewer than 2 seed nodes to train on")
    steps = total_steps(cfg, per_epoch)
    run = store.run_dir(stage)

    model = build_model(in_dim, cfg).to(device)
    loader = BatchLoader(sampler, table, seeds, cfg.batch_size, device=device)
    secs = fit(model, loader, cfg, steps=steps, per_epoch=per_epoch, run=run,
               chash=config_hash(conf), desc=f"train layer {layer}")
    model.eval()
    save_layer(run, conf, in_dim, model.block)
    store.mark_stage(stage, conf, steps=steps, seconds=round(secs, 2))
    return store.stage_record(stage)
