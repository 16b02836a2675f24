"""Growable hash dictionaries of node ids (byte strings, int64) for the in-memory remap.

Why: the block-wise path hashed and sorted every block to deduplicate it, then hashed and
searched every endpoint again to rank it (100 M edges of 21-byte ids: 316 s, 17x the dense
preprocess). Here each endpoint is hashed and inserted once, and comes back as an entry
number; one sort of the distinct ids then gives every entry its dense id, and rewriting the
edges is a gather. Same dense ids as before (ascending integers, bytewise strings), so
stores do not change. Open addressing with linear probing on the splitmix-mixed 64-bit hash,
every string match confirmed byte by byte.

The probes are cache misses, so the table is split into one shard per thread by the hash's
top bits: each thread scans the block and probes only its own shard (no locks, no shared
writes), and the slot of the id 16 places on is prefetched so that its miss overlaps the
current probe. Entry numbers interleave the shards (local * shards + shard); with one shard
they are first-seen order. Measured: 40 M probes of 10 M int64 ids, 2.8 s -> 1.3 s.
"""
from __future__ import annotations

import numpy as np
from numba import get_num_threads, njit, prange

from lrgi_ooc.store.idcols import StrCol
from lrgi_ooc.store.idkernel import _hash_strings, hash_bytes, load64, mix64, prefetch

_MAX_ENTRIES = (1 << 31) - 1          # entry numbers are int32 (the raw file is 4 B an id)
_HEAD = 8                             # arena record: local entry (4 bytes), length (4), bytes
_START_BITS = 40                      # a slot: 24 bits of the hash | arena offset (40)
_AHEAD = 16


def default_shards() -> int:
    """One shard per numba thread (a power of two, at most 8)."""
    t = max(1, min(8, get_num_threads()))
    return 1 << (t.bit_length() - 1)


@njit(cache=True, parallel=True, nogil=True)
def _hash_ints(q, out):
    for i in prange(q.shape[0]):
        out[i] = mix64(np.uint64(q[i]))


@njit(cache=True, nogil=True, inline="always")
def _shard(h, sbits):
    if sbits == 0:
        return np.int64(0)
    return np.int64(h >> np.uint64(64 - sbits))


@njit(cache=True, nogil=True, inline="always")
def _head(a, r):
    """(local entry, length) of the arena record at r: its 8-byte header in one load."""
    w = load64(a, r)
    return np.int64(w & np.uint64(0xFFFFFFFF)), np.int64(w >> np.uint64(32))


@njit(cache=True, nogil=True, inline="always")
def _put32(a, p, v):
    for k in range(4):
        a[p + k] = (v >> (8 * k)) & 255


@njit(cache=True, nogil=True, inline="always")
def _same(a, p, b, q, ln):
    """a[p:p + ln] == b[q:q + ln], 8 bytes at a time; from 8 bytes on, the last word
    overlaps the one before it instead of a byte loop."""
    if ln < 8:
        for k in range(ln):
            if a[p + k] != b[q + k]:
                return False
        return True
    k = 0
    while k + 8 < ln:
        if load64(a, p + k) != load64(b, q + k):
            return False
        k += 8
    return load64(a, p + ln - 8) == load64(b, q + ln - 8)


