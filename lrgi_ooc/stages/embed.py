"""`lrgi-ooc embed STORE --layer L`: layer L's output for every node, full neighbourhoods.

Work unit = one output chunk of `layers/L/embeddings`, written whole and atomically by one
writer, so an interrupted run resumes with the chunks not yet on disk and the same function
runs unchanged as a Dask task. Two passes over that chunk grid: phase 1 projects every
node once ([h | a_src], the per-node half of GAT, into the transient `projection` arrays);
phase 2 aggregates each chunk's neighbourhoods from the mapped projection with a compiled
kernel (`gatkernel`), edges in pieces of at most `max_edges` with an online softmax, so a
node of any degree fits in bounded memory. When the projection and the tasks' state do not
fit `--memory-limit`, phase 2 reads the projection in node-range source blocks instead
(`embed_stream`: the plan, printed and recorded as the stage record's `plan`).
`--table-dtype float16` stores the table and the projection as float16 (half the disk, page
cache and reads); the kernels widen each value to float32 as they load it, so every sum,
max and exp is float32 and only the stored values are rounded.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lrgi_ooc.cluster import tasks as cluster
from lrgi_ooc.base.errors import InputError, space_for
from lrgi_ooc.base.memory import parse_size
from lrgi_ooc.nn.blockweights import GATWeights, matmul_t, mix_residual
from lrgi_ooc.nn.device import device_name
from lrgi_ooc.nn.trained import load_block, weights_stamp
from lrgi_ooc.sample.subgraph import graph_for, seed_nodes
from lrgi_ooc.stages.embed_stream import (DEFAULT_MEMORY_LIMIT, output_chunk_rows, plan_embed,
                                          read_sorted_rows, stream_aggregate,
                                          tasks_per_machine)
from lrgi_ooc.store.layout import (INDICES, MIN_CHUNK_ROWS, GraphStore, config_hash,
                                   embed_stage, embeddings_key, projection_keys,
                                   train_embeddings_key, train_stage)
from lrgi_ooc.store.lock import writes_store

DEFAULT_MAX_EDGES = 1 << 21
DEFAULT_TABLE_DTYPE = "float32"
TABLE_DTYPES = ("float32", "float16")
FLOAT16_MAX = float(np.finfo(np.float16).max)
WORKER_MODULES = ("lrgi_ooc.stages.embed", "lrgi_ooc.nn.gatkernel")   # preloaded by local workers
PROGRESS_FILE = "progress.json"


# ------------------------------------------------------------------ the computation
class StoreRows:
    """Contiguous row ranges of a store array by plain reads (`rows[a:b]`), gathers through
    the memory map: a streaming pass over a large array then does not grow RSS."""

    def __init__(self, store: GraphStore, key: str):
        self.store, self.key = store, key
        self._mm: np.ndarray | None = None

    def __len__(self) -> int:
        return self.store.info(self.key).num_rows

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(len(self))
            return self.store.read_rows(self.key, a, b)
        if self._mm is None:
            self._mm = self.store.mmap(self.key)
        return self._mm[index]


def segment_edges(indptr: np.ndarray, targets: np.ndarray, p0: int, p1: int,
                  cum: np.ndarray) -> np.ndarray:
    """Positions in `indices` of edges [p0, p1) of the concatenated in-neighbour lists of
    `targets` (cum = their running degree sum)."""
    pos = np.arange(p0, p1, dtype=np.int64)
    tl = np.searchsorted(cum, pos, side="right") - 1
    return pos - cum[tl] + indptr[targets[tl]]


def project_rows(w: GATWeights, x: np.ndarray, device: str = "cpu"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(h, a_src): the projected input [R, H * C] and its source attention logits [R, H],
    the per-node half of GAT, computed once per node instead of once per edge."""
    H, C = w.att_src.shape
    h = matmul_t(x, w.lin, device)
    a_src = np.einsum("rhc,hc->rh", h.reshape(-1, H, C), w.att_src)
    return h, np.ascontiguousarray(a_src, dtype=np.float32)


def _contiguous(targets: np.ndarray) -> bool:
    return len(targets) > 0 and int(targets[-1]) - int(targets[0]) == len(targets) - 1 \
        and bool(np.all(np.diff(targets) == 1))


