"""Out-of-core CSR construction under a memory budget (numba counting sorts, bucket files).

Passes (each with a progress bar, unit "edges"):
1. validate: stream the input once, check ids, copy edges as (src, dst) pairs into a temp file
   in `workdir` (kept in memory instead while one pass fits the budget) and count in-edges per
   block of node ids (a coarse histogram of at most `_HIST_BINS` bins);
2. bucket (only when one pass does not fit): from the histogram, cut the nodes into ranges
   whose edges and nodes fit the budget and split the pairs into one file per range;
3. build, per range: partition edges by destination into parts of 2^15 nodes (sizes known from
   the histogram: sequential streams), then per part, in cache and parts split between numba
   threads, a counting sort by destination and a sort + deduplication of each row; append to
   `csr/indptr` / `csr/indices`.

A range costs 6 B per stored edge (int32 source, uint16 destination within its part) plus 8 B
per node; temp files are read with plain reads into reused buffers, never mmapped (mapped file
pages count in RSS). Peak RSS stays within `memory_limit` plus a fixed overhead: the
interpreter and imported libraries with numba's loaded kernels (the `preprocess` CLI peaks at
176 MB on a 3-edge graph; docs/benchmarks.md, "Preprocessing") plus the caller's input chunks
beyond the one counted here. A cold numba cache adds a one-off compile (~20 s, ~70 MB).
Limitation: one histogram block (N / 2^16 nodes, at least one node) whose in-edges alone
exceed the budget is built as one range, over budget.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from lrgi_ooc.base import progress
from lrgi_ooc.base.memory import libc as _libc
from lrgi_ooc.base.memory import return_freed_memory as _return_freed_memory
from lrgi_ooc.store.fileio import read_into
from lrgi_ooc.store import layout as store_module
from lrgi_ooc.base.errors import InputError, space_for
from lrgi_ooc.store.layout import GraphStore

_HIST_BINS = 1 << 16       # in-degree histogram over blocks of node ids (512 KB)
_PART_SHIFT = 15           # nodes per cache-resident part: 2^15
_PIECE = 1 << 20           # edges per read of a temp file
_PART_TMP = 1 << 22        # parts up to this many edges sort out of place (faster)
_ID32_LIMIT = 2 ** 31      # temp pairs are int32 while every id is below this
_MIN_BUDGET = 1 << 16


@dataclass
class CSRResult:
    num_nodes: int
    num_edges: int           # stored edges, after symmetrisation / self-loop and duplicate removal
    num_input_edges: int     # edges read from the input
    self_loops_removed: int
    duplicates_removed: int


# ----------------------------------------------------------------------------- helpers
def _numba_threads() -> int:
    from numba import get_num_threads
    return get_num_threads()


def _kernels():
    """The numba kernels (`csrkernels`), imported on first use: a Dask client, which only
    plans, never pays numba's import (about 0.3 s of every `preprocess --scheduler`)."""
    from lrgi_ooc.csr import kernels as csrkernels
    return csrkernels


