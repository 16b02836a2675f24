"""`embed` when the projection does not fit the memory budget: the plan, and the streamed
aggregation of one group of output chunks.

Why it is exact: a CSR row lists its sources ascending, so the edges of a target that come
from the node range [s0, s1) are one contiguous sub-range of its row, and the online softmax
state of `gatkernel` (running max, denominator, weighted sum) merges pieces of a row in any
order. A task therefore holds the softmax state of a group of consecutive output chunks,
reads the projection in node-range source blocks, in order, with plain sequential reads
(`GraphStore.read_rows`: no memory map, so nothing of it stays in RSS or competes for the
page cache), folds each target's sub-range of the block into the target's state, then
finishes and writes the group's chunks one by one. The result equals the in-memory path up
to float32 summation order (1e-6).

Why groups: every task reads the whole projection once, so the bytes read are (tasks) x
(projection). The state a target needs while the blocks stream by is small, its softmax
state and its edge ids (4 (3 H + D) + 8 bytes and 4-8 bytes an edge: about 0.4 KB at width
64 and degree 20); the input rows, the skip term and the output are needed only to finish,
in sub-ranges of FINISH_ROWS. The planner gives each running task's share of
`--memory-limit` to one source block (a quarter of what is left after the fixed part) and to
as many whole output chunks as the rest holds (at 1 B edges, 50 M nodes, 2 GB: 15 groups
instead of 191 single-chunk tasks, 0.1 TB read instead of 1.2 TB). A float16 projection
(`--table-dtype float16`) counts 2 bytes a value, so twice the rows fit a source block.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from lrgi_ooc.nn.blockweights import GATWeights, matmul_t, mix_residual
from lrgi_ooc.store.layout import MIN_CHUNK_ROWS, GraphStore, chunk_rows_for

DEFAULT_MEMORY_LIMIT = "2GB"
MIN_SOURCE_ROWS = 4096        # a source block never gets smaller unless --source-blocks says so
FINISH_ROWS = 65536           # targets initialised / finished at a time by a streamed task


# ------------------------------------------------------------------ the plan
def state_row_bytes(dim: int, heads: int, feat: int) -> int:
    """Per-target bytes of finishing a target (and of the in-memory path's chunk): its own
    projection row, the softmax state and destination logits, the input row (and its float64
    copy for the skip matmul), the skip term (float64 then float32) and the output row."""
    return 4 * (dim + heads) + 12 * heads + 4 * dim + 12 * feat + 12 * dim + 4 * dim


def lean_row_bytes(dim: int, heads: int) -> int:
    """Per-target bytes a streamed task holds while the source blocks stream by: the softmax
    state (max, denominator, destination logits, weighted sum) and its id within a block."""
    return 4 * (3 * heads + dim) + 8


def edge_piece_bytes(edges: int, heads: int) -> int:
    """A piece of edge ids with its positions, local ids, logits and block-range counts."""
    return edges * (40 + 4 * heads)


def tasks_per_machine(client: Any) -> int:
    """Tasks that run at once on the busiest machine (threads of its workers); 1 in-process."""
    if client is None:
        return 1
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    per_host: Counter[str] = Counter()
    for w in workers:
        per_host[str(w.get("host", ""))] += int(w.get("nthreads", 1))
    return max(per_host.values(), default=1)


def task_bytes(dim: int, heads: int, feat: int, chunk_rows: int, piece: int) -> int:
    """One running in-memory task beside the projection: its chunk's state and an edge piece."""
    return chunk_rows * state_row_bytes(dim, heads, feat) + edge_piece_bytes(piece, heads)


def group_fixed_bytes(dim: int, heads: int, feat: int, chunk_rows: int, piece: int) -> int:
    """What a streamed task holds beside its group's state and its source block: the
    finish of one sub-range, one chunk's float32 output and an edge piece."""
    return (min(chunk_rows, FINISH_ROWS) * state_row_bytes(dim, heads, feat)
            + chunk_rows * dim * 4 + edge_piece_bytes(piece, heads))


def fits_in_memory(num_nodes: int, dim: int, heads: int, feat: int, chunk_rows: int,
                   piece: int, limit: int, tasks: int, table_itemsize: int = 4) -> bool:
    """The mapped projection (shared by a machine's tasks through the page cache) plus each
    running task's state within the budget."""
    proj = num_nodes * (dim + heads) * table_itemsize
    return proj + tasks * task_bytes(dim, heads, feat, chunk_rows, piece) <= limit


def output_chunk_rows(num_nodes: int, num_edges: int, dim: int, heads: int, feat: int,
                      max_edges: int, limit: int, tasks: int,
                      source_blocks: int | None, table_itemsize: int = 4) -> int | None:
    """Rows per output chunk for a new table: None (the store's default, about 32 MB) unless
    the run streams and one default chunk's state, edge ids and float32 output would take more
    than a quarter of a task's share of the budget; then the largest multiple of
    MIN_CHUNK_ROWS within it. (The finish and the edge piece do not grow with the chunk:
    smaller chunks would not shrink them, only multiply the files.)"""
    default = chunk_rows_for(num_nodes, dim * table_itemsize)
    if source_blocks is None and fits_in_memory(num_nodes, dim, heads, feat, default,
                                                 min(max_edges, num_edges), limit, tasks,
                                                 table_itemsize):
        return None
    quarter = limit // (4 * tasks)
    deg = num_edges / max(num_nodes, 1)
    per_row = int(lean_row_bytes(dim, heads) + 8 * deg + 4 * dim)
    if default * per_row <= quarter:
        return None
    rows = quarter // per_row // MIN_CHUNK_ROWS * MIN_CHUNK_ROWS
    return max(MIN_CHUNK_ROWS, int(rows))


@dataclass(frozen=True)
class EmbedPlan:
    """How phase 2 of `embed` runs; recorded in the stage record as `plan`."""
    mode: str                    # "in-memory" (the mapped projection) or "streamed"
    source_blocks: int           # 1 in memory
    bounds: tuple[int, ...]      # node ids cutting the source blocks (streamed), else ()
    output_blocks: int           # tasks this run computes (groups of output chunks, streamed)
    bytes_read: int              # phase 2's reads: projection, edge ids, input rows
    projection_bytes: int
    memory_limit: int
    tasks_at_once: int           # per machine
    groups: tuple[tuple[int, int, int], ...] = ()   # streamed: (run, first, count) per task
    output_chunks: int = 0       # output chunks this run computes

    def record(self) -> dict[str, Any]:
        return {"mode": self.mode, "source_blocks": self.source_blocks,
                "output_blocks": self.output_blocks, "output_chunks": self.output_chunks,
                "bytes_read": self.bytes_read, "projection_bytes": self.projection_bytes,
                "memory_limit": self.memory_limit, "tasks_at_once": self.tasks_at_once}

    def line(self, layer: int) -> str:
        out = _count(self.output_blocks, "output block")
        if self.mode == "streamed":
            what = (f"{_count(self.source_blocks, 'source block')} x {out} "
                    f"({_count(self.output_chunks, 'chunk')})")
        else:
            what = (f"in memory (projection {_size(self.projection_bytes)} within "
                    f"{_size(self.memory_limit)}), {out}")
        return f"embed layer {layer}: plan: {what}, {_size(self.bytes_read)} to read"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale // 10 or unit == "KB":
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def block_bounds(num_nodes: int, blocks: int) -> tuple[int, ...]:
    """`blocks` node ranges of near-equal size (at most one per node)."""
    blocks = max(1, min(int(blocks), max(num_nodes, 1)))
    return tuple(int(b) for b in np.linspace(0, num_nodes, blocks + 1).round().astype(np.int64))


def group_runs(runs: Sequence[Sequence[tuple[int, int]]], room: int, per_row: int,
               per_edge: int) -> tuple[tuple[int, int, int], ...]:
    """Consecutive chunks of each run, as many as `room` holds (at least one a group)."""
    groups = []
    for r, run in enumerate(runs):
        first, used = 0, 0
        for i, (rows, edges) in enumerate(run):
            cost = rows * per_row + edges * per_edge
            if i > first and used + cost > room:
                groups.append((r, first, i - first))
                first, used = i, 0
            used += cost
        if len(run) > first:
            groups.append((r, first, len(run) - first))
    return tuple(groups)


def plan_embed(num_nodes: int, dim: int, heads: int, feat: int, feat_itemsize: int,
               index_itemsize: int, runs: Sequence[Sequence[tuple[int, int]]],
               chunk_rows: int, max_edges: int, limit: int, tasks: int,
               source_blocks: int | None = None, table_itemsize: int = 4) -> EmbedPlan:
    """In memory when the projection and the running tasks' state fit `limit` (and no
    source-block count is forced). Otherwise each running task's share holds one source
    block (a quarter of what its fixed part leaves, or 1/S of the projection when S is
    forced) and the state of a group of consecutive output chunks (the rest).

    runs: for each run of consecutive output chunks to compute, (rows, in-edges) of each
    chunk; table_itemsize: bytes of one stored projection value (4 float32, 2 float16)."""
    blocks = [b for run in runs for b in run]
    proj = num_nodes * (dim + heads) * table_itemsize
    rows = sum(r for r, _ in blocks)
    edges = sum(e for _, e in blocks)
    inputs = rows * feat * feat_itemsize
    piece = min(max_edges, max((e for _, e in blocks), default=0))
    if source_blocks is None and fits_in_memory(num_nodes, dim, heads, feat, chunk_rows,
                                                 piece, limit, tasks, table_itemsize):
        return EmbedPlan("in-memory", 1, (), len(blocks),
                         (proj if blocks else 0) + edges * index_itemsize + inputs,
                         proj, limit, tasks, output_chunks=len(blocks))
    row_bytes = (dim + heads) * table_itemsize
    room = max(0, limit // tasks - group_fixed_bytes(dim, heads, feat, chunk_rows, piece))
    if source_blocks is None:
        block_rows = max(MIN_SOURCE_ROWS, room // 4 // row_bytes)
        source_blocks = math.ceil(num_nodes / block_rows) if num_nodes else 1
    bounds = block_bounds(num_nodes, source_blocks)
    s = len(bounds) - 1
    biggest = max(np.diff(bounds), default=0) * row_bytes
    groups = group_runs(runs, max(0, room - int(biggest)), lean_row_bytes(dim, heads),
                        index_itemsize)
    read = (len(groups) * proj + rows * row_bytes + edges * index_itemsize + inputs)
    return EmbedPlan("streamed", s, bounds, len(groups), int(read), proj, limit, tasks,
                     groups, len(blocks))


# ------------------------------------------------------------------ the computation
def read_sorted_rows(store: GraphStore, key: str, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (ascending) of a store array by plain reads of the span they cover within
    each chunk: one chunk's span in memory at a time."""
    info = store.info(key)
    ids = np.asarray(ids, dtype=np.int64)
    out = np.empty((len(ids),) + info.row_shape, info.dtype)
    if len(ids) == 0:
        return out
    chunk = ids // info.chunk_rows
    cuts = [0, *(np.flatnonzero(np.diff(chunk)) + 1).tolist(), len(ids)]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        a = int(ids[lo])
        out[lo:hi] = store.read_rows(key, a, int(ids[hi - 1]) + 1)[ids[lo:hi] - a]
    return out


def stream_aggregate(w: GATWeights, read_block: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                     bounds: Sequence[int],
                     read_own: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                     indptr: np.ndarray, targets: np.ndarray,
                     read_sources: Callable[[int, int], np.ndarray],
                     read_x: Callable[[int, int], np.ndarray], cuts: Sequence[int],
                     emit: Callable[[int, np.ndarray], None], max_edges: int,
                     device: str = "cpu") -> None:
    """`embed.aggregate` for a group of output chunks, the projection read block by block.

    targets: the group's ascending node ids; cuts: row offsets of its output chunks
    (0, ..., len(targets)); read_block(s0, s1): projection rows (h, a_src) of nodes [s0, s1);
    read_own(r0, r1) / read_x(r0, r1): the projection / input rows of targets[r0:r1];
    read_sources(q0, q1): edges [q0, q1) of the targets' concatenated in-neighbour lists
    (ascending within each list), read once; emit(j, out): chunk j, finished (float32)."""
    from lrgi_ooc.nn import gatkernel

    H, C = w.att_src.shape
    slope = np.float32(w.negative_slope)
    targets = np.asarray(targets, dtype=np.int64)
    R = len(targets)
    m, s, a_dst, acc = gatkernel.empty_state(R, H, C)
    for r0 in range(0, R, FINISH_ROWS):
        r1 = min(R, r0 + FINISH_ROWS)
        own = tuple(gatkernel.kernel_array(p) for p in read_own(r0, r1))
        gatkernel.init_state(own[0], own[1], w.att_dst, np.arange(r1 - r0, dtype=np.int64),
                             slope, a_dst[r0:r1], m[r0:r1], s[r0:r1], acc[r0:r1])
        del own
    deg = (indptr[targets + 1] - indptr[targets]).astype(np.int64)
    cum = np.zeros(R + 1, dtype=np.int64)
    np.cumsum(deg, out=cum[1:])
    del deg
    total = int(cum[-1])
    src_all = read_sources(0, total) if total else np.zeros(0, np.int64)
    pieces = []
    for q0 in range(0, total, max_edges):
        q1 = min(q0 + max_edges, total)
        r0 = int(np.searchsorted(cum, q0, side="right")) - 1
        r1 = int(np.searchsorted(cum, q1, side="left"))
        starts = np.clip(cum[r0:r1] - q0, 0, q1 - q0)
        ends = np.clip(cum[r0 + 1:r1 + 1] - q0, 0, q1 - q0)
        pieces.append((q0, q1, r0, r1, starts, ends))
    logits = np.empty((min(max_edges, total), H), np.float32)
    # each piece's cursor: where its rows' edges from the next source block start (blocks
    # come in ascending node order and every row is ascending)
    cursors = [starts.copy() for _, _, _, _, starts, _ in pieces]
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        h_blk, a_blk = (gatkernel.kernel_array(p) for p in read_block(int(s0), int(s1)))
        local = targets - s0                        # a target's own id within the block
        for (q0, q1, r0, r1, starts, ends), lo in zip(pieces, cursors):
            src = src_all[q0:q1]
            hi = np.empty_like(lo)
            gatkernel.advance(src, lo, ends, int(s1), hi)
            if not np.any(hi > lo):
                continue
            # edges from outside the block lie outside every [lo, hi): clipped, they are
            # only ever prefetched, never read
            loc = np.clip(src - s0, 0, s1 - s0 - 1).astype(src.dtype, copy=False)
            gatkernel.accumulate(h_blk, a_blk, local[r0:r1], loc, lo, hi, a_dst[r0:r1],
                                 slope, m[r0:r1], s[r0:r1], acc[r0:r1], logits)
            lo[:] = hi
        del h_blk, a_blk, local
    del src_all, pieces
    for j, (c0, c1) in enumerate(zip(cuts[:-1], cuts[1:])):
        out = np.empty((c1 - c0, H * C), np.float32)
        for r0 in range(c0, c1, FINISH_ROWS):
            r1 = min(c1, r0 + FINISH_ROWS)
            x = read_x(r0, r1)
            skip = matmul_t(x, w.skip, device)
            gatkernel.finish(s[r0:r1], acc[r0:r1], w.bias, skip, out[r0 - c0:r1 - c0])
            if w.residual:
                mix_residual(out[r0 - c0:r1 - c0], x, w.residual_weights)
        emit(j, out)