def aggregate(w: GATWeights, proj: tuple[np.ndarray, np.ndarray], indptr: np.ndarray, indices: Any,
              targets: np.ndarray, x_targets: np.ndarray, max_edges: int = DEFAULT_MAX_EDGES,
              device: str = "cpu") -> np.ndarray:
    """ELU(GATConv(x)[targets] + skip(x_targets)) from the projections (h, a_src) of all nodes,
    plus x_targets for a residual block.

    Same semantics as PyG GATConv on the whole graph (existing self-loops replaced by one
    per node). Edges are read `max_edges` at a time and folded into a running softmax, so a
    node of any degree fits in bounded memory; contiguous targets read their edges as one
    slice (`indices[a:b]`), others gather them."""
    from lrgi_ooc.nn import gatkernel

    H, C = w.att_src.shape
    slope = np.float32(w.negative_slope)
    h, a_src = (gatkernel.kernel_array(p) for p in proj)
    targets = np.asarray(targets, dtype=np.int64)
    R = len(targets)
    m, s, a_dst, acc = gatkernel.empty_state(R, H, C)
    att_dst = w.att_dst
    gatkernel.init_state(h, a_src, att_dst, targets, slope, a_dst, m, s, acc)
    deg = (indptr[targets + 1] - indptr[targets]).astype(np.int64)
    cum = np.zeros(R + 1, dtype=np.int64)
    np.cumsum(deg, out=cum[1:])
    contiguous = _contiguous(targets)
    logits = np.empty((min(max_edges, int(cum[-1])), H), np.float32)
    for q0 in range(0, int(cum[-1]), max_edges):
        q1 = min(q0 + max_edges, int(cum[-1]))
        if contiguous:
            base = int(indptr[targets[0]])
            src = np.asarray(indices[base + q0:base + q1])
        else:
            src = np.asarray(indices[segment_edges(indptr, targets, q0, q1, cum)])
        r0 = int(np.searchsorted(cum, q0, side="right")) - 1
        r1 = int(np.searchsorted(cum, q1, side="left"))
        starts = np.clip(cum[r0:r1] - q0, 0, q1 - q0)
        ends = np.clip(cum[r0 + 1:r1 + 1] - q0, 0, q1 - q0)
        gatkernel.accumulate(h, a_src, targets[r0:r1], src, starts, ends, a_dst[r0:r1],
                             slope, m[r0:r1], s[r0:r1], acc[r0:r1], logits)
    skip = matmul_t(x_targets, w.skip, device)
    out = np.empty_like(acc)
    gatkernel.finish(s, acc, w.bias, skip, out)
    if w.residual:
        mix_residual(out, x_targets, w.residual_weights)
    return out


def block_forward(block, table: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                  targets: np.ndarray, max_edges: int = DEFAULT_MAX_EDGES,
                  device: str = "cpu") -> np.ndarray:
    """The block's full-neighbourhood output for `targets` of an in-memory graph."""
    w = GATWeights.from_block(block)
    targets = np.asarray(targets, dtype=np.int64)
    proj = project_rows(w, np.asarray(table), device)
    return aggregate(w, proj, indptr, indices, targets, np.asarray(table)[targets],
                     max_edges, device)


# ------------------------------------------------------------------ the stage
def check_table_dtype(table_dtype: Any, where: str = "--table-dtype") -> str:
    """The table dtype, or a one-line error naming `where` (checked before any work)."""
    if not isinstance(table_dtype, str) or table_dtype not in TABLE_DTYPES:
        raise InputError(f"{where}: must be float32 or float16, got {table_dtype!r}")
    return table_dtype


def embed_config(store: GraphStore, layer: int,
                 table_dtype: str = DEFAULT_TABLE_DTYPE) -> dict[str, Any]:
    """What the table depends on. The dtype enters only when it is not the default, so
    stores embedded before `--table-dtype` existed keep their configuration hash."""
    rec = store.stage_record(train_stage(layer))
    if rec is None:
        raise InputError(f"{store.path}: layer {layer} is not trained; run "
                         f"`lrgi-ooc train {store.path} --layer {layer}` first")
    conf: dict[str, Any] = {"layer": int(layer), "train": rec["config_hash"]}
    if table_dtype != DEFAULT_TABLE_DTYPE:
        conf["table_dtype"] = table_dtype
    return conf


