"""`lrgi-ooc train STORE --layer L`: train one LRGI layer on the frozen table of layer L-1.

Resumable: checkpoints hold model, optimiser, scheduler, RNG and the global step; the
sampler's randomness is a pure function of (seed, epoch, step), so a resumed run draws the
same batches as an uninterrupted one and ends with the same weights.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lrgi_ooc.base.errors import InputError, space_for
from lrgi_ooc.base.memory import parse_size
from lrgi_ooc.cluster import tasks as cluster
from lrgi_ooc.nn.blockweights import residual_weights
from lrgi_ooc.nn.device import torch_device
from lrgi_ooc.nn.trained import save_atomic, save_layer
from lrgi_ooc.sample.subgraph import graph_for, seed_nodes
from lrgi_ooc.stages import config as cfgmod
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.store.layout import GraphStore, config_hash, embed_stage, train_stage
from lrgi_ooc.store.lock import writes_store

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
MIN_STEPS, MAX_STEPS = 50, 500
BUDGET_EPOCHS = 10
BUDGET_RULE = "seeds+edges"


def train_config(config: str | Path | None = None, **options: Any) -> TrainConfig:
    """A layer's TrainConfig: the TOML file's [train] table (or top level), then the options
    that are not None over it (the flags of `train`, `layer` and `train-e2e`)."""
    base = None
    if config:
        doc = cfgmod.load_toml(config)
        table = doc.get("train", doc) if isinstance(doc.get("train"), dict) else doc
        base = cfgmod.build(TrainConfig, table, f"{config}")
    flags = {f: options[f] for f in TrainConfig.__dataclass_fields__
             if options.get(f) is not None}
    return cfgmod.build(TrainConfig, flags, "option", base=base)


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
    """`budget` names the default step rule (neither steps nor epochs given): a layer trained
    under the older rule (10 epochs over the seeds alone) is not taken for one of today's."""
    conf = {"layer": int(layer), "input": input_hash(store, layer), **cfg.result_fields(layer)}
    if cfg.steps is None and cfg.epochs is None:
        conf["budget"] = BUDGET_RULE
    return conf


def total_steps(cfg: TrainConfig, per_epoch: int, edges: int = 0) -> int:
    """Total steps. Default budget: 10 epochs over the seeds or, where the graph has more
    edges than one visit's samples cover (mean degree above k_prop), as many steps as it takes
    the propagation samples (batch_size x k_prop a step) to draw 10 times its `edges`; then
    clamped to [MIN_STEPS, MAX_STEPS].

    LRGI over-trains on small graphs (the reference code loses 2 points on Cora going from
    30 to 100 full-batch epochs; docs/benchmarks.md), and one GAT layer's loss levels off
    within a few hundred steps of 256 seeds whatever the graph's size (a billion edges: -2 %
    over steps 100 to 200; Coauthor CS loses nothing at 500 steps instead of 720), so the
    default is short and bounded: larger graphs get fewer epochs, not more steps. A dense
    graph's neighbourhoods, though, are seen a k_prop-sized part at a time: counting the
    budget over the edges gives Chameleon (mean degree 28) 245 steps instead of 89 and
    leaves sparse graphs (Cora, 3.9) where they were."""
    if cfg.steps is not None:
        return cfg.steps
    if cfg.epochs is not None:
        return cfg.epochs * per_epoch
    over_edges = BUDGET_EPOCHS * int(edges) // (cfg.batch_size * cfg.fanout[0])
    return int(min(max(BUDGET_EPOCHS * per_epoch, over_edges, MIN_STEPS), MAX_STEPS))


def lr_lambda(total: int, warmup: float):
    warm = int(total * warmup)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    return f


def _trim_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop metric lines written after the checkpoint we restart from."""
    if not path.exists():
        return
    keep = []
    with open(path) as f:
        for line in f:
            try:
                if json.loads(line).get("step", 0) <= upto_step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            except ValueError:      # a line cut short (killed, or the disk was full)
                break
    tmp = path.with_name(path.name + ".tmp")
    with space_for(path, tmp):
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def uses_residual(cfg: TrainConfig, layer: int, in_dim: int) -> bool:
    """`residual` applies to layers fed by a previous layer's table of the same width; layer
    1 reads the node features, and a change of width has nothing to add. The layer trains as
    the paper's (the loss sees f(H)); the residual enters when its table is written."""
    return bool(cfg.residual) and layer >= 2 and in_dim == cfg.dim


def build_model(in_dim: int, cfg: TrainConfig, residual: bool = False):
    """`residual`: the block's forward adds its input (inference: the tables' function)."""
    import torch
    from lrgi_ooc.nn.model import LRGILayer
    torch.manual_seed(cfg.seed)
    return LRGILayer(in_dim, cfg.dim, heads=cfg.heads, hid=cfg.hid, residual=residual,
                     input_dropout=cfg.input_dropout)


