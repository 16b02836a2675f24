"""Out-of-core remap of arbitrary node ids (sparse int64 or strings) to dense ids [0, N).

Dense ids follow the external ids' order (ascending integers, bytewise strings), so reruns,
Dask runs and the lookup (`store.ids`) agree, and node/ids is both the dictionary and its
sorted index. The passes, each within the memory budget whatever the number of ids:

A. partition: every edge goes to the bucket file of its source's key range, every
   destination id to the key file of its own range (ranges are order-preserving key
   intervals, `idcols.key`); a bucket too large for the budget is split again by the
   observed key range (or, for strings sharing a prefix, by the next 7 bytes);
B. per group of consecutive buckets (ascending key order): the distinct ids (sorted), their
   dense ids (a running offset), the edges' sources rewritten, and the edges routed to the
   group of their destination (one file per source group: a Dask task per group);
C. per destination group: the destinations rewritten; these (src, dst) chunks feed the
   unchanged CSR build, as a stream or as Dask parts.
Disk: about 24 (A) + 16 (B) bytes per edge for int64 ids, more for long strings.
"""
from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.memory import return_freed_memory
from lrgi_ooc.base.progress import bar
from lrgi_ooc.base.readahead import read_ahead
from lrgi_ooc.store import idcols
from lrgi_ooc.store.idcols import INT, Col

FANOUT = 256


@dataclass
class Node:
    """A key interval: ids whose keys at the levels above `depth` equal the parent path and
    whose key at `depth` lies in [lo, hi]. Internal nodes split by `(key - base) >> shift`."""
    depth: int
    lo: int
    hi: int
    name: str
    nbytes: int = 0
    children: dict[int, "Node"] | None = None
    child_depth: int = 0
    base: int = 0
    shift: int = 0
    leaf: int = -1

    def route(self, col: Col) -> np.ndarray:
        k = idcols.key(col, self.child_depth)
        return ((k - np.uint64(self.base)) >> np.uint64(self.shift)).astype(np.int64)


class _Buffers:
    """Appends to many bucket files, flushed when the buffered bytes pass `limit`."""

    def __init__(self, limit: int):
        self.limit = max(limit, 1 << 20)
        self.blocks: dict[Path, list[list[Col]]] = defaultdict(list)
        self.size = 0

    def add(self, path: Path, cols: list[Col]) -> None:
        if not idcols.length(cols[0]):
            return
        self.blocks[path].append(cols)
        self.size += sum(c.nbytes for c in cols)
        if self.size > self.limit:
            self.flush()

    def flush(self) -> None:
        for path, blocks in self.blocks.items():
            cols = [idcols.concat([b[i] for b in blocks], idcols.kind_of(blocks[0][i]))
                    for i in range(len(blocks[0]))]
            with open(path, "ab") as f:
                idcols.save(f, cols)
        self.blocks.clear()
        self.size = 0


def _select(col: Col, mask: np.ndarray) -> Col:
    return idcols.take(col, np.flatnonzero(mask))


def _split(v: np.ndarray, cols: list[Col]) -> Iterator[tuple[int, list[Col]]]:
    """(child, the rows of `cols` routed to it) for every child present, in order; `v`: the
    child number of each row (0..255)."""
    counts = np.bincount(v, minlength=FANOUT)
    order = np.argsort(v.astype(np.uint8), kind="stable")      # a radix sort for uint8
    parts = [idcols.take(c, order) for c in cols]
    ends = np.cumsum(counts)
    for c in np.flatnonzero(counts):
        a, b = int(ends[c] - counts[c]), int(ends[c])
        yield int(c), [_slice(p, a, b) for p in parts]


def _slice(col: Col, a: int, b: int) -> Col:
    if isinstance(col, idcols.StrCol):
        off = col.offsets[a:b + 1]
        return idcols.StrCol(off - off[0], col.data[off[0]:off[-1]])
    return col[a:b]


@dataclass
class Plan:
    """What pass B tasks need: picklable, paths only."""
    work: str
    kind: str
    groups: list[list[str]]          # per group: its bucket names, ascending
    tree: Node
    leaf_group: list[int]
    budget: int
    chunk: int = 1 << 20                 # edges per chunk handed to the CSR build
    offsets: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