def prepare_output(store: GraphStore, layer: int, conf: dict[str, Any], dim: int,
                   heads: int, train_rows: int | None = None,
                   chunk_rows: int | None = None) -> Path:
    """Create (or keep, when resuming the same configuration) the output arrays: the table,
    with `train_rows` the inductive table of the training nodes, and the transient projection
    (on the table's chunk grid, so projection chunk i and output chunk i cover the same rows),
    all in the configuration's table dtype."""
    run = store.run_dir(embed_stage(layer))
    prog = run / PROGRESS_FILE
    chash = config_hash(conf)
    resuming = prog.exists() and json.loads(prog.read_text()).get("config_hash") == chash
    keys = [embeddings_key(layer), *projection_keys(layer)]
    if train_rows is not None:
        keys.append(train_embeddings_key(layer))
    dtype = np.dtype(conf.get("table_dtype", DEFAULT_TABLE_DTYPE))
    if not (resuming and all(store.has(k) for k in keys)):
        info = store.create_array(embeddings_key(layer), (store.num_nodes, dim), dtype,
                                  chunk_rows)
        for key, width in zip(projection_keys(layer), (dim, heads)):
            store.create_array(key, (store.num_nodes, width), dtype, info.chunk_rows)
        if train_rows is not None:
            store.create_array(train_embeddings_key(layer), (train_rows, dim), dtype,
                               chunk_rows)
        tmp = prog.with_name(prog.name + ".tmp")
        with space_for(prog, tmp):
            tmp.write_text(json.dumps({"config_hash": chash}))
            os.replace(tmp, prog)
    return run


def pending_chunks(store: GraphStore, key: str) -> list[int]:
    store.remove_stale_partials(key)
    info = store.info(key)
    return [i for i in range(info.num_chunks) if not store.chunk_written(key, i)]


@dataclass(frozen=True)
class EmbedSpec:
    """What a chunk task needs to find its inputs on a worker (small: shipped with each task)."""
    store: str               # absolute path, the same on every worker
    layer: int
    max_edges: int
    device: str
    inductive: bool
    stamp: tuple             # store dir and weights (inode, mtime): the worker cache key
    model: str = ""          # the store holding the weights (encode), or "" for `store`
    blocks: tuple = ()       # source-block bounds when phase 2 streams (embed_stream)
    table_dtype: str = DEFAULT_TABLE_DTYPE   # in the worker cache key: another dtype means
                                             # recreated arrays, so no cached array metadata


def _context(spec: EmbedSpec) -> dict[str, Any]:
    """Block and input table of a layer: loaded once per worker process."""
    def make() -> dict[str, Any]:
        store = GraphStore(spec.store)
        device = device_name(spec.device)
        if device != "cpu":                  # only then does the stage use torch
            cluster.set_torch_threads()
        model = GraphStore(spec.model) if spec.model else store
        return {"store": store, "weights": load_block(model, spec.layer)[0], "device": device,
                "table": StoreRows(store, store.table_key(spec.layer - 1))}
    return cluster.worker_cached(("embed", spec), make)


def _graphs(spec: EmbedSpec) -> dict[str, Any]:
    """The projection (mapped only once it is complete) and the CSR each output reads."""
    def make() -> dict[str, Any]:
        store = GraphStore(spec.store)
        g = {"proj": None if spec.blocks else
             tuple(store.mmap(k) for k in projection_keys(spec.layer)),
             embeddings_key(spec.layer): (store.indptr(), StoreRows(store, INDICES), None)}
        if spec.inductive:
            g[train_embeddings_key(spec.layer)] = (*graph_for(store, True),
                                                   seed_nodes(store, True))
        return g
    store = _context(spec)["store"]
    stamp = cluster.file_stamp(store.path / projection_keys(spec.layer)[0] / "zarr.json")
    return cluster.worker_cached(("embed-graphs", spec, stamp), make)


def project_task(spec: EmbedSpec, i: int) -> int:
    """Phase 1 task: projection chunk i (every node's [h | a_src], once); returns its rows.

    Memory: chunk_rows * (12 F + 16 H C + 8 H) bytes beside the weights (the matmul runs in
    float64)."""
    ctx = _context(spec)
    store, keys = ctx["store"], projection_keys(spec.layer)
    a, b = store.info(keys[0]).chunk_bounds(i)
    h, a_src = project_rows(ctx["weights"], ctx["table"][a:b], ctx["device"])
    h = stored_values(store, keys[0], h, spec.layer, a)
    a_src = stored_values(store, keys[1], a_src, spec.layer, a)
    store.write_chunk(keys[1], i, a_src)     # the chunk of keys[0] marks the task done
    store.write_chunk(keys[0], i, h)
    return b - a