@njit(cache=True, parallel=True, nogil=True)
def _add(qo, qd, qh, start, slots, ar, n, m, out, sbits):
    """Insert the strings of (qo, qd) from start[t] on into shard t, for every shard at once.
    A shard stops early when a new entry would not fit (its arena, or the load factor 3/4):
    start[t] is then that string (else the end), n[t] / m[t] its entries / arena bytes. A
    probe reads one slot (8 bytes: a 24-bit hash tag and the record's offset) and, when the
    tags agree, one arena record; both are prefetched, the slot 2 * _AHEAD strings early and
    the record it points to _AHEAD strings early."""
    shards = slots.shape[0]
    mask = np.uint64(slots.shape[1] - 1)
    low = np.uint64((1 << _START_BITS) - 1)
    q = qo.shape[0] - 1
    for t in prange(shards):
        sl = slots[t]
        a = ar[t]
        nt, mt = n[t], m[t]
        i = start[t]
        while i < q:
            j = min(i + 2 * _AHEAD, q - 1)
            if _shard(qh[j], sbits) == t:
                prefetch(sl, np.int64(qh[j] & mask))
            j = min(i + _AHEAD, q - 1)
            if _shard(qh[j], sbits) == t:
                v = sl[np.int64(qh[j] & mask)]
                if v != 0 and (v >> np.uint64(_START_BITS)) == (qh[j] >> np.uint64(_START_BITS)):
                    r = np.int64(v & low)
                    prefetch(a, r)
                    # a record may straddle two cache lines: its last byte, if it matches
                    prefetch(a, min(r + _HEAD + qo[j + 1] - qo[j], a.shape[0]) - 1)
            h = qh[i]
            if _shard(h, sbits) != t:
                i += 1
                continue
            tag = h >> np.uint64(_START_BITS)
            a0 = qo[i]
            ln = qo[i + 1] - a0
            s = np.int64(h & mask)
            e = -1
            while True:
                v = sl[s]
                if v == 0:
                    break
                if (v >> np.uint64(_START_BITS)) == tag:
                    r = np.int64(v & low)
                    entry, length = _head(a, r)
                    if length == ln and _same(a, r + _HEAD, qd, a0, ln):
                        e = entry
                        break
                s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
            if e < 0:
                if mt + _HEAD + ln > a.shape[0] or 4 * (nt + 1) > 3 * sl.shape[0]:
                    break
                sl[s] = (tag << np.uint64(_START_BITS)) | np.uint64(mt)
                _put32(a, mt, nt)
                _put32(a, mt + 4, ln)
                for k in range(ln):
                    a[mt + _HEAD + k] = qd[a0 + k]
                mt += _HEAD + ln
                e = nt
                nt += 1
            out[i] = e * shards + t
            i += 1
        start[t] = i
        n[t], m[t] = nt, mt


@njit(cache=True, nogil=True)
def _records(ar, offsets):
    """Arena offset of every record of one shard, in entry order (the order of writing)."""
    r = np.int64(_HEAD)
    for e in range(offsets.shape[0]):
        offsets[e] = r
        r += _HEAD + _head(ar, r)[1]


@njit(cache=True, parallel=True, nogil=True)
def _rehash(ar, n, slots):
    """Re-insert every record of every shard, hashing its bytes in the arena (no copy). The
    records are read in order and hashed _AHEAD ahead of their insertion (a ring of hashes),
    so that each slot can be prefetched."""
    mask = np.uint64(slots.shape[1] - 1)
    for t in prange(slots.shape[0]):
        a = ar[t]
        sl = slots[t]
        ring_h = np.empty(_AHEAD, np.uint64)
        ring_r = np.empty(_AHEAD, np.int64)
        r = np.int64(_HEAD)                   # the next record to hash
        for e in range(-_AHEAD, n[t]):
            if e >= 0:
                h, rec = ring_h[e % _AHEAD], ring_r[e % _AHEAD]
                s = np.int64(h & mask)
                while sl[s] != 0:
                    s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
                sl[s] = ((h >> np.uint64(_START_BITS)) << np.uint64(_START_BITS)) \
                    | np.uint64(rec)
            if e + _AHEAD < n[t]:
                ln = _head(a, r)[1]
                h = hash_bytes(a, r + _HEAD, r + _HEAD + ln)
                ring_h[(e + _AHEAD) % _AHEAD], ring_r[(e + _AHEAD) % _AHEAD] = h, r
                prefetch(sl, np.int64(h & mask))
                r += _HEAD + ln


@njit(cache=True, nogil=True)
def _gather(ar, rec, offsets, data):
    for e in range(rec.shape[0]):
        r = rec[e] + _HEAD
        for k in range(offsets[e + 1] - offsets[e]):
            data[offsets[e] + k] = ar[r + k]


def _entries(n: np.ndarray) -> np.ndarray:
    """The entry numbers of every shard's entries, shard by shard (the `distinct` order)."""
    s = len(n)
    return np.concatenate([np.arange(int(k), dtype=np.int64) * s + t
                           for t, k in enumerate(n)]) if len(n) else np.zeros(0, np.int64)