class Remap:
    """Passes A and the splits (this process), then B (tasks) and C (chunks or parts)."""

    def __init__(self, work: Path, kind: str, memory_limit: int, source: str,
                 chunk: int = 1 << 20):
        self.work = Path(work) / "remap"
        shutil.rmtree(self.work, ignore_errors=True)
        (self.work / "buckets").mkdir(parents=True)
        self.kind, self.source, self.chunk = kind, source, chunk
        self.budget = max(memory_limit // 8, 1 << 20)     # bytes of ids one group may hold
        bits = idcols.KEY_BITS[kind]
        self.root = Node(0, 0, (1 << bits) - 1, "r", children={}, child_depth=0, base=0,
                         shift=bits - 8)
        self.buffers = _Buffers(memory_limit // 4)
        self.leaves: list[Node] = []
        self.plan: Plan | None = None

    # ------------------------------------------------------------------ pass A
    def _files(self, node: Node) -> tuple[Path, Path]:
        b = self.work / "buckets"
        return b / f"{node.name}.edges", b / f"{node.name}.keys"

    def _child(self, node: Node, v: int) -> Node:
        c = node.children.get(v)
        if c is None:
            lo = node.base + (v << node.shift)
            hi = min(lo + (1 << node.shift) - 1, node.hi if node.child_depth == node.depth
                     else (1 << idcols.KEY_BITS[self.kind]) - 1)
            c = node.children[v] = Node(node.child_depth, lo, hi, f"{node.name}.{v}")
        return c

    def _scatter(self, node: Node, src: Col, dst: Col | None, keys: Col | None) -> None:
        """Route edges (by source) and destination ids into `node`'s children: one stable
        counting sort of the child numbers (< 256) per block, then contiguous slices."""
        if src is not None and idcols.length(src):
            for c, (s, d) in _split(node.route(src), [src, dst]):
                child = self._child(node, c)
                child.nbytes += s.nbytes + d.nbytes
                self.buffers.add(self._files(child)[0], [s, d])
        if keys is not None and idcols.length(keys):
            for c, (k,) in _split(node.route(keys), [keys]):
                child = self._child(node, c)
                child.nbytes += k.nbytes
                self.buffers.add(self._files(child)[1], [k])

    def partition(self, chunks: Iterator[tuple[Col, Col]], total: int | None) -> None:
        return_freed_memory()
        with bar(total, "remap: partition ids", "edges") as pb:
            for src, dst in chunks:
                self._scatter(self.root, src, dst, dst)
                pb.update(idcols.length(src))
        self.buffers.flush()
        _release_arrow_memory()
        for v in sorted(self.root.children):
            self._resolve(self.root.children[v])
        self._group()

    # ------------------------------------------------------------------ splits
    def _blocks(self, node: Node) -> Iterator[tuple[Col, Col | None, Col | None]]:
        e, k = self._files(node)
        for s, d in idcols.load_blocks(e, 2):
            yield s, d, None
        for (kk,) in idcols.load_blocks(k, 1):
            yield None, None, kk

    def _range(self, node: Node, depth: int) -> tuple[int, int, int]:
        lo, hi, deepest = None, None, 0
        for s, _, k in self._blocks(node):
            for col in (s, k):
                if col is not None and idcols.length(col):
                    key = idcols.key(col, depth)
                    a, b = int(key.min()), int(key.max())
                    lo = a if lo is None else min(lo, a)
                    hi = b if hi is None else max(hi, b)
                    deepest = max(deepest, idcols.max_depth(col))
        return lo, hi, deepest

    def _resolve(self, node: Node) -> None:
        if node.nbytes <= self.budget:
            self._leaf(node)
            return
        depth = node.depth
        lo, hi, deepest = self._range(node, depth)
        while lo == hi and depth < deepest:          # strings sharing their next 7 bytes
            depth += 1
            lo, hi, _ = self._range(node, depth)
        if lo == hi:                                 # one id only (a hub): fits whatever
            self._leaf(node)
            return
        node.children, node.child_depth, node.base = {}, depth, lo
        node.shift = max(0, (hi - lo).bit_length() - 8)
        if depth == node.depth:
            node.lo, node.hi = lo, hi
        for s, d, k in self._blocks(node):
            self._scatter(node, s, d, k)
        self.buffers.flush()
        for f in self._files(node):
            f.unlink(missing_ok=True)
        for v in sorted(node.children):
            self._resolve(node.children[v])

    def _leaf(self, node: Node) -> None:
        node.leaf = len(self.leaves)
        self.leaves.append(node)

    def _group(self) -> None:
        groups: list[list[str]] = []
        leaf_group, size = [], None
        for leaf in self.leaves:
            if size is None or size + leaf.nbytes > self.budget:
                groups.append([])
                size = 0
            groups[-1].append(leaf.name)
            size += leaf.nbytes
            leaf_group.append(len(groups) - 1)
        for g in range(len(groups)):
            (self.work / "routed" / str(g)).mkdir(parents=True, exist_ok=True)
        self.plan = Plan(str(self.work), self.kind, groups, self.root, leaf_group, self.budget,
                         self.chunk)

    # ------------------------------------------------------------------ passes B and C
    def assign(self, client: Any = None) -> int:
        """Pass B over every group (Dask tasks with a client); returns N."""
        from lrgi_ooc.cluster import tasks as cluster
        p = self.plan
        counts = cluster.run_tasks(client, group_task, [(p, g) for g in range(len(p.groups))],
                                   "remap: assign dense ids", unit="group")
        p.counts = [int(c) for c in counts]
        p.offsets = list(np.concatenate([[0], np.cumsum(p.counts)[:-1]]).astype(int))
        if not sum(p.counts):
            raise InputError(f"{self.source}: the edge list is empty")
        return int(sum(p.counts))

    def parts(self) -> list[Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]]:
        return [Rewritten(self.plan, h) for h in range(len(self.plan.groups))]

    def chunks(self) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
        parts = self.parts()

        def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for part in parts:
                yield from part()
        return gen

    def ids(self) -> Iterator[Col]:
        """The dictionary in dense-id order: each group's sorted distinct ids."""
        for g in range(len(self.plan.groups)):
            for (u,) in idcols.load_blocks(_uniq_path(self.plan, g), 1):
                yield u

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)

    def written(self) -> None:
        """The ids are in the store (nothing of them is held here)."""


