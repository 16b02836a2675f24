"""Out-of-core CSR construction under a memory budget (numba counting sort, bucket files).

Passes (each with a progress bar, unit "edges"):
1. validate: stream the input once, check ids, copy the edges as (src, dst) pairs into a temp
   file in `workdir` (kept in memory instead while the whole build fits the budget), and count
   in-edges per block of node ids (a coarse histogram, at most `_HIST_BINS` bins);
2. bucket (only when one pass does not fit): choose destination-node ranges whose edges and
   nodes fit the budget from the histogram and split the pairs into one file per range;
3. build: per range, counting sort by destination, sort + deduplicate each row, append to
   `csr/indptr` and `csr/indices` through the store's chunk writers.

Temp files are read with plain reads into reused buffers, never mmapped: mapped file pages
count in RSS. Peak RSS stays within `memory_limit` plus a fixed overhead: the interpreter and
imported libraries (about 150 MB with numpy, numba and zarr; see docs/benchmarks.md) and
one input chunk of the caller's iterator. A single histogram block of ceil(N / 2^20) nodes
whose in-edges alone exceed the budget is built as one bucket, over budget.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from numba import njit

from . import progress
from . import store as store_module
from .errors import InputError
from .store import GraphStore

_HIST_BINS = 1 << 20          # coarse in-degree histogram over blocks of node ids (8 MB)
_ID32_LIMIT = 2 ** 31         # temp pairs are int32 while every id is below this
_MIN_BUDGET = 1 << 16
_MAX_BLOCK = 1 << 22          # edges per read/write block of the bucket pass


@dataclass
class CSRResult:
    num_nodes: int
    num_edges: int           # stored edges, after symmetrisation / self-loop and duplicate removal
    num_input_edges: int     # edges read from the input
    self_loops_removed: int
    duplicates_removed: int


# ----------------------------------------------------------------------------- kernels
@njit(cache=True)
def _minmax(s, d):
    mn = np.int64(0)
    mx = np.int64(-1)
    for i in range(len(s)):
        a = np.int64(s[i])
        b = np.int64(d[i])
        if a < mn:
            mn = a
        if b < mn:
            mn = b
        if a > mx:
            mx = a
        if b > mx:
            mx = b
    return mn, mx


@njit(cache=True)
def _scan(s, d, pairs, hist, shift, undirected, drop_loops):
    """Copy edges into `pairs`, count in-edges per id block; return the number of self loops."""
    loops = 0
    for i in range(len(s)):
        a = np.int64(s[i])
        b = np.int64(d[i])
        pairs[i, 0] = a
        pairs[i, 1] = b
        if a == b:
            loops += 1
            if drop_loops:
                continue
        hist[b >> shift] += 1
        if undirected:
            hist[a >> shift] += 1
    return loops


@njit(cache=True)
def _partition(pairs, shift, block_bucket, undirected, drop_loops, bounds, out):
    """Counting sort of edges (and reverses) by bucket of their destination into `out`."""
    bounds[:] = 0
    for i in range(pairs.shape[0]):
        a = pairs[i, 0]
        b = pairs[i, 1]
        if drop_loops and a == b:
            continue
        bounds[block_bucket[b >> shift] + 1] += 1
        if undirected:
            bounds[block_bucket[a >> shift] + 1] += 1
    for k in range(1, len(bounds)):
        bounds[k] += bounds[k - 1]
    for i in range(pairs.shape[0]):
        a = pairs[i, 0]
        b = pairs[i, 1]
        if drop_loops and a == b:
            continue
        k = block_bucket[b >> shift]
        out[bounds[k], 0] = a
        out[bounds[k], 1] = b
        bounds[k] += 1
        if undirected:
            k = block_bucket[a >> shift]
            out[bounds[k], 0] = b
            out[bounds[k], 1] = a
            bounds[k] += 1
    for k in range(len(bounds) - 1, 0, -1):
        bounds[k] = bounds[k - 1]
    bounds[0] = 0


@njit(cache=True)
def _count(pairs, lo, undirected, drop_loops, indptr):
    for i in range(pairs.shape[0]):
        a = pairs[i, 0]
        b = pairs[i, 1]
        if drop_loops and a == b:
            continue
        indptr[b - lo + 1] += 1
        if undirected:
            indptr[a - lo + 1] += 1


@njit(cache=True)
def _scatter(pairs, lo, undirected, drop_loops, indptr, out):
    """Scatter sources into rows; advances indptr[r] to the end of row r (undo: _unshift)."""
    for i in range(pairs.shape[0]):
        a = pairs[i, 0]
        b = pairs[i, 1]
        if drop_loops and a == b:
            continue
        r = b - lo
        out[indptr[r]] = a
        indptr[r] += 1
        if undirected:
            r = a - lo
            out[indptr[r]] = b
            indptr[r] += 1


@njit(cache=True)
def _unshift(indptr):
    for k in range(len(indptr) - 1, 0, -1):
        indptr[k] = indptr[k - 1]
    indptr[0] = 0


@njit(cache=True)
def _sort_rows(indptr, out, dedup):
    """Sort each row in place; with dedup, compact out and rewrite indptr. Returns the size."""
    w = 0
    a = indptr[0]
    for i in range(len(indptr) - 1):
        b = indptr[i + 1]
        k = b - a
        if k > 32:
            out[a:b].sort()
        else:
            for j in range(a + 1, b):
                v = out[j]
                t = j - 1
                while t >= a and out[t] > v:
                    out[t + 1] = out[t]
                    t -= 1
                out[t + 1] = v
        if dedup:
            for j in range(a, b):
                if j == a or out[j] != out[j - 1]:
                    out[w] = out[j]
                    w += 1
        else:
            w = b
        indptr[i + 1] = w
        a = b
    return w


# ----------------------------------------------------------------------------- helpers
def _as_ids(a: np.ndarray, source: str) -> np.ndarray:
    """Integer view of one id column: integral floats are accepted, anything else is not."""
    a = np.asarray(a).reshape(-1)
    if a.dtype.kind == "i":
        return a
    if a.dtype.kind == "u":
        if a.dtype.itemsize == 8 and len(a) and a.max() >= 2 ** 63:
            raise InputError(f"{source}: node id {int(a.max())} is too large")
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (np.floor(a) != a))
        if len(bad):
            raise InputError(f"{source}: node id {float(a[bad[0]])!r} is not an integer")
        if len(a) and (a.max() >= 2.0 ** 63 or a.min() < -2.0 ** 63):
            raise InputError(f"{source}: node id {float(np.abs(a).max())!r} is too large")
        return a.astype(np.int64)
    raise InputError(f"{source}: node ids must be integers, got dtype {a.dtype}")


def _read_into(f, buf: np.ndarray) -> None:
    view = memoryview(buf.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise OSError(f"{f.name}: temp file is truncated")
        got += n


def _grow(buf: np.ndarray | None, rows: int, dtype, width: int = 2) -> np.ndarray:
    """A reusable buffer of at least `rows` rows (reusing memory avoids first-touch cost)."""
    if buf is None or buf.shape[0] < rows or buf.dtype != dtype:
        shape = (rows, width) if width > 1 else (rows,)
        return np.empty(shape, dtype)
    return buf


class _Writer:
    """indptr / indices written through the store's chunk writers, in row order."""

    def __init__(self, store: GraphStore, n: int):
        store.create_array(store_module.INDPTR, (n + 1,), np.int64)
        self.indptr = store.stream_writer(store_module.INDPTR)
        self.indptr.write(np.zeros(1, np.int64))
        self.offset = 0

    def rows(self, local_indptr: np.ndarray) -> None:
        local_indptr[1:] += self.offset
        self.indptr.write(local_indptr[1:])
        self.offset = int(local_indptr[-1])


