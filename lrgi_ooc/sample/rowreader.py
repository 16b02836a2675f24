"""Input rows of a batch from a table larger than memory: a row cache, then `pread`s.

Why not the memory map: once the table stops fitting, every missing page is one blocking
fault, one request at a time. A batch's rows are known before they are needed, so they are
read together: a cache of rows first, then the misses sorted and read by `store.rows` from
a thread pool (runs of adjacent rows as one read, many reads in flight). The loader's
producer thread calls `gather` `prefetch` batches ahead of the training step.

The cache holds rows, not pages: rows are 128 B to 2 KiB and a batch touches one or two
rows of a page, so a page cache would spend most of its bytes on rows nobody asked for.
It is set-associative (8 ways per set, a set chosen by a hash of the node id) with CLOCK
(second chance) replacement inside a set: a row inserted on a miss is the first to go unless
it is asked for again, so hubs, which recur in batch after batch, stay, and a stream of
one-off rows only churns among the unreferenced ways. Lookups and inserts are numba kernels
in the producer thread; the reads are the only parallel part.

What comes out never depends on the cache's size or the thread count, only on where the
bytes come from: `gather` equals `loader.gather_rows` over the memory map, bit for bit
(float16 tables are read as their raw bits and converted as the loader converts them).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from numba import njit

from lrgi_ooc.store.rows import ChunkRowFile

WAYS = 8
READERS = ("auto", "mmap", "pread")
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


# ------------------------------------------------------------------ choosing a reader
def mem_available() -> int | None:
    """MemAvailable in bytes (Linux), else the free physical memory, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_reader(mode: str, table_nbytes: int, memory_limit: int,
                  available: int | None = None) -> str:
    """'mmap' or 'pread'. auto: the memory map while the table fits comfortably (within the
    budget and within half of MemAvailable, so it stays cached beside everything else),
    the reader otherwise."""
    if mode not in READERS:
        raise ValueError(f"row reader must be one of {', '.join(READERS)}, got {mode!r}")
    if mode != "auto":
        return mode
    available = mem_available() if available is None else available
    room = memory_limit if available is None else min(memory_limit, available // 2)
    return "mmap" if table_nbytes <= room else "pread"


def cache_rows_for(cache_bytes: int, row_nbytes: int) -> int:
    """Rows a cache of `cache_bytes` holds (whole sets of WAYS rows; key and flag included)."""
    per_row = int(row_nbytes) + 8 + 1
    return max(0, int(cache_bytes) // per_row // WAYS) * WAYS


# ------------------------------------------------------------------ numba kernels
@njit(cache=True, nogil=True, inline="always")
def _set_of(g, nsets):
    z = np.uint64(g) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(29))) * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(32))
    return np.int64(((z >> np.uint64(32)) * np.uint64(nsets)) >> np.uint64(32))


@njit(cache=True, nogil=True)
def _probe(keys, ref, nsets, nodes, order, hit_pos, hit_slot, miss_pos):
    """Walk nodes in `order`: a cached row is a hit (position, slot; marked referenced),
    the others are misses (positions, in `order`). Returns (hits, misses)."""
    nh = 0
    nm = 0
    for q in range(order.size):
        r = order[q]
        g = nodes[r]
        found = -1
        if nsets > 0:
            base = _set_of(g, nsets) * 8
            for w in range(8):
                if keys[base + w] == g:
                    found = base + w
                    break
        if found >= 0:
            ref[found] = 1
            hit_pos[nh] = r
            hit_slot[nh] = found
            nh += 1
        else:
            miss_pos[nm] = r
            nm += 1
    return nh, nm


@njit(cache=True, nogil=True)
def _insert(keys, ref, hand, data, nsets, ids, rows):
    """Cache rows[i] as node ids[i]: an empty way, else CLOCK within the set (referenced
    ways get a second chance). A new row starts unreferenced."""
    f = data.shape[1]
    for i in range(ids.size):
        g = ids[i]
        s = _set_of(g, nsets)
        base = s * 8
        slot = -1
        for w in range(8):
            k = keys[base + w]
            if k == g:
                slot = -2                  # already cached (a repeated id)
                break
            if k == -1 and slot == -1:
                slot = base + w
        if slot == -2:
            continue
        if slot == -1:
            h = hand[s]
            while ref[base + h]:
                ref[base + h] = 0
                h = (h + 1) & 7
            slot = base + h
            hand[s] = (h + 1) & 7
        keys[slot] = g
        ref[slot] = 0
        for c in range(f):
            data[slot, c] = rows[i, c]