def _release_arrow_memory() -> None:
    """Hand the pages Arrow's pool kept after reading the input back to the OS (the CSR
    build that follows needs the budget)."""
    import pyarrow as pa
    pa.default_memory_pool().release_unused()


def _uniq_path(p: Plan, g: int) -> Path:
    return Path(p.work) / f"uniq-{g}.bin"


def _leaf_of(node: Node, col: Col, out: np.ndarray, idx: np.ndarray) -> None:
    if node.children is None:
        out[idx] = node.leaf
        return
    v = node.route(col)
    for c in np.unique(v):
        m = np.flatnonzero(v == c)
        _leaf_of(node.children[int(c)], idcols.take(col, m), out, idx[m])


def _leaf_lows(tree: Node) -> np.ndarray:
    """Integer ids have one key level, so the leaves are ascending key intervals: the leaf of
    a key is found by one search over their lower bounds."""
    lows: list[int] = []

    def walk(node: Node) -> None:
        if node.children is None:
            lows.append(node.lo)
            return
        for v in sorted(node.children):
            walk(node.children[v])
    walk(tree)
    return np.array(lows, dtype=np.uint64)


def leaf_of(tree: Node, col: Col, lows: np.ndarray | None = None) -> np.ndarray:
    """The leaf (bucket) index of every id of `col` (ids that the partition saw)."""
    if not isinstance(col, idcols.StrCol):
        lows = _leaf_lows(tree) if lows is None else lows
        return np.searchsorted(lows, idcols.key(col, 0), side="right").astype(np.int64) - 1
    out = np.full(idcols.length(col), -1, np.int64)
    _leaf_of(tree, col, out, np.arange(idcols.length(col)))
    return out