def train_step(model, opt, tb, lambdas: tuple[float, float, float]) -> dict[str, float]:
    """One optimiser step of the LRGI loss (any model with forward(tb) -> (u, v))."""
    from lrgi_ooc.nn.model import lrgi_loss
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
    of another configuration (`chash`) is discarded. Checkpoints are written tmp + rename, so
    a full disk (DiskFull) keeps the last one and the rerun resumes from it. Returns the
    seconds spent."""
    import torch
    from lrgi_ooc.base.progress import bar
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
        save_atomic({"config_hash": chash, "step": step, "model": model.state_dict(),
                      "optim": opt.state_dict(), "sched": sched.state_dict(),
                      "torch_rng": torch.get_rng_state()}, ckpt_path)

    model.train()
    t0 = time.time()
    pbar = bar(steps, desc, unit="step", initial=step)
    with space_for(metrics_path), open(metrics_path, "a") as mf, loader:
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
    from lrgi_ooc.nn.sparseproj import SPARSE_DENSITY
    from lrgi_ooc.sample.loader import BatchLoader
    from lrgi_ooc.sample.onehop import OneHopSampler
    from lrgi_ooc.sample.rowreader import choose_reader

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

    device = torch_device(cfg.device)
    seeds = seed_nodes(store, cfg.inductive)
    indptr, indices = graph_for(store, cfg.inductive)
    sampler = OneHopSampler(indptr, indices, tuple(cfg.fanout), norm=cfg.norm, seed=cfg.seed)
    per_epoch = len(sampler.epoch_batches(seeds, cfg.batch_size, 0))
    if per_epoch == 0:
        raise InputError(f"{store.path}: fewer than 2 seed nodes to train on")
    steps = total_steps(cfg, per_epoch, edges=int(indptr[-1]))
    # whatever happened before, a stage being (re)trained is not complete, nor is its output;
    # cleared only now, so that bad input found above leaves the old records in place
    store.clear_stage(stage)
    store.clear_stage(embed_stage(layer))
    run = store.run_dir(stage)

    model = build_model(in_dim, cfg).to(device)
    kind = choose_reader(cfg.row_reader, table.nbytes, parse_size(cfg.memory_limit))
    # sparse rows (bag-of-words): CSR batches, from a CSR copy of the table within a quarter
    # of the budget
    loader = BatchLoader(sampler, table, seeds, cfg.batch_size, device=device,
                         prefetch=2 if kind == "mmap" else 3, sparse_below=SPARSE_DENSITY,
                         sparse_cache=parse_size(cfg.memory_limit) // 4)
    rows = open_rows(store, store.table_key(layer - 1), loader, cfg) if kind == "pread" else None
    try:
        secs = fit(model, loader, cfg, steps=steps, per_epoch=per_epoch, run=run,
                   chash=config_hash(conf), desc=f"train layer {layer}")
    finally:
        if rows is not None:
            rows.close()
    model.eval()
    save_layer(store, layer, conf, in_dim, model.block, uses_residual(cfg, layer, in_dim),
               residual_weights(layer, cfg.residual_scale, cfg.residual_damping))
    store.mark_stage(stage, conf, steps=steps, seconds=round(secs, 2),
                     rows={"reader": "mmap"} if rows is None else
                     {"reader": "pread", **rows.stats()})
    return store.stage_record(stage)


def open_rows(store: GraphStore, key: str, loader: Any, cfg: TrainConfig) -> Any:
    """A `RowReader` over table `key` for `loader`: its row cache gets what `--memory-limit`
    leaves after the loader's host buffers, the reader's staging buffer and an estimate of
    one training step (4 B x rows x (in_dim + 8 dim)). None when the chunks are encoded
    (then the memory map, which zarr decodes, serves them)."""
    from lrgi_ooc.sample.rowreader import RowReader
    f = store.row_file(key, cfg.read_threads)
    if f is None:
        return None
    table = loader.table
    cap, width = loader.sampler.max_rows(loader.batch_size), int(table.shape[1])
    reserved = (loader.host_nbytes() + cap * f.row_nbytes
                + 4 * cap * (width + 8 * cfg.dim))
    rows = RowReader(f, table.dtype, width, max(0, parse_size(cfg.memory_limit) - reserved))
    loader.read_from(rows)
    why = (f"; the {table.nbytes / 2**20:,.0f} MB table does not fit --memory-limit "
           f"{cfg.memory_limit} or half of MemAvailable" if cfg.row_reader == "auto" else "")
    print(f"train: input rows by pread, {cfg.read_threads} threads, a row cache of "
          f"{rows.cache_rows:,} rows ({rows.cache_nbytes / 2**20:.1f} MB){why}")
    return rows


@writes_store("store", "train layer {layer}")
def run_train(store: str | Path, layer: int, cfg: TrainConfig, client: Any = None,
              gpu_task: bool = False) -> dict[str, Any]:
    """The train stage here, or (`gpu_task`) as one Dask task on a worker with a GPU."""
    if not gpu_task:
        return train_layer(store, layer, cfg)
    if client is None:
        raise InputError("--gpu-task: needs a cluster (--scheduler ADDRESS or --workers N)")
    return cluster.run_on_resource(client, _train_task, str(Path(store).resolve()), layer, cfg)


def _train_task(store: str, layer: int, cfg: TrainConfig) -> dict[str, Any]:
    cluster.set_torch_threads()
    return train_layer(store, layer, cfg)