def _reserve(limit: int | None, shards: int) -> int:
    """Bytes to reserve for each arena: the limit (pages are only mapped when written, so the
    arena never has to be copied while it grows), but at most a fraction of the machine's
    memory, which the kernel's overcommit check would refuse in one allocation."""
    if not limit:
        return 0
    import psutil
    return int(min(limit, psutil.virtual_memory().total // (2 * shards)))


class _Sharded:
    """What both dictionaries share: shards, the budget, and the entry counts per shard."""

    def __init__(self, capacity: int, limit: int | None, shards: int | None):
        self.shards = shards or default_shards()
        self.sbits = self.shards.bit_length() - 1
        self.limit = limit            # growing past it raises OverflowError (nothing kept)
        self.n = np.zeros(self.shards, np.int64)
        # slots per shard at the start: a power of two
        self.cap0 = 1 << max(4, int(-(-capacity // self.shards) - 1).bit_length())

    def __len__(self) -> int:
        return int(self.n.sum())

    @property
    def span(self) -> int:
        """Entry numbers lie in [0, span)."""
        return int(self.n.max(initial=0)) * self.shards


class StrDict(_Sharded):
    """Distinct byte strings; `add` gives each string its entry number."""

    def __init__(self, capacity: int = 1 << 16, limit: int | None = None,
                 shards: int | None = None):
        super().__init__(capacity, limit, shards)
        cap = self.cap0
        self.slots = np.zeros((self.shards, 2 * cap), np.uint64)
        self.ar = np.zeros((self.shards, max(32 * cap, _reserve(limit, self.shards))),
                           np.uint8)
        self.m = np.full(self.shards, _HEAD, np.int64)   # offset 0 is "empty slot"

    @property
    def nbytes(self) -> int:
        """Bytes in use (the unused tail of an arena is never touched)."""
        return int(self.slots.nbytes + self.m.sum())

    def add(self, col: StrCol) -> np.ndarray:
        """Entry number (int32) of every string of `col`, inserting the new ones."""
        q = len(col)
        out = np.empty(q, np.int32)
        h = np.empty(q, np.uint64)
        data = col.kernel_data
        _hash_strings(col.offsets, data, h)
        start = np.zeros(self.shards, np.int64)
        while True:
            _add(col.offsets, data, h, start, self.slots, self.ar, self.n, self.m, out,
                 self.sbits)
            if (start >= q).all():
                return out
            need = max(int(col.offsets[i + 1] - col.offsets[i]) for i in start if i < q)
            self._grow(need)

    def _grow(self, need: int) -> None:
        if (self.n.max() + 2) * self.shards >= _MAX_ENTRIES \
                or self.m.max() + _HEAD + need >= 1 << _START_BITS:
            raise OverflowError("the string dictionary outgrew its addressing")
        full = 4 * (self.n.max() + 1) > 3 * self.slots.shape[1]
        width = max(2 * self.ar.shape[1], int(self.m.max()) + _HEAD + need) \
            if self.m.max() + _HEAD + need > self.ar.shape[1] else 0
        # old and new live together while copying (an arena's untouched tail costs nothing)
        more = 2 * self.slots.nbytes * full + (int(self.m.sum()) if width else 0)
        if self.limit is not None and self.nbytes + more + need > self.limit:
            raise OverflowError("the string dictionary outgrew its memory budget")
        if width:
            ar = np.empty((self.shards, width), np.uint8)
            ar[:, :self.m.max()] = self.ar[:, :self.m.max()]
            self.ar = ar
        if full:
            self.slots = np.zeros((self.shards, 2 * self.slots.shape[1]), np.uint64)
            _rehash(self.ar, self.n, self.slots)

    def distinct(self) -> tuple[StrCol, np.ndarray]:
        """(the distinct strings, the entry number of each)."""
        recs = []
        for t in range(self.shards):
            rec = np.empty(int(self.n[t]), np.int64)
            _records(self.ar[t], rec)
            recs.append(rec)
        lengths = np.concatenate([np.diff(np.append(r, self.m[t])) - _HEAD
                                  for t, r in enumerate(recs)])
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), np.uint8)
        a = 0
        for t, rec in enumerate(recs):
            _gather(self.ar[t], rec, offsets[a:a + len(rec) + 1], data)
            a += len(rec)
        return StrCol(offsets, data), _entries(self.n)


@njit(cache=True, parallel=True, nogil=True)
def _add_int(q, qh, start, slots, keys, n, out, sbits):
    """Insert ids start[t].. of q into shard t, every shard at once; a slot is (key,
    local entry + 1), 0 in the second word when empty. A shard stops early when a new entry
    would pass the load factor 3/4 (start[t] is then that id)."""
    shards = slots.shape[0]
    cap = slots.shape[1]
    mask = np.uint64(cap - 1)
    q_n = q.shape[0]
    for t in prange(shards):
        nt = n[t]
        ks = slots[t, :, 0]
        i = start[t]
        while i < q_n:
            j = min(i + _AHEAD, q_n - 1)
            if _shard(qh[j], sbits) == t:
                prefetch(ks, np.int64(qh[j] & mask))      # its slot, loaded while we probe
            h = qh[i]
            if _shard(h, sbits) != t:
                i += 1
                continue
            k = q[i]
            s = np.int64(h & mask)
            while slots[t, s, 1] != 0 and slots[t, s, 0] != k:
                s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
            if slots[t, s, 1] != 0:
                out[i] = (slots[t, s, 1] - 1) * shards + t
                i += 1
                continue
            if 4 * (nt + 1) > 3 * cap:
                break
            slots[t, s, 0] = k
            slots[t, s, 1] = nt + 1
            keys[t, nt] = k
            out[i] = nt * shards + t
            nt += 1
            i += 1
        start[t] = i
        n[t] = nt


@njit(cache=True, parallel=True, nogil=True)
def _rehash_int(keys, n, slots):
    mask = np.uint64(slots.shape[1] - 1)
    for t in prange(slots.shape[0]):
        ks = slots[t, :, 0]
        for e in range(n[t]):
            if e + _AHEAD < n[t]:
                prefetch(ks, np.int64(mix64(np.uint64(keys[t, e + _AHEAD])) & mask))
            k = keys[t, e]
            s = np.int64(mix64(np.uint64(k)) & mask)
            while slots[t, s, 1] != 0:
                s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
            slots[t, s, 0] = k
            slots[t, s, 1] = e + 1


class IntDict(_Sharded):
    """Distinct int64 ids; `add` gives each id its entry number."""

    def __init__(self, capacity: int = 1 << 16, limit: int | None = None,
                 shards: int | None = None):
        super().__init__(capacity, limit, shards)
        cap = self.cap0
        self.slots = np.zeros((self.shards, cap, 2), np.int64)
        self.keys = np.empty((self.shards, cap * 3 // 4 + 1), np.int64)

    @property
    def nbytes(self) -> int:
        return int(self.slots.nbytes + 8 * self.n.sum())

    def add(self, col: np.ndarray) -> np.ndarray:
        """Entry number (int32) of every id of `col`, inserting the new ones."""
        q = np.ascontiguousarray(col, np.int64)
        out = np.empty(len(q), np.int32)
        h = np.empty(len(q), np.uint64)
        _hash_ints(q, h)
        start = np.zeros(self.shards, np.int64)
        while True:
            _add_int(q, h, start, self.slots, self.keys, self.n, out, self.sbits)
            if (start >= len(q)).all():
                return out
            self._grow()

    def _grow(self) -> None:
        cap = self.slots.shape[1]
        if (2 * cap * 3 // 4 + 1) * self.shards >= _MAX_ENTRIES:
            raise OverflowError("the id dictionary outgrew its addressing")
        more = 2 * self.slots.nbytes + 8 * int(self.n.sum())  # old and new live together
        if self.limit is not None and self.nbytes + more > self.limit:
            raise OverflowError("the id dictionary outgrew its memory budget")
        keys = np.empty((self.shards, 2 * cap * 3 // 4 + 1), np.int64)
        keys[:, :self.keys.shape[1]] = self.keys
        self.keys = keys
        self.slots = np.zeros((self.shards, 2 * cap, 2), np.int64)
        _rehash_int(self.keys, self.n, self.slots)

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """(the distinct ids, the entry number of each)."""
        return (np.concatenate([self.keys[t, :self.n[t]] for t in range(self.shards)]),
                _entries(self.n))


def _inverse(order: np.ndarray) -> np.ndarray:
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank


def sorted_int_ranks(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`keys` ascending, the dense id of each key): `keys` holds no duplicates."""
    from lrgi_ooc.store.idkernel import rank_int64
    uniq = np.sort(keys)                   # a vectorised sort: 6x an argsort's speed
    return uniq, rank_int64(uniq, keys)


def sorted_ranks(col: StrCol) -> tuple[StrCol, np.ndarray]:
    """(the strings of `col` in bytewise order, the dense id of each string of `col`): the
    dense id of a string is its position in that order. `col` holds no duplicates."""
    from lrgi_ooc.store import strsort
    order = strsort.bytewise_order(col)
    return strsort.take(col, order), _inverse(order)


def entry_ranks(span: int, entries: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """The dense id of every entry number (int32; -1 where no entry has that number)."""
    out = np.full(span, -1, np.int32)
    out[entries] = rank
    return out


@njit(cache=True, parallel=True, nogil=True)
def _gather_ranks(table, idx, out):
    for i in prange(idx.shape[0]):
        out[i] = table[idx[i]]


def gather(table: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """table[idx] on every thread (np.take is one thread; these gathers miss the cache)."""
    out = np.empty(len(idx), table.dtype)
    _gather_ranks(table, np.ascontiguousarray(idx), out)
    return out