def _distinct(blocks: Iterator[Col], kind: str, budget: int) -> Col:
    """Sorted distinct ids of a stream of blocks (merged every `budget` bytes)."""
    acc: list[Col] = []
    size = 0
    for b in blocks:
        acc.append(idcols.distinct(b))
        size += acc[-1].nbytes
        if size > budget and len(acc) > 1:
            acc = [idcols.distinct(idcols.concat(acc, kind))]
            size = acc[0].nbytes
    return idcols.unique_sorted(idcols.concat(acc, kind))


def group_task(p: Plan, g: int) -> int:
    """Pass B for group g: its distinct ids (saved), its edges' sources rewritten and routed
    by destination into routed/<h>/<g>.bin. Returns the group's number of distinct ids."""
    work = Path(p.work)
    files = [(work / "buckets" / f"{n}.edges", work / "buckets" / f"{n}.keys")
             for n in p.groups[g]]

    def ids() -> Iterator[Col]:
        for e, k in files:
            for s, _ in idcols.load_blocks(e, 2):
                yield s
            for (kk,) in idcols.load_blocks(k, 1):
                yield kk
    uniq = _distinct(ids(), p.kind, p.budget)
    tmp = _uniq_path(p, g).with_suffix(f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        idcols.save(f, [uniq])
    os.replace(tmp, _uniq_path(p, g))
    # the offset is not known yet (tasks run in any order): sources are written as ranks
    routed = _Buffers(p.budget // 4)        # small blocks: pass C runs beside the CSR build
    lows = _leaf_lows(p.tree) if p.kind == INT and len(p.groups) > 1 else None
    for e, _ in files:
        for s, d in idcols.load_blocks(e, 2):
            r = idcols.rank(s, uniq)
            to = np.zeros(len(r), np.int64) if len(p.groups) == 1 else \
                np.asarray(p.leaf_group, np.int64)[leaf_of(p.tree, d, lows)]
            for h in np.flatnonzero(np.bincount(to)):
                m = to == h
                routed.add(work / "routed" / str(int(h)) / f"{g}.part", [r[m], _select(d, m)])
    routed.flush()
    for h in range(len(p.groups)):
        part = work / "routed" / str(h) / f"{g}.part"
        if part.exists():
            os.replace(part, part.with_suffix(".bin"))
    return idcols.length(uniq)


@dataclass(frozen=True)
class Rewritten:
    """Pass C for destination group h: (dense src, dense dst) chunks (a picklable part)."""
    plan: Plan
    h: int

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The CSR build reads its input twice (a counting pass, then the build): the first
        read rewrites the destinations and keeps the dense pairs (16 bytes per edge), the
        second streams them back."""
        p = self.plan
        done = Path(p.work) / "dense" / f"{self.h}.bin"
        step = p.chunk
        if done.exists():
            for src, dst in idcols.load_blocks(done, 2):
                for a in range(0, len(src), step):
                    yield src[a:a + step], dst[a:a + step]
            return
        done.parent.mkdir(exist_ok=True)
        tmp = done.with_suffix(f".tmp-{os.getpid()}")
        uniq = next(iter(idcols.load_blocks(_uniq_path(p, self.h), 1)))[0]
        off = np.int64(p.offsets[self.h])
        with open(tmp, "wb") as f:
            for g in range(len(p.groups)):
                part = Path(p.work) / "routed" / str(self.h) / f"{g}.bin"
                for r, d in idcols.load_blocks(part, 2):
                    # one lookup per stored block (a string lookup hashes `uniq` on every
                    # call), handed on in the CSR build's own chunk size
                    src, dst = r + np.int64(p.offsets[g]), idcols.rank(d, uniq) + off
                    del r, d
                    idcols.save(f, [src, dst])
                    for a in range(0, len(src), step):
                        yield src[a:a + step], dst[a:a + step]
        os.replace(tmp, done)


# ------------------------------------------------------------------ deciding
def needs_remap(kind: str, lo: int, hi: int, num_nodes: int | None, num_edges: int) -> bool:
    """`--ids auto`: strings always; integers when negative or so sparse that N = max id + 1
    would be more than 4 ids per edge endpoint (mostly isolated nodes). A given
    `--num-nodes` says the ids are dense: they are then checked against it, not remapped."""
    if kind != INT:
        return True
    if num_nodes is not None:
        return False
    if lo < 0:
        return True
    return hi + 1 > 8 * max(num_edges, 1) and hi + 1 > (1 << 20)


# ------------------------------------------------------------------ a dictionary that fits
# the partitioned passes can be forced (tests, benchmarks): LRGI_OOC_REMAP_IN_MEMORY=0
IN_MEMORY = os.environ.get("LRGI_OOC_REMAP_IN_MEMORY", "1") != "0"


class InMemory:
    """The same remap when the dictionary fits the budget (most graphs: 10 M int64 ids take
    about 350 MB): one pass hashes every endpoint into the dictionary and keeps its entry
    number in one file (4 bytes an endpoint); the CSR build's read maps those to dense ids by
    a gather. Same dense ids, same store, no bucket files."""

    def __init__(self, work: Path, kind: str, memory_limit: int, source: str,
                 chunk: int = 1 << 20):
        self.work = Path(work) / "remap-mem"
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.kind, self.source, self.chunk = kind, source, chunk
        self.budget = max(memory_limit // 8, 1 << 20)
        self.uniq: Col | None = None
        self.entry_rank: np.ndarray | None = None
        self.input: Callable[[], Iterator[tuple[Col, Col]]] | None = None

    def collect(self, chunks: Callable[[], Iterator[tuple[Col, Col]]],
                total: int | None) -> bool:
        """The distinct ids, or False (nothing kept) as soon as they outgrow the budget: one
        hash dictionary for the whole pass (`store.iddict`), the raw file keeps each
        endpoint's entry number, and the CSR build's read maps entries to ranks (a gather)."""
        from lrgi_ooc.store import iddict
        d = (iddict.StrDict if self.kind == idcols.STR else iddict.IntDict)(limit=self.budget)
        return_freed_memory()
        raw = self.work / "raw.bin"
        with bar(total, "remap: distinct ids", "edges") as pb, open(raw, "wb") as f:
            for s, t in read_ahead(chunks()):
                try:
                    pair = [d.add(s), d.add(t)]
                except OverflowError:
                    pair = None
                if pair is None or d.nbytes > self.budget:  # does not fit: partitioned passes
                    del d, s, t, pair
                    _release_arrow_memory()      # the pages the partial read kept (94 MB of
                    return False                 # a 256 MB budget, measured)
                idcols.save(f, pair)
                pb.update(idcols.length(s))
        if not len(d):
            raise InputError(f"{self.source}: the edge list is empty")
        span = d.span
        distinct, entries = d.distinct()
        del d
        if self.kind == idcols.STR:
            self.uniq, rank = iddict.sorted_ranks(distinct)
        else:
            self.uniq, rank = iddict.sorted_int_ranks(distinct)
        del distinct
        self.entry_rank = iddict.entry_ranks(span, entries, rank)
        self.n = idcols.length(self.uniq)
        self.input = lambda: iter(idcols.load_blocks(raw, 2))
        _release_arrow_memory()
        return True

    @property
    def num_nodes(self) -> int:
        return self.n

    def ids(self) -> Iterator[Col]:
        yield self.uniq

    def written(self) -> None:
        """The ids are in the store: only the entry-to-dense-id table stays for the CSR build."""
        self.uniq = None

    def chunks(self) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]:
        """(dense src, dense dst) chunks: each read of the raw file gathers its entries' dense
        ids again (cheaper than writing and rereading the dense pairs)."""
        from lrgi_ooc.store import iddict

        def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for s, d in self.input():
                for a in range(0, len(s), self.chunk):
                    yield (iddict.gather(self.entry_rank, s[a:a + self.chunk]),
                           iddict.gather(self.entry_rank, d[a:a + self.chunk]))
        return gen

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