# ----------------------------------------------------------------------------- builder
class _Build:
    def __init__(self, store, num_nodes, source, undirected, drop_loops, dedup, memory_limit,
                 workdir):
        self.store, self.source = store, source
        self.und, self.drop, self.dedup = bool(undirected), bool(drop_loops), bool(dedup)
        self.n_given = None if num_nodes is None else int(num_nodes)
        if self.n_given is not None and self.n_given <= 0:
            raise InputError(f"--num-nodes: must be positive, got {num_nodes}")
        self.workdir = Path(workdir)
        self.made_workdir = not self.workdir.exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = self.workdir / f"csr-{os.getpid()}-{id(self):x}"
        self.files: list[Path] = []
        self.hist = np.zeros(_HIST_BINS, np.int64)
        self.shift = 0
        top = (self.n_given or 1) - 1
        while (top >> self.shift) >= _HIST_BINS:
            self.shift += 1
        self.id_dt = np.dtype(np.int32 if (self.n_given or 0) <= _ID32_LIMIT else np.int64)
        self.max_id = -1
        self.m = 0
        self.loops = 0
        self.held: list[np.ndarray] = []
        self.spill: Path | None = None
        self.scratch: np.ndarray | None = None
        self.budget = self._work_budget(memory_limit)

    # ------------------------------------------------------------------ budget
    def _work_budget(self, memory_limit: int) -> int:
        """What the sort buffers may use: the limit minus the histogram and writer buffers
        (each writer holds a chunk plus its serialised copy)."""
        n_guess = max(self.n_given or 0, 1 << 24)
        reserve = self.hist.nbytes
        reserve += 2 * 8 * store_module.chunk_rows_for(n_guess + 1, 8)
        reserve += 2 * 4 * store_module.chunk_rows_for(1 << 30, 4)
        return max(int(memory_limit) - reserve, int(memory_limit) // 4, _MIN_BUDGET)

    @property
    def out_dt(self) -> np.dtype:
        return np.dtype(np.int32 if self.num_nodes < 2 ** 31 else np.int64)

    @property
    def num_nodes(self) -> int:
        return self.n_given if self.n_given is not None else self.max_id + 1

    def _one_pass_cost(self, m: int) -> int:
        stored = m * (2 if self.und else 1)
        return (m * 2 * self.id_dt.itemsize + stored * self.out_dt.itemsize
                + 16 * (self.num_nodes + 1))

    def _tmp(self, name: str) -> Path:
        p = Path(f"{self.prefix}-{name}")
        self.files.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.files:
            p.unlink(missing_ok=True)
        if self.made_workdir:
            try:
                self.workdir.rmdir()
            except OSError:
                pass

    # ------------------------------------------------------------------ pass 1: validate
    def validate(self, chunks) -> None:
        with progress.bar(None, "validate edges", unit="edges") as pb:
            for s, d in chunks():
                s, d = _as_ids(s, self.source), _as_ids(d, self.source)
                if len(s) != len(d):
                    raise InputError(f"{self.source}: source and destination columns differ "
                                     f"in length ({len(s)} vs {len(d)})")
                if len(s) == 0:
                    continue
                self._add(s, d)
                pb.update(len(s))
        if self.m == 0:
            raise InputError(f"{self.source}: the edge list is empty")

    def _add(self, s: np.ndarray, d: np.ndarray) -> None:
        mn, mx = _minmax(s, d)
        if mn < 0:
            raise InputError(f"{self.source}: node id {mn} is negative")
        if self.n_given is not None and mx >= self.n_given:
            raise InputError(f"{self.source}: node id {mx} >= --num-nodes {self.n_given}")
        if mx >= _ID32_LIMIT and self.id_dt == np.int32:
            self._widen_ids()
        self.max_id = max(self.max_id, int(mx))
        k = 0
        while (mx >> (self.shift + k)) >= _HIST_BINS:
            k += 1
        if k:
            folded = self.hist.reshape(-1, 1 << k).sum(axis=1)
            self.hist[:] = 0
            self.hist[:len(folded)] = folded
            self.shift += k
        m = len(s)
        keep = self.spill is None and self._one_pass_cost(self.m + m) <= self.budget
        if keep:
            pairs = np.empty((m, 2), self.id_dt)
        else:
            self.scratch = _grow(self.scratch, m, self.id_dt)
            pairs = self.scratch[:m]
        self.loops += _scan(s, d, pairs, self.hist, self.shift, self.und, self.drop)
        self.m += m
        if keep:
            self.held.append(pairs)
            return
        if self.spill is None:
            self.spill = self._tmp("edges")
            with open(self.spill, "wb") as f:
                for h in self.held:
                    f.write(memoryview(h.reshape(-1)))
            self.held = []
        with open(self.spill, "ab") as f:
            f.write(memoryview(pairs.reshape(-1)))

    def _widen_ids(self) -> None:
        """An id >= 2^31 without --num-nodes: the pairs seen so far become int64."""
        self.held = [h.astype(np.int64) for h in self.held]
        self.scratch = None
        if self.spill is not None:
            old, self.spill = self.spill, self._tmp("edges64")
            with open(old, "rb") as fi, open(self.spill, "wb") as fo:
                while True:
                    block = np.fromfile(fi, np.int32, count=_MAX_BLOCK)
                    if not len(block):
                        break
                    fo.write(memoryview(block.astype(np.int64)))
            old.unlink()
        self.id_dt = np.dtype(np.int64)

    # ------------------------------------------------------------------ pass 2: buckets
    def plan(self) -> np.ndarray:
        """Bucket boundaries (node ids) from the histogram: ranges whose build fits the budget."""
        n = self.num_nodes
        bs = 1 << self.shift
        nb = -(-n // bs)
        edges = self.hist[:nb]
        nodes = np.full(nb, bs, np.int64)
        nodes[-1] = n - (nb - 1) * bs
        cost = edges * (2 * self.id_dt.itemsize + self.out_dt.itemsize) + 16 * nodes
        cum = np.concatenate([[0], np.cumsum(cost)])
        starts = [0]
        while starts[-1] < nb:
            b = starts[-1]
            e = int(np.searchsorted(cum, cum[b] + self.budget, side="right")) - 1
            starts.append(min(max(e, b + 1), nb))
        return np.minimum(np.array(starts, np.int64) * bs, n)

    def distribute(self, bounds: np.ndarray) -> tuple[list[Path], np.ndarray]:
        """Split the spilled pairs into one file per bucket (reverses and loops handled)."""
        nbk = len(bounds) - 1
        nb = -(-self.num_nodes // (1 << self.shift))
        block_bucket = (np.searchsorted(bounds, np.arange(nb, dtype=np.int64) << self.shift,
                                        side="right") - 1).astype(np.int32)
        block_bucket = np.minimum(block_bucket, nbk - 1)
        files = [self._tmp(f"bucket{k}") for k in range(nbk)]
        sizes = np.zeros(nbk, np.int64)
        rows = max(4096, min(_MAX_BLOCK, self.budget // (6 * 2 * self.id_dt.itemsize)))
        buf = np.empty((rows, 2), self.id_dt)
        out = np.empty((rows * (2 if self.und else 1), 2), self.id_dt)
        bnd = np.zeros(nbk + 1, np.int64)
        handles = [open(p, "wb") for p in files] if nbk <= 256 else None
        try:
            with open(self.spill, "rb") as f, \
                    progress.bar(self.m, "bucket edges", unit="edges") as pb:
                left = self.m
                while left:
                    k = min(rows, left)
                    _read_into(f, buf[:k])
                    _partition(buf[:k], self.shift, block_bucket, self.und, self.drop, bnd, out)
                    for b in np.flatnonzero(np.diff(bnd)):
                        part = memoryview(out[bnd[b]:bnd[b + 1]].reshape(-1))
                        if handles is not None:
                            handles[b].write(part)
                        else:
                            with open(files[b], "ab") as g:
                                g.write(part)
                    sizes += np.diff(bnd)
                    left -= k
                    pb.update(k)
        finally:
            for h in handles or []:
                h.close()
        self.spill.unlink()
        return files, sizes

    # ------------------------------------------------------------------ pass 3: build
    def build(self) -> CSRResult:
        n, out_dt = self.num_nodes, self.out_dt
        stored_max = (self.m - (self.loops if self.drop else 0)) * (2 if self.und else 1)
        writer = _Writer(self.store, n)
        indices = None
        if not self.dedup:
            self.store.create_array(store_module.INDICES, (stored_max,), out_dt)
            indices = self.store.stream_writer(store_module.INDICES)
        if self.spill is None and self._one_pass_cost(self.m) <= self.budget:
            result = self._build_in_memory(writer, indices)
        else:
            result = self._build_buckets(writer, indices)
        writer.indptr.close()
        return result

    def _result(self, num_edges: int) -> CSRResult:
        stored_max = (self.m - (self.loops if self.drop else 0)) * (2 if self.und else 1)
        return CSRResult(self.num_nodes, num_edges, self.m, self.loops if self.drop else 0,
                         stored_max - num_edges)

    def _build_in_memory(self, writer: _Writer, indices) -> CSRResult:
        n = self.num_nodes
        stored_max = (self.m - (self.loops if self.drop else 0)) * (2 if self.und else 1)
        indptr = np.zeros(n + 1, np.int64)
        out = np.empty(stored_max, self.out_dt)
        with progress.bar(self.m, "build CSR", unit="edges") as pb:
            for h in self.held:
                _count(h, 0, self.und, self.drop, indptr)
            np.cumsum(indptr, out=indptr)
            for h in self.held:
                _scatter(h, 0, self.und, self.drop, indptr, out)
                pb.update(len(h))
            self.held = []
            _unshift(indptr)
            e = _sort_rows(indptr, out, self.dedup)
        writer.rows(indptr)
        if indices is None:
            self.store.create_array(store_module.INDICES, (e,), self.out_dt)
            indices = self.store.stream_writer(store_module.INDICES)
        indices.write(out[:e])
        indices.close()
        return self._result(e)

    def _build_buckets(self, writer: _Writer, indices) -> CSRResult:
        if self.spill is None:       # held pairs that do not fit one pass: spill them first
            self.spill = self._tmp("edges")
            with open(self.spill, "wb") as f:
                for h in self.held:
                    f.write(memoryview(h.reshape(-1)))
            self.held = []
        bounds = self.plan()
        files, sizes = self.distribute(bounds)
        rows_max = int(np.diff(bounds).max())
        pairs = np.empty((int(sizes.max()), 2), self.id_dt)
        out = np.empty(int(sizes.max()), self.out_dt)
        indptr = np.empty(rows_max + 1, np.int64)
        tmp = None
        sink = indices
        if sink is None:
            tmp = self._tmp("indices")
            sink = open(tmp, "wb")
        total = 0
        try:
            with progress.bar(int(sizes.sum()), "build CSR", unit="edges") as pb:
                for k, p in enumerate(files):
                    lo, hi = int(bounds[k]), int(bounds[k + 1])
                    m = int(sizes[k])
                    with open(p, "rb") as f:
                        _read_into(f, pairs[:m])
                    p.unlink()
                    ip = indptr[:hi - lo + 1]
                    ip[:] = 0
                    _count(pairs[:m], lo, False, False, ip)
                    np.cumsum(ip, out=ip)
                    _scatter(pairs[:m], lo, False, False, ip, out)
                    _unshift(ip)
                    e = _sort_rows(ip, out, self.dedup)
                    writer.rows(ip)
                    sink.write(out[:e] if indices is not None else memoryview(out[:e]))
                    total += e
                    pb.update(m)
        finally:
            if tmp is not None:
                sink.close()
        del pairs
        if tmp is not None:
            self.store.create_array(store_module.INDICES, (total,), self.out_dt)
            indices = self.store.stream_writer(store_module.INDICES)
            with open(tmp, "rb") as f:
                left = total
                while left:
                    k = min(left, len(out))
                    _read_into(f, out[:k])
                    indices.write(out[:k])
                    left -= k
            tmp.unlink()
        indices.close()
        return self._result(total)


def build_csr(store: GraphStore, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
              num_nodes: int | None, *, source: str, undirected: bool = False,
              remove_self_loops: bool = True, remove_duplicates: bool = True,
              memory_limit: int = 2 << 30, workdir: Path) -> CSRResult:
    """Write `csr/indptr` and `csr/indices` (row i = sorted sources of edges into i).

    `chunks()` is iterated once. Bad ids raise InputError naming `source` before any heavy
    pass. Peak RSS: `memory_limit` plus the fixed overhead in the module docstring.
    """
    b = _Build(store, num_nodes, source, undirected, remove_self_loops, remove_duplicates,
               memory_limit, workdir)
    try:
        b.validate(chunks)
        return b.build()
    finally:
        b.cleanup()