def _empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty, backed by transparent huge pages when large: first touch of fresh memory is
    slow on these virtual machines, and scatters into large arrays miss the TLB less."""
    a = np.empty(shape, dtype)
    if a.nbytes >= 8 << 20 and _libc() is not None:
        start = (a.ctypes.data + (1 << 21) - 1) & ~((1 << 21) - 1)
        end = (a.ctypes.data + a.nbytes) & ~((1 << 21) - 1)
        if end > start:
            _libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 14)
    return a                                        # 14: MADV_HUGEPAGE (Linux)


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
        if len(a) and np.abs(a).max() >= 2.0 ** 63:
            raise InputError(f"{source}: node id {float(np.abs(a).max())!r} is too large")
        return a.astype(np.int64)
    raise InputError(f"{source}: node ids must be integers, got dtype {a.dtype}")


def _read_into(f, buf: np.ndarray) -> np.ndarray:
    return read_into(f, buf, f"{f.name}: temp file is truncated", OSError)


class _Build:
    """State of one build: histogram, held or spilled pairs, temp files, reused buffers."""

    def __init__(self, store: GraphStore, num_nodes: int | None, source: str, undirected: bool,
                 drop_loops: bool, dedup: bool, memory_limit: int, workdir: Path):
        self.store, self.source = store, source
        self.und, self.drop, self.dedup = bool(undirected), bool(drop_loops), bool(dedup)
        self.n_given = None if num_nodes is None else int(num_nodes)
        if self.n_given is not None and self.n_given <= 0:
            raise InputError(f"--num-nodes: must be positive, got {num_nodes}")
        self.workdir = Path(workdir)
        self.made_workdir = not self.workdir.exists()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.prefix = f"csr-{os.getpid()}-{id(self):x}"
        self.files: list[Path] = []
        self.hist = np.zeros(_HIST_BINS, np.int64)
        self.shift = 0
        self._fit_hist((self.n_given or 1) - 1)
        self.id_dt = np.dtype(np.int32 if (self.n_given or 0) <= _ID32_LIMIT else np.int64)
        self.max_id, self.m, self.loops = -1, 0, 0
        self.held: list[np.ndarray] = []
        self.spill: Path | None = None
        self.bufs: dict[str, np.ndarray] = {}
        self.limit = int(memory_limit)
        self.threads: int | None = None     # threads of the process that sorts (None: this one)

    # ------------------------------------------------------------------ sizes and buffers
    @property
    def budget(self) -> int:
        """What the sort buffers may use: the limit minus what is live beside them: the
        histogram, one temp-file piece, part scratch, and the two chunk writers (a chunk each
        plus one serialised copy). Chunk sizes follow N and E, so this is re-read as they grow."""
        ptr_chunk = 8 * store_module.chunk_rows_for(max(self.num_nodes, 1) + 1, 8)
        isz = self.out_dt.itemsize
        idx_chunk = isz * store_module.chunk_rows_for(max(self.stored, 1), isz)
        nt = self.threads or _numba_threads()
        reserve = (self.hist.nbytes + 2 * self.id_dt.itemsize * _PIECE
                   + nt * ((16 << self.pshift) + isz * self.tmp_width)
                   + ptr_chunk + idx_chunk + max(ptr_chunk, idx_chunk))
        return max(self.limit - reserve, self.limit // 4, _MIN_BUDGET)

    @property
    def tmp_width(self) -> int:
        """Edges of a thread's out-of-place sort scratch: the largest part's (any run of one
        part's histogram blocks), capped at _PART_TMP. A fixed _PART_TMP row (16 MB of int32)
        for each thread was mostly untouched, but huge pages back what little is touched
        by 2 MB at a time, and the budget set it all aside."""
        g = 1 << (self.pshift - self.shift)
        c = np.concatenate([[0], np.cumsum(self.hist)])
        widest = int((c[g:] - c[:-g]).max()) if len(c) > g else int(c[-1])
        return max(1, min(_PART_TMP, widest))

    @property
    def num_nodes(self) -> int:
        return self.n_given if self.n_given is not None else self.max_id + 1

    @property
    def out_dt(self) -> np.dtype:
        return np.dtype(np.int32 if self.num_nodes < 2 ** 31 else np.int64)

    @property
    def pshift(self) -> int:
        return max(_PART_SHIFT, self.shift)

    @property
    def per_edge(self) -> int:
        """Bytes per stored edge while a range is built: source + destination within its part."""
        return self.out_dt.itemsize + (2 if self.pshift <= 16 else 4)

    @property
    def stored(self) -> int:
        """Stored edges before deduplication."""
        return (self.m - (self.loops if self.drop else 0)) * (2 if self.und else 1)

    def _one_pass_cost(self, m: int, stored: int) -> int:
        # held pairs are freed while the parts fill, so the peak is the larger of the two
        return (max(m * 2 * self.id_dt.itemsize, stored * self.per_edge)
                + 8 * (self.num_nodes + 1))

    def _buf(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A reused buffer (fresh memory pays a slow first touch on these machines)."""
        b = self.bufs.get(name)
        if (b is None or b.dtype != dtype or b.shape[0] < shape[0]
                or b.shape[1:] != tuple(shape[1:])):
            self.bufs.pop(name, None)
            b = self.bufs[name] = _empty(shape, dtype)
        return b[:shape[0]]

    def _tmp(self, name: str) -> Path:
        p = self.workdir / f"{self.prefix}-{name}"
        self.files.append(p)
        return p

    def cleanup(self) -> None:
        self.held, self.bufs = [], {}
        for p in self.files:
            p.unlink(missing_ok=True)
        if self.made_workdir:
            try:
                self.workdir.rmdir()
            except OSError:
                pass

    def _fit_hist(self, max_id: int) -> None:
        k = 0
        while (max_id >> (self.shift + k)) >= _HIST_BINS:
            k += 1
        if k:
            folded = self.hist.reshape(-1, 1 << k).sum(axis=1)
            self.hist[:] = 0
            self.hist[:len(folded)] = folded
            self.shift += k

    # ------------------------------------------------------------------ pass 1: validate
    def validate(self, chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]) -> None:
        with progress.bar(None, "validate edges", unit="edges") as pb:
            for s, d in chunks():
                s, d = _as_ids(s, self.source), _as_ids(d, self.source)
                if len(s) != len(d):
                    raise InputError(f"{self.source}: source and destination columns differ "
                                     f"in length ({len(s)} vs {len(d)})")
                if len(s):
                    self._add(s, d)
                    pb.update(len(s))
                del s, d                # the caller's next chunk need not meet this one
        if self.m == 0:
            raise InputError(f"{self.source}: the edge list is empty")

    def _add(self, s: np.ndarray, d: np.ndarray) -> None:
        kern = _kernels()
        mn, mx = kern._minmax(s, d)
        if mn < 0:
            raise InputError(f"{self.source}: node id {mn} is negative")
        if self.n_given is not None and mx >= self.n_given:
            raise InputError(f"{self.source}: node id {mx} >= --num-nodes {self.n_given}")
        if mx >= _ID32_LIMIT and self.id_dt == np.int32:
            self._widen_ids()
        self.max_id = max(self.max_id, int(mx))
        self._fit_hist(self.max_id)
        m = len(s)
        # while the input chunk is alive, it counts against the budget too
        keep = self.spill is None and self._one_pass_cost(
            self.m + m, (self.m + m) * (2 if self.und else 1)) + s.nbytes + d.nbytes <= self.budget
        self.m += m
        if keep:
            pairs = _empty((m, 2), self.id_dt)
            self.loops += kern._scan(s, d, pairs, self.hist, self.shift, self.und, self.drop)
            self.held.append(pairs)
            return
        self._spill_held()
        with open(self.spill, "ab") as f:
            for i in range(0, m, _PIECE):
                k = min(_PIECE, m - i)
                pairs = self._buf("pairs", (k, 2), self.id_dt)
                self.loops += kern._scan(s[i:i + k], d[i:i + k], pairs, self.hist, self.shift,
                                         self.und, self.drop)
                f.write(memoryview(pairs.reshape(-1)))

    def _spill_held(self) -> None:
        if self.spill is None:
            self.spill = self._tmp("edges")
            with open(self.spill, "wb") as f:
                for h in self.held:
                    f.write(memoryview(h.reshape(-1)))
            self.held = []

    def _widen_ids(self) -> None:
        """An id >= 2^31 without --num-nodes: the pairs seen so far become int64."""
        self.held = [h.astype(np.int64) for h in self.held]
        self.bufs.pop("pairs", None)
        if self.spill is not None:
            old, self.spill = self.spill, self._tmp("edges64")
            with open(old, "rb") as fi, open(self.spill, "wb") as fo:
                while len(block := np.fromfile(fi, np.int32, count=2 * _PIECE)):
                    fo.write(memoryview(block.astype(np.int64)))
            old.unlink()
        self.id_dt = np.dtype(np.int64)

    # ------------------------------------------------------------------ pass 2: ranges
    def plan(self, parts: int = 1) -> np.ndarray:
        """Range boundaries (node ids, block-aligned) whose builds fit the budget; at least
        about `parts` ranges (Dask: enough tasks for the workers) when the graph allows."""
        n, bs = self.num_nodes, 1 << self.shift
        nb = -(-n // bs)
        nodes = np.full(nb, bs, np.int64)
        nodes[-1] = n - (nb - 1) * bs
        cost = self.hist[:nb] * self.per_edge + 8 * nodes
        cum = np.concatenate([[0], np.cumsum(cost)])
        budget = max(1, min(self.budget, -(-int(cum[-1]) // max(1, parts))))
        starts = [0]
        while starts[-1] < nb:
            b = starts[-1]
            e = int(np.searchsorted(cum, cum[b] + budget, side="right")) - 1
            starts.append(min(max(e, b + 1), nb))
        return np.minimum(np.array(starts, np.int64) * bs, n)

    def distribute(self, bounds: np.ndarray) -> list[Path]:
        """Split the spilled pairs into one file per range (reverses and loops handled)."""
        nr = len(bounds) - 1
        nb = -(-self.num_nodes // (1 << self.shift))
        block_bucket = (np.searchsorted(bounds, np.arange(nb, dtype=np.int64) << self.shift,
                                        side="right") - 1).astype(np.int32)
        files = [self._tmp(f"range{k}") for k in range(nr)]
        rows = int(max(4096, min(_PIECE, self.budget // (8 * self.id_dt.itemsize))))
        buf = self._buf("pairs", (rows, 2), self.id_dt)
        out = np.empty((rows * (2 if self.und else 1), 2), self.id_dt)
        bnd = np.zeros(nr + 1, np.int64)
        handles = [open(p, "wb") for p in files] if nr <= 256 else None
        try:
            with open(self.spill, "rb") as f, \
                    progress.bar(self.m, "split edges by range", unit="edges") as pb:
                route = _kernels()._route
                for start in range(0, self.m, rows):
                    k = min(rows, self.m - start)
                    route(_read_into(f, buf[:k]), self.shift, block_bucket, self.und,
                          self.drop, bnd, out)
                    for b in np.flatnonzero(np.diff(bnd)):
                        part = memoryview(out[bnd[b]:bnd[b + 1]].reshape(-1))
                        if handles is not None:
                            handles[b].write(part)
                        else:
                            with open(files[b], "ab") as g:
                                g.write(part)
                    pb.update(k)
        finally:
            for h in handles or []:
                h.close()
        self.spill.unlink()
        return files

    def _file_pieces(self, path: Path, unlink: bool = True) -> Iterator[np.ndarray]:
        if not path.exists():           # a range no edge points into
            return
        rows = path.stat().st_size // (2 * self.id_dt.itemsize)
        with open(path, "rb") as f:
            for start in range(0, rows, _PIECE):
                k = min(_PIECE, rows - start)
                yield _read_into(f, self._buf("pairs", (k, 2), self.id_dt))
        if unlink:
            path.unlink()

    def _held_pieces(self) -> Iterator[np.ndarray]:
        while self.held:
            yield self.held.pop(0)      # freed once partitioned: RSS moves into the parts

    # ------------------------------------------------------------------ pass 3: build
    def build(self) -> CSRResult:
        n = self.num_nodes
        self.store.create_array(store_module.INDPTR, (n + 1,), np.int64)
        indptr = self.store.stream_writer(store_module.INDPTR)
        indptr.write(np.zeros(1, np.int64))
        one_pass = self.spill is None and self._one_pass_cost(self.m, self.stored) <= self.budget
        indices, tmp = None, None
        if not self.dedup or one_pass:    # the number of stored edges is known in time
            sink = None
        else:
            tmp = self._tmp("indices")
            sink = open(tmp, "wb")
        try:
            if one_pass:
                ranges = [(0, n, self._held_pieces(), True)]
            else:
                self._spill_held()
                bounds = self.plan()
                files = self.distribute(bounds)
                ranges = [(int(bounds[k]), int(bounds[k + 1]), self._file_pieces(p), False)
                          for k, p in enumerate(files)]
            offset = 0
            with progress.bar(self.stored, "build CSR", unit="edges") as pb:
                for lo, hi, pieces, raw in ranges:
                    # drop the last range's views first: a range that needs larger buffers
                    # than the last one must not hold both (it did: 2.2 GB over a 3GB budget)
                    out = rows = None
                    out, rows = self._range(lo, hi, pieces, raw, pb)
                    rows += offset
                    indptr.write(rows)
                    offset = int(rows[-1])
                    if sink is not None:
                        sink.write(memoryview(out))
                        continue
                    if indices is None:
                        size = offset if one_pass else self.stored
                        self.store.create_array(store_module.INDICES, (size,), self.out_dt)
                        indices = self.store.stream_writer(store_module.INDICES)
                    indices.write(out)
        finally:
            if sink is not None:
                sink.close()
        indptr.close()
        del indptr
        if tmp is not None:
            self.bufs = {}              # the range buffers are done with
            self._copy_indices(tmp, offset)
        else:
            indices.close()
        return CSRResult(n, offset, self.m, self.loops if self.drop else 0, self.stored - offset)

    def _range(self, lo: int, hi: int, pieces: Iterable[np.ndarray], raw: bool,
               pb) -> tuple[np.ndarray, np.ndarray]:
        """CSR rows [lo, hi): returns (indices, indptr[1:] relative to the range start)."""
        ps = self.pshift
        g = 1 << (ps - self.shift)
        blocks = self.hist[lo >> self.shift:-(-hi // (1 << self.shift))]
        counts = np.pad(blocks, (0, -len(blocks) % g)).reshape(-1, g).sum(axis=1)
        starts = np.concatenate([[0], np.cumsum(counts)])
        total = int(starts[-1])
        out = self._buf("out", (total,), self.out_dt)
        dl = self._buf("dl", (total,), np.uint16 if ps <= 16 else np.uint32)
        pos = starts[:-1].copy()
        und, drop = (self.und, self.drop) if raw else (False, False)
        kern = _kernels()
        for p in pieces:
            kern._parts(p, lo, ps, und, drop, pos, out, dl)
            pb.update(len(p) * (2 if und else 1))
        if not np.array_equal(pos, starts[1:]):
            raise RuntimeError(f"csrbuild: range [{lo}, {hi}) received {int(pos.sum())} edges, "
                               f"histogram says {total}")
        ip = self._buf("indptr", (hi - lo + 1,), np.int64)
        nt = _numba_threads()
        e = kern._rows(out, dl, starts, ps, hi - lo, self.dedup, ip,
                       self._buf("cnt", (nt, (1 << ps) + 1), np.int64),
                       self._buf("nxt", (nt, 1 << ps), np.int64),
                       self._buf("tmp", (nt, self.tmp_width), self.out_dt),
                       self._buf("kept", (len(starts) - 1,), np.int64))
        return out[:e], ip[1:]

    def _copy_indices(self, tmp: Path, total: int) -> None:
        self.store.create_array(store_module.INDICES, (total,), self.out_dt)
        indices = self.store.stream_writer(store_module.INDICES)
        buf = self._buf("out", (max(1, min(total, _PIECE)),), self.out_dt)
        with open(tmp, "rb") as f:
            for start in range(0, total, len(buf)):
                k = min(len(buf), total - start)
                indices.write(_read_into(f, buf[:k]))
        tmp.unlink()
        indices.close()


def build_csr(store: GraphStore, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
              num_nodes: int | None, *, source: str, undirected: bool = False,
              remove_self_loops: bool = True, remove_duplicates: bool = True,
              memory_limit: int = 2 << 30, workdir: Path) -> CSRResult:
    """Write `csr/indptr` and `csr/indices` (row i = ascending sources of edges into i).

    `chunks()` is iterated once. Bad ids raise InputError naming `source` before any heavy
    pass. Peak RSS: `memory_limit` plus the fixed overhead of the module docstring.
    """
    _return_freed_memory()
    b = _Build(store, num_nodes, source, undirected, remove_self_loops, remove_duplicates,
               memory_limit, workdir)
    try:
        with space_for(b.workdir):       # a scratch file's write names no file
            b.validate(chunks)
            return b.build()
    finally:
        b.cleanup()