@njit(cache=True, nogil=True)
def _put(src, src_rows, out, dst_rows):
    """out[dst_rows[i]] = src[src_rows[i]] (same dtype; explicit loops, as the loader's)."""
    f = src.shape[1]
    for i in range(dst_rows.size):
        s = src_rows[i]
        d = dst_rows[i]
        for c in range(f):
            out[d, c] = src[s, c]


@njit(cache=True, nogil=True)
def _put_f16(src, src_rows, lut, out, dst_rows):
    """As _put, float16 bits -> float32 through the loader's table (exact)."""
    f = src.shape[1]
    for i in range(dst_rows.size):
        s = src_rows[i]
        d = dst_rows[i]
        for c in range(f):
            out[d, c] = lut[src[s, c]]


# ------------------------------------------------------------------ the reader
class RowReader:
    """`gather(nodes, out)` like `loader.gather_rows(table, nodes, out)`, from `file`
    through a row cache of `cache_bytes`.

    Counters (`stats()`): rows served by the cache (`hits`), rows read (`misses`), read
    requests issued (`reads`, after coalescing adjacent rows)."""

    def __init__(self, file: ChunkRowFile, dtype: np.dtype, width: int, cache_bytes: int = 0):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float16):
            raise ValueError(f"table must be float32 or float16, got {dtype}")
        if file.row_nbytes != dtype.itemsize * int(width):
            raise ValueError(f"rows of {file.row_nbytes} B are not {width} x {dtype}")
        self.file, self.dtype, self.width = file, dtype, int(width)
        self.num_rows = file.num_rows
        self._u = _UINT[dtype.itemsize]
        n = cache_rows_for(cache_bytes, file.row_nbytes)
        n = min(n, -(-(self.num_rows * 5 // 4) // WAYS) * WAYS)  # whole table: 1.25 N slots
        self.cache_rows = n
        self._nsets = n // WAYS
        self._keys = np.full(n, -1, np.int64)
        self._ref = np.zeros(n, np.uint8)
        self._hand = np.zeros(self._nsets, np.uint8)
        self._data = np.empty((n, self.width), self._u)    # pages touched only when filled
        self._stage = np.empty((0, self.width), self._u)
        self._idx = np.empty((3, 0), np.int64)             # hit positions, hit slots, misses
        self.hits = self.misses = 0

    @property
    def cache_nbytes(self) -> int:
        return int(self._data.nbytes + self._keys.nbytes + self._ref.nbytes)

    def _room(self, n: int) -> None:
        if self._idx.shape[1] < n:
            size = max(n, int(self._idx.shape[1] * 1.25))
            self._idx = np.empty((3, size), np.int64)
            self._stage = np.empty((size, self.width), self._u)

    def gather(self, nodes: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Rows `nodes` (distinct ids, any order) into out[:len(nodes)]; out has the table's
        dtype, or float32 for a float16 table (converted as the loader converts)."""
        nodes = np.ascontiguousarray(nodes, dtype=np.int64)
        n = nodes.size
        dst = out[:n]
        convert = self.dtype == np.float16 and out.dtype == np.float32
        if not convert and out.dtype != self.dtype:
            raise ValueError(f"out must be {self.dtype} (or float32 for float16), got {out.dtype}")
        if n == 0:
            return dst
        if nodes.min() < 0 or nodes.max() >= self.num_rows:
            raise ValueError(f"node ids must lie in [0, {self.num_rows})")
        self._room(n)
        hit_pos, hit_slot, miss_pos = self._idx[0], self._idx[1], self._idx[2]
        order = np.argsort(nodes, kind="stable")
        nh, nm = _probe(self._keys, self._ref, self._nsets, nodes, order, hit_pos, hit_slot,
                        miss_pos)
        hit_pos, hit_slot, miss_pos = hit_pos[:nh], hit_slot[:nh], miss_pos[:nm]
        ids = nodes[miss_pos]                              # ascending: order was a sort
        stage = self._stage[:nm]
        self.file.read(ids, stage)
        out_u = dst if convert else dst.view(self._u)
        for src, rows, pos in ((self._data, hit_slot, hit_pos),
                               (stage, np.arange(nm, dtype=np.int64), miss_pos)):
            if pos.size:
                if convert:
                    _put_f16(src, rows, _F16_TO_F32, out_u, pos)
                else:
                    _put(src, rows, out_u, pos)
        if self._nsets and nm:
            _insert(self._keys, self._ref, self._hand, self._data, self._nsets, ids, stage)
        self.hits += int(nh)
        self.misses += int(nm)
        return dst

    def stats(self) -> dict[str, int]:
        return {"threads": self.file.threads, "cache_rows": self.cache_rows,
                "cache_bytes": self.cache_nbytes, "hits": self.hits, "misses": self.misses,
                "reads": self.file.reads}

    def close(self) -> None:
        self.file.close()
