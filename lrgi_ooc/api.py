"""The public Python API: one function per command, keyword arguments named like its flags.

`lrgi-ooc preprocess --memory-limit 4GB ...` is `lrgi_ooc.preprocess(memory_limit="4GB", ...)`,
with the same defaults (the CLI reads its defaults from these signatures), the same checks
and the same one-line messages: bad input raises `lrgi_ooc.InputError`. Each function opens a
Dask cluster when `workers` / `scheduler` ask for one and calls its stage. Stage modules are
imported inside the functions, so `import lrgi_ooc` and `preprocess` never load torch. A
function that writes a store holds its writer lock (`store.lock`) before any cluster starts.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.store.lock import writes_store
from lrgi_ooc.store.view import StoreView, open_store

PathLike = str | os.PathLike
TRAIN_OPTIONS = ("dim", "heads", "fanout", "batch_size", "epochs", "steps", "lr",
                 "weight_decay", "lambdas", "hid", "norm", "warmup", "seed", "inductive",
                 "residual", "residual_scale", "residual_damping", "input_dropout",
                 "checkpoint_every", "device", "memory_limit", "row_reader", "read_threads")
DEFAULT_MAX_EDGES = 1 << 21         # = stages.embed.DEFAULT_MAX_EDGES (tested)

__all__ = ["InputError", "StoreView", "open_store", "preprocess", "synth", "train_layer",
           "embed_layer", "layer", "train_e2e", "evaluate", "run", "info", "validate",
           "export", "encode", "report", "load_encoder", "upgrade"]


def preprocess(*, out: PathLike, npz: PathLike | None = None, edges: PathLike | None = None,
               ogb: str | None = None, ogb_root: PathLike | None = None, src_col: str = "src",
               dst_col: str = "dst", num_nodes: int | str | None = None,
               features: PathLike | None = None, labels: PathLike | None = None,
               train: PathLike | None = None, val: PathLike | None = None,
               test: PathLike | None = None, undirected: bool = False,
               keep_self_loops: bool = False, keep_duplicates: bool = False,
               feature_dtype: str = "float32", memory_limit: str | int = "2GB",
               overwrite: bool = False, ids: str = "auto", id_col: str = "id",
               ignore_unknown_ids: bool = False, workers: int | None = None,
               scheduler: str | None = None) -> dict[str, Any]:
    """Build a store at `out` from an edge list (+ node tables), an .npz or an OGB dataset,
    within `memory_limit` whatever the edge count; returns its preprocess record. `ids`:
    `auto` remaps string ids, and integer ids that are not dense in [0, N), out-of-core."""
    from lrgi_ooc.stages.preprocess import PreprocessOptions
    from lrgi_ooc.stages.preprocess import preprocess as stage
    opts = PreprocessOptions(
        out=out, npz=npz, edges=edges, ogb=ogb, ogb_root=ogb_root, src_col=src_col,
        dst_col=dst_col, num_nodes=num_nodes, features=features, labels=labels, train=train,
        val=val, test=test, undirected=undirected, keep_self_loops=keep_self_loops,
        keep_duplicates=keep_duplicates, feature_dtype=feature_dtype,
        memory_limit=memory_limit, overwrite=overwrite, ids=ids, id_col=id_col,
        ignore_unknown_ids=ignore_unknown_ids)
    return stage(opts, workers, scheduler)


def synth(*, out: PathLike, nodes: int = 100_000, avg_degree: float = 20.0, classes: int = 8,
          feature_dim: int = 64, homophily: float = 0.8, seed: int = 0,
          degree_exponent: float = 2.5, max_degree: float | None = None,
          signal: float | None = None, edges_per_part: int = 1 << 23,
          overwrite: bool = False, labelled_fraction: float = 1.0,
          feature_dtype: str = "float32") -> dict[str, Any]:
    """Generate a DC-CSBM graph (Parquet edges, features.npy, labels.npy; with
    labelled_fraction < 1 also a train/val/test split of the labelled nodes) of any size;
    returns its synth.json document (plus `_seconds`)."""
    from lrgi_ooc.ingest.synth import generate
    return generate(Path(out), nodes=nodes, avg_degree=avg_degree, classes=classes,
                    feature_dim=feature_dim, homophily=homophily, seed=seed,
                    overwrite=overwrite, degree_exponent=degree_exponent,
                    max_degree=max_degree, signal=signal, edges_per_part=edges_per_part,
                    labelled_fraction=labelled_fraction, feature_dtype=feature_dtype)


def _train_config(config: PathLike | None, options: dict[str, Any]) -> Any:
    from lrgi_ooc.stages.train import train_config
    opts = {k: options.get(k) for k in TRAIN_OPTIONS}      # train-e2e: no row reader options
    if isinstance(opts["memory_limit"], int) and not isinstance(opts["memory_limit"], bool):
        opts["memory_limit"] = str(opts["memory_limit"])  # bytes
    return train_config(config, **opts)


@writes_store("store", "train layer {layer}")   # before a cluster starts
def train_layer(store: PathLike, *, layer: int, config: PathLike | None = None,
                dim: int | None = None, heads: int | None = None,
                fanout: str | tuple[int, int] | None = None, batch_size: int | None = None,
                epochs: int | None = None, steps: int | None = None, lr: float | None = None,
                weight_decay: float | None = None,
                lambdas: str | tuple[float, float, float] | None = None,
                hid: int | None = None, norm: str | None = None, warmup: float | None = None,
                seed: int | None = None, inductive: bool | None = None,
                residual: bool | None = None, residual_scale: float | None = None,
                residual_damping: float | None = None, input_dropout: float | None = None,
                checkpoint_every: int | None = None, device: str | None = None,
                memory_limit: str | int | None = None, row_reader: str | None = None,
                read_threads: int | None = None,
                workers: int | None = None, scheduler: str | None = None,
                gpu_task: bool | None = None) -> dict[str, Any]:
    """Train layer L on the table of layer L-1 (resumable); options left None take the
    config file's value, else the defaults of docs/cli.md. `memory_limit` (default 2GB),
    `row_reader` and `read_threads` say where input rows come from, never what they are.
    Returns the stage record."""
    from lrgi_ooc.cluster.tasks import dask_client
    from lrgi_ooc.stages.train import run_train
    cfg = _train_config(config, locals())
    with dask_client(workers, scheduler, gpu=bool(gpu_task)) as client:
        return run_train(store, layer, cfg, client, bool(gpu_task))


@writes_store("store", "embed layer {layer}")
def embed_layer(store: PathLike, *, layer: int, max_edges: int = DEFAULT_MAX_EDGES,
                device: str = "auto", chunk_rows: int | None = None,
                memory_limit: str | int = "2GB", source_blocks: int | None = None,
                table_dtype: str = "float32",
                workers: int | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """Write layer L's output for every node into the store (resumable, chunk by chunk).
    When the projection does not fit `memory_limit` (a size or bytes; per machine) it is
    streamed in source blocks (`source_blocks` forces their number): the same table.
    `table_dtype` "float16" stores the table and its projection as float16 (arithmetic
    float32); it is part of the configuration, unlike the budget."""
    from lrgi_ooc.cluster.tasks import dask_client
    from lrgi_ooc.stages.embed import WORKER_MODULES
    from lrgi_ooc.stages.embed import embed_layer as stage
    with dask_client(workers, scheduler, preload=WORKER_MODULES) as client:
        return stage(store, layer, max_edges=max_edges, device=device, client=client,
                     chunk_rows=chunk_rows, memory_limit=memory_limit,
                     source_blocks=source_blocks, table_dtype=table_dtype)


@writes_store("store", "layer {layer}")         # one lock for train and embed
def layer(store: PathLike, *, layer: int, config: PathLike | None = None,
          dim: int | None = None, heads: int | None = None,
          fanout: str | tuple[int, int] | None = None, batch_size: int | None = None,
          epochs: int | None = None, steps: int | None = None, lr: float | None = None,
          weight_decay: float | None = None,
          lambdas: str | tuple[float, float, float] | None = None, hid: int | None = None,
          norm: str | None = None, warmup: float | None = None, seed: int | None = None,
          inductive: bool | None = None, residual: bool | None = None,
          residual_scale: float | None = None, residual_damping: float | None = None,
          input_dropout: float | None = None, checkpoint_every: int | None = None,
          device: str | None = None, max_edges: int | None = None,
          memory_limit: str | int = "2GB", source_blocks: int | None = None,
          row_reader: str | None = None, read_threads: int | None = None,
          table_dtype: str = "float32",
          workers: int | None = None, scheduler: str | None = None,
          gpu_task: bool | None = None) -> dict[str, Any]:
    """Train, then embed, layer L on one cluster; returns the embed record (`memory_limit`:
    the budget of both, training's row cache and embed's as in `embed_layer`;
    `source_blocks`, `table_dtype`: embed's, checked before training; `row_reader`,
    `read_threads`: training's)."""
    from lrgi_ooc.cluster.tasks import dask_client
    from lrgi_ooc.stages.embed import WORKER_MODULES
    from lrgi_ooc.stages.embed import check_table_dtype
    from lrgi_ooc.stages.embed import embed_layer as embed_stage
    from lrgi_ooc.stages.train import run_train
    check_table_dtype(table_dtype)
    cfg = _train_config(config, locals())
    with dask_client(workers, scheduler, gpu=bool(gpu_task), preload=WORKER_MODULES) as client:
        run_train(store, layer, cfg, client, bool(gpu_task))
        return embed_stage(store, layer, max_edges=max_edges or DEFAULT_MAX_EDGES,
                           device=cfg.device, client=client, memory_limit=memory_limit,
                           source_blocks=source_blocks, table_dtype=table_dtype)


def train_e2e(store: PathLike, *, num_layers: int, config: PathLike | None = None,
              dim: int | None = None, heads: int | None = None,
              fanout: str | tuple[int, int] | None = None, batch_size: int | None = None,
              epochs: int | None = None, steps: int | None = None, lr: float | None = None,
              weight_decay: float | None = None,
              lambdas: str | tuple[float, float, float] | None = None,
              hid: int | None = None, norm: str | None = None, warmup: float | None = None,
              seed: int | None = None, inductive: bool | None = None,
              checkpoint_every: int | None = None, device: str | None = None,
              max_edges: int | None = None) -> dict[str, Any]:
    """Baseline: train layers 1..L jointly (multi-hop sampling), then embed every layer."""
    from lrgi_ooc.stages.endtoend import train_e2e as stage
    return stage(store, num_layers, _train_config(config, locals()), max_edges=max_edges)


def evaluate(store: PathLike, *, layer: int, json: PathLike | None = None, num_splits: int = 5,
             seed: int = 0, epochs: int = 1000, stream: bool | None = None,
             memory_limit: str | int = "2GB", batch_rows: int = 65536,
             device: str | None = None, probe: str = "lrgi", concat: bool = False,
             concat_raw: bool = False, metric: str | None = None,
             weight_decays: Sequence[float] | None = None) -> dict[str, Any]:
    """Linear probe of layer L's table (LRGI.md's protocol; `probe="l2"`: weight decay chosen
    on validation from `weight_decays`, default 1e-6 .. 1e-1 in half decades; `concat`:
    layers 1..L side by side, `concat_raw`: 0..L; `metric`: default by label kind); `json`
    also writes the result."""
    import json as json_mod

    from lrgi_ooc.base.memory import parse_size
    from lrgi_ooc.stages.evaluate import evaluate_store
    from lrgi_ooc.store.layout import GraphStore
    if device is not None and device not in ("cpu", "cuda"):
        raise InputError(f"--device: must be cpu or cuda, got '{device}'")
    if json and (Path(json).is_dir() or not Path(json).parent.is_dir()):   # before the work
        raise InputError(f"--json {json}: " + ("is a directory" if Path(json).is_dir() else
                                               "its directory does not exist"))
    limit = parse_size(str(memory_limit))
    res = evaluate_store(GraphStore(store), layer, num_splits=num_splits, seed=seed,
                         epochs=epochs, stream=stream, memory_limit=limit,
                         batch_rows=batch_rows, device=device, probe=probe, concat=concat,
                         concat_raw=concat_raw, metric=metric, weight_decays=weight_decays)
    if json:
        with open(json, "w") as f:
            json_mod.dump(res, f, indent=2)
            f.write("\n")
    return res


def run(config: PathLike | dict[str, Any], *, store: PathLike | None = None,
        num_layers: int | None = None, workers: int | None = None,
        scheduler: str | None = None, gpu_task: bool | None = None) -> list[dict[str, Any]]:
    """A whole pipeline (pipelines/*.toml, or the same document as a dict), resuming:
    a stage is skipped when nothing that feeds it changed. Returns evaluate's results."""
    from lrgi_ooc.stages.pipeline import run_pipeline
    return run_pipeline(config, None if store is None else str(store), num_layers,
                        {"workers": workers, "scheduler": scheduler, "gpu_task": gpu_task})


def info(store: PathLike) -> dict[str, Any]:
    """Counts, dtypes, degree statistics, labels, splits and completed stages."""
    from lrgi_ooc.stages.inspect import gather_info
    from lrgi_ooc.store.layout import GraphStore
    return gather_info(GraphStore(store))


def validate(store: PathLike) -> str | None:
    """The first broken invariant of the store, or None when it is sound (streamed)."""
    from lrgi_ooc.stages.inspect import validate as stage
    from lrgi_ooc.store.layout import GraphStore
    return stage(GraphStore(store))


def export(store: PathLike, *, layer: int, out: PathLike, nodes: PathLike | None = None,
           dtype: str = "float32", wide: bool = False, overwrite: bool = False,
           dense_ids: bool = False) -> dict[str, Any]:
    """Write layer L's table (layer 0: the features) to Parquet, .npy or CSV, chosen by the
    suffix of `out`, streamed in bounded memory; `nodes`: an .npy of node ids to export.
    A remapped store's rows carry the user's ids (`id`; `node` too with `dense_ids`)."""
    from lrgi_ooc.converters.export import export_table
    return export_table(store, layer, out, nodes=nodes, dtype=dtype, wide=wide,
                        overwrite=overwrite, dense_ids=dense_ids)


@writes_store("target", "encode with {model}")
def encode(model: PathLike, target: PathLike, *, layers: str | None = None,
           max_edges: int = DEFAULT_MAX_EDGES, device: str = "auto",
           workers: int | None = None, scheduler: str | None = None) -> list[dict[str, Any]]:
    """Apply the trained layers of store `model` to the preprocessed graph `target` (same
    feature width): writes the target's layer tables 1..L without training, resumable."""
    from lrgi_ooc.cluster.tasks import dask_client
    from lrgi_ooc.stages.embed import WORKER_MODULES
    from lrgi_ooc.stages.encode import encode_store
    with dask_client(workers, scheduler, preload=WORKER_MODULES) as client:
        return encode_store(model, target, layers=layers, max_edges=max_edges, device=device,
                            client=client)


def report(store: PathLike, *, out: PathLike) -> Path:
    """A static HTML page with PNG figures of what training did; returns index.html's path."""
    from lrgi_ooc.stages.report import write_report
    return write_report(store, out)


def load_encoder(store: PathLike, layers: list[int] | None = None) -> Any:
    """The trained layers as a `torch.nn.Module` of PyG `GATConv`s: `forward(x, edge_index)`."""
    from lrgi_ooc.pyg.encoder import load_encoder as load
    return load(store, layers)


@writes_store("store", "upgrade")
def upgrade(store: PathLike) -> dict[str, Any]:
    """Bring a format v1 or v2 store to v3 in place: a v1 store's trained weights move into
    the store, every chunk gets its CRC32C trailer."""
    from lrgi_ooc.stages.upgrade import upgrade_store
    return upgrade_store(store)