def stored_values(store: GraphStore, key: str, block: np.ndarray, layer: int,
                  first_row: int) -> np.ndarray:
    """`block` in the dtype of array `key`; a float16 array refuses values that float16
    cannot hold (|x| > 65504 would be stored as inf) with a one-line error."""
    dtype = store.info(key).dtype
    if dtype != np.float16:
        return block
    with np.errstate(over="ignore"):
        out = block.astype(np.float16)
    bad = ~np.isfinite(out) & np.isfinite(block)
    if bad.any():
        row = first_row + int(np.flatnonzero(bad.any(axis=tuple(range(1, bad.ndim))))[0])
        raise InputError(f"--table-dtype float16: layer {layer} has values beyond float16's "
                         f"range (|x| > {FLOAT16_MAX:.0f}) at row {row} of {key}; embed with "
                         f"--table-dtype float32")
    return out


def embed_task(spec: EmbedSpec, key: str, i: int) -> int:
    """Phase 2 task: compute and write output chunk i of `key`; returns the edges it read.

    Memory: the mapped projection (N (H C + H) 4 bytes, shared by the tasks of a machine
    through the page cache), one piece of at most `max_edges` edge ids, and
    chunk_rows * (12 F + 32 D) bytes of per-target state and output."""
    cluster.set_numba_threads()
    ctx = _context(spec)
    g = _graphs(spec)
    indptr, indices, targets = g[key]
    store = ctx["store"]
    a, b = store.info(key).chunk_bounds(i)
    ids = np.arange(a, b, dtype=np.int64) if targets is None else targets[a:b]
    x = ctx["table"][a:b] if targets is None else ctx["table"][ids]
    out = aggregate(ctx["weights"], g["proj"], indptr, indices, ids, x, spec.max_edges,
                    ctx["device"])
    store.write_chunk(key, i, stored_values(store, key, out, spec.layer, a))
    return int(indptr[ids + 1].sum() - indptr[ids].sum()) if len(ids) else 0


def embed_group_task(spec: EmbedSpec, key: str, chunks: tuple[int, ...]) -> int:
    """Streamed phase 2 task: output chunks `chunks` (consecutive) of `key` in one pass over
    the projection's source blocks; each chunk is written as soon as it is finished, so a
    killed task leaves whole chunks only. Returns the edges it read.

    Memory (embed_stream): the group's softmax state and edge ids, one source block, one
    piece of at most `max_edges` edges, and the finish of FINISH_ROWS targets."""
    cluster.set_numba_threads()
    ctx = _context(spec)
    indptr, indices, targets = _graphs(spec)[key]
    store = ctx["store"]
    info = store.info(key)
    spans = [info.chunk_bounds(i) for i in chunks]
    a, b = spans[0][0], spans[-1][1]
    ids = np.arange(a, b, dtype=np.int64) if targets is None else np.asarray(targets[a:b])
    if len(ids) == 0:
        return 0

    def read_x(r0: int, r1: int) -> np.ndarray:
        return ctx["table"][a + r0:a + r1] if targets is None else ctx["table"][ids[r0:r1]]

    def emit(j: int, out: np.ndarray) -> None:
        store.write_chunk(key, chunks[j], stored_values(store, key, out, spec.layer,
                                                        spans[j][0]))
    _streamed(spec, ctx, indptr, indices, ids, read_x, [lo - a for lo, _ in spans] + [b - a],
              emit)
    return int(indptr[ids + 1].sum() - indptr[ids].sum())


def _streamed(spec: EmbedSpec, ctx: dict[str, Any], indptr: np.ndarray, indices: Any,
              ids: np.ndarray, read_x: Any, cuts: list[int], emit: Any) -> None:
    """Output rows `ids` (ascending) with the projection read in `spec.blocks`, by plain
    reads; `emit(j, out)` takes the finished chunk j (rows cuts[j]:cuts[j+1])."""
    store, keys = ctx["store"], projection_keys(spec.layer)
    contiguous = _contiguous(ids)

    def own(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        if contiguous:
            return tuple(store.read_rows(k, int(ids[r0]), int(ids[r1 - 1]) + 1) for k in keys)
        return tuple(read_sorted_rows(store, k, ids[r0:r1]) for k in keys)
    cum = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(indptr[ids + 1] - indptr[ids], out=cum[1:])

    def sources(q0: int, q1: int) -> np.ndarray:
        if contiguous:
            base = int(indptr[ids[0]])
            return np.asarray(indices[base + q0:base + q1])
        return np.asarray(indices[segment_edges(indptr, ids, q0, q1, cum)])

    def block(s0: int, s1: int) -> tuple[np.ndarray, np.ndarray]:
        return store.read_rows(keys[0], s0, s1), store.read_rows(keys[1], s0, s1)
    stream_aggregate(ctx["weights"], block, spec.blocks, own, indptr, ids, sources, read_x,
                     cuts, emit, spec.max_edges, ctx["device"])


def _consecutive(chunks: list[int]) -> list[list[int]]:
    """`chunks` (ascending) cut into runs of consecutive ids: what one streamed task groups."""
    runs: list[list[int]] = []
    for i in chunks:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _output_blocks(store: GraphStore, layer: int, key: str, chunks: list[int]
                   ) -> list[tuple[int, int]]:
    """(rows, in-edges) of the output chunks `chunks` of `key`: what the planner sizes."""
    info = store.info(key)
    if key == embeddings_key(layer):
        ip, seeds = store.indptr(), None
    else:
        ip, seeds = graph_for(store, True)[0], seed_nodes(store, True)
    out = []
    for i in chunks:
        a, b = info.chunk_bounds(i)
        e = ip[b] - ip[a] if seeds is None else (ip[seeds[a:b] + 1] - ip[seeds[a:b]]).sum()
        out.append((b - a, int(e)))
    return out


def _drop_projection(store: GraphStore, layer: int) -> None:
    for key in projection_keys(layer):
        store.delete(key)


@writes_store("store_path", "embed layer {layer}")
def embed_layer(store_path: str | Path, layer: int, max_edges: int = DEFAULT_MAX_EDGES,
                device: str = "auto", client: Any = None,
                chunk_rows: int | None = None,
                model: str | Path | None = None,
                memory_limit: str | int = DEFAULT_MEMORY_LIMIT,
                source_blocks: int | None = None,
                table_dtype: str = DEFAULT_TABLE_DTYPE) -> dict[str, Any]:
    """Write layer L's table; chunk tasks run in-process (client None) or on a Dask client.

    Two passes over the output chunk grid: project every node once (phase 1), then aggregate
    each node's neighbourhood from the projection (phase 2). `chunk_rows` (a multiple of
    4096, used when the table is created) sets the task size; by default the store picks
    about 32 MB chunks. The task plan is the chunk grid minus the chunks already on disk, so
    a run killed at any point (client or worker) resumes with the chunks not yet written.
    `model`: another store whose trained layer L is applied to this store's graph (`encode`;
    no inductive training table then). `memory_limit`: what phase 2 may hold on one machine;
    when the projection and the running tasks' state do not fit, the projection is read in
    source blocks (`source_blocks` forces their number). Neither changes the table, so
    neither is part of the configuration: a rerun under another budget resumes.
    `table_dtype` ("float32" or "float16": the table, the inductive table and the projection)
    changes the stored values, so it is: a rerun with another dtype recomputes the layer."""
    store = GraphStore(Path(store_path).resolve())
    source = GraphStore(Path(model).resolve()) if model is not None else store
    if layer < 1:
        raise InputError(f"--layer: must be >= 1 (layer 0 is the node features), got {layer}")
    stage = embed_stage(layer)
    check_table_dtype(table_dtype)
    conf = embed_config(source, layer, table_dtype)
    if model is not None:
        conf["encoded"] = True
    limit = parse_size(str(memory_limit))
    if source_blocks is not None and source_blocks <= 0:
        raise InputError(f"--source-blocks: must be positive, got {source_blocks}")
    if max_edges <= 0:
        raise InputError(f"--max-edges: must be positive, got {max_edges}")
    if chunk_rows is not None and (chunk_rows <= 0 or chunk_rows % MIN_CHUNK_ROWS):
        raise InputError(f"--chunk-rows: must be a positive multiple of {MIN_CHUNK_ROWS}, "
                         f"got {chunk_rows}")
    if store.stage_complete(stage, conf) and store.has(embeddings_key(layer)):
        _drop_projection(store, layer)
        print(f"layer {layer}: embeddings already written with this configuration (skipping)")
        return store.stage_record(stage)
    meta = load_block(source, layer)[1]
    width = store.info(store.table_key(layer - 1)).shape[1]
    if width != meta["in_dim"] and model is not None:
        raise InputError(f"{store.path}: input width {width} of layer {layer} differs from "
                         f"{source.path}'s layer {layer} input width {meta['in_dim']}")
    if width != meta["in_dim"]:
        raise InputError(f"{store.path}: layer {layer} was trained on width {meta['in_dim']} "
                         f"but its input table has width {width}")
    dim, heads = meta["dim"], meta["heads"]
    inductive = bool(meta["inductive"]) and model is None
    keys = [embeddings_key(layer)] + ([train_embeddings_key(layer)] if inductive else [])
    train_rows = len(seed_nodes(store, True)) if inductive else None
    tasks = tasks_per_machine(client)
    if chunk_rows is None:
        chunk_rows = output_chunk_rows(store.num_nodes, store.num_edges, dim, heads, width,
                                       max_edges, limit, tasks, source_blocks,
                                       np.dtype(table_dtype).itemsize)
    # the graph and the input table are there, their chunks whole; the record is cleared
    # only then, so that bad input leaves the old record (and no new output) in place
    store.indptr(), store.indices(), store.table(layer - 1)
    store.clear_stage(stage)
    prepare_output(store, layer, conf, dim, heads, train_rows, chunk_rows)
    spec = EmbedSpec(str(store.path), int(layer), int(max_edges), str(device), inductive,
                     (cluster.file_stamp(store.path), weights_stamp(source, layer)),
                     str(source.path) if model is not None else "", table_dtype=table_dtype)
    t0 = time.time()
    todo = {key: pending_chunks(store, key) for key in keys}
    runs = [(key, run) for key in keys for run in _consecutive(todo[key])]
    plan = plan_embed(store.num_nodes, dim, heads, width,
                      store.info(store.table_key(layer - 1)).dtype.itemsize,
                      store.info(INDICES).dtype.itemsize,
                      [_output_blocks(store, layer, key, run) for key, run in runs],
                      store.info(embeddings_key(layer)).chunk_rows, int(max_edges), limit,
                      tasks, source_blocks,
                      store.info(projection_keys(layer)[0]).dtype.itemsize)
    print(plan.line(layer), flush=True)
    if plan.mode == "streamed":
        spec = replace(spec, blocks=plan.bounds)
    if any(todo.values()):
        pkey = projection_keys(layer)[0]
        info = store.info(pkey)
        chunks = pending_chunks(store, pkey)
        rows = [int(np.diff(info.chunk_bounds(i))[0]) for i in chunks]
        cluster.run_tasks(client, project_task, [(spec, i) for i in chunks],
                          f"project layer {layer}", unit="node", weights=rows,
                          total=info.num_rows, initial=info.num_rows - sum(rows))
    edges = 0
    for key in keys:
        info = store.info(key)
        if plan.mode == "streamed":     # a task: a group of consecutive chunks
            work = [tuple(runs[r][1][f:f + c]) for r, f, c in plan.groups if runs[r][0] == key]
            fn, args = embed_group_task, [(spec, key, w) for w in work]
        else:                           # a task: one chunk
            work = [(i,) for i in todo[key]]
            fn, args = embed_task, [(spec, key, i) for i in todo[key]]
        rows = [sum(int(np.diff(info.chunk_bounds(i))[0]) for i in w) for w in work]
        done = cluster.run_tasks(client, fn, args, f"embed layer {layer}", unit="node",
                                 weights=rows, total=info.num_rows,
                                 initial=info.num_rows - sum(rows))
        edges += sum(done)
    if client is None:
        cluster.clear_cache()
    for key in keys:        # every task returned: partial chunks are of workers killed mid-write
        store.remove_stale_partials(key, finished=True)
    secs = time.time() - t0
    store.mark_stage(stage, conf, seconds=round(secs, 2), edges=int(edges), plan=plan.record())
    _drop_projection(store, layer)
    return store.stage_record(stage)
