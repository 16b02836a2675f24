"""Growable hash dictionaries of node ids (byte strings, int64) for the in-memory remap.

Why: the block-wise path hashed and sorted every block to deduplicate it, then hashed and
searched every endpoint again to rank it (100 M edges of 21-byte ids: 316 s, 17x the dense
preprocess). Here each endpoint is hashed and inserted once, and comes back as the index of
its entry (first-seen order); one bytewise sort of the distinct strings then gives every entry
its dense id, and rewriting the edges is a gather. Same dense ids as before (bytewise order
of the distinct strings), so stores do not change. Open addressing with linear probing on the
splitmix-mixed 64-bit hash, every match confirmed byte by byte. Integer ids get the same
one pass (`IntDict`: 16-byte slots of key and entry, filled to 3/4): the block sorts of the
collecting pass and the searched ranks of the CSR build's read become one probe an endpoint.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from lrgi_ooc.store.idcols import StrCol
from lrgi_ooc.store.idkernel import _hash_strings, hash_bytes, mix64

_MAX_ENTRIES = (1 << 31) - 1          # entry indices are 4 bytes in the arena
_HEAD = 8                             # arena record: entry (4 bytes), length (4), bytes
_START_BITS = 40                      # a slot: 24 bits of the hash | arena offset (40)
_AHEAD = 8


@njit(cache=True, nogil=True, inline="always")
def _u32(a, p):
    return (np.int64(a[p]) | (np.int64(a[p + 1]) << 8) | (np.int64(a[p + 2]) << 16)
            | (np.int64(a[p + 3]) << 24))


@njit(cache=True, nogil=True, inline="always")
def _put32(a, p, v):
    for k in range(4):
        a[p + k] = (v >> (8 * k)) & 255


@njit(cache=True, nogil=True)
def _add(qo, qd, qh, start, slots, ar, n, m, out, sink):
    """Insert strings start.. of (qo, qd); stops early when a new entry would not fit (the
    arena, or the load factor 3/4) and returns (next string, entries, arena bytes). A probe
    reads one slot (8 bytes: a 24-bit hash tag and the record's offset) and, when the tags
    agree, one arena record; two cache misses where separate arrays cost four."""
    mask = np.uint64(slots.shape[0] - 1)
    low = np.uint64((1 << _START_BITS) - 1)
    last = qo.shape[0] - 2
    touch = np.uint64(0)
    for i in range(start, qo.shape[0] - 1):
        # load the slot of a string _AHEAD places on: its cache miss overlaps this probe
        touch += slots[np.int64(qh[min(i + _AHEAD, last)] & mask)]
        h = qh[i]
        tag = h >> np.uint64(_START_BITS)
        a0 = qo[i]
        ln = qo[i + 1] - a0
        s = np.int64(h & mask)
        e = -1
        while True:
            v = slots[s]
            if v == 0:
                break
            if (v >> np.uint64(_START_BITS)) == tag:
                r = np.int64(v & low)
                if _u32(ar, r + 4) == ln:
                    same = True
                    for k in range(ln):
                        if ar[r + _HEAD + k] != qd[a0 + k]:
                            same = False
                            break
                    if same:
                        e = _u32(ar, r)
                        break
            s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
        if e >= 0:
            out[i] = e
            continue
        if m + _HEAD + ln > ar.shape[0] or 4 * (n + 1) > 3 * slots.shape[0]:
            sink[0] = touch
            return i, n, m
        slots[s] = (tag << np.uint64(_START_BITS)) | np.uint64(m)
        _put32(ar, m, n)
        _put32(ar, m + 4, ln)
        for k in range(ln):
            ar[m + _HEAD + k] = qd[a0 + k]
        m += _HEAD + ln
        out[i] = n
        n += 1
    sink[0] = touch
    return qo.shape[0] - 1, n, m


@njit(cache=True, nogil=True)
def _records(ar, offsets):
    """Arena offset of every record, in entry order (the arena is written in that order)."""
    r = np.int64(_HEAD)
    for e in range(offsets.shape[0]):
        offsets[e] = r
        r += _HEAD + _u32(ar, r + 4)


@njit(cache=True, nogil=True)
def _rehash(ar, rec, slots):
    """Re-insert every record, hashing its bytes in the arena (no copy of the strings)."""
    mask = np.uint64(slots.shape[0] - 1)
    for e in range(rec.shape[0]):
        r = rec[e] + _HEAD
        h = hash_bytes(ar, r, r + _u32(ar, rec[e] + 4))
        s = np.int64(h & mask)
        while slots[s] != 0:
            s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
        slots[s] = ((h >> np.uint64(_START_BITS)) << np.uint64(_START_BITS)) \
            | np.uint64(rec[e])


@njit(cache=True, nogil=True)
def _gather(ar, rec, offsets, data):
    for e in range(rec.shape[0]):
        r = rec[e] + _HEAD
        for k in range(offsets[e + 1] - offsets[e]):
            data[offsets[e] + k] = ar[r + k]


class StrDict:
    """Distinct byte strings in first-seen order; `add` gives each string its entry index."""

    def __init__(self, capacity: int = 1 << 16, limit: int | None = None):
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self.limit = limit            # growing past it raises OverflowError (nothing kept)
        self.slots = np.zeros(2 * cap, np.uint64)
        self.ar = np.zeros(32 * cap, np.uint8)
        self._sink = np.zeros(1, np.uint64)
        self.n, self.m = 0, _HEAD             # offset 0 is "empty slot": no record there

    @property
    def nbytes(self) -> int:
        """Bytes in use (the unused tail of the arena is never touched)."""
        return int(self.slots.nbytes + self.m)

    def __len__(self) -> int:
        return self.n

    def add(self, col: StrCol) -> np.ndarray:
        """Entry index (int64) of every string of `col`, inserting the new ones."""
        q = len(col)
        out = np.empty(q, np.int64)
        h = np.empty(q, np.uint64)
        data = col.data if len(col.data) else np.zeros(1, np.uint8)
        _hash_strings(col.offsets, data, h)
        i = 0
        while i < q:
            i, self.n, self.m = _add(col.offsets, data, h, i, self.slots, self.ar, self.n,
                                     self.m, out, self._sink)
            if i < q:
                self._grow(int(col.offsets[i + 1] - col.offsets[i]))
        return out

    def _grow(self, need: int) -> None:
        if self.n + 1 >= _MAX_ENTRIES or self.m + _HEAD + need >= 1 << _START_BITS:
            raise OverflowError("the string dictionary outgrew its addressing")
        more = 2 * self.slots.nbytes if 4 * (self.n + 1) > 3 * len(self.slots) else 0
        if self.limit is not None and self.nbytes + more + need > self.limit:
            raise OverflowError("the string dictionary outgrew its memory budget")
        if self.m + _HEAD + need > len(self.ar):
            ar = np.empty(max(2 * len(self.ar), self.m + _HEAD + need), np.uint8)
            ar[:self.m] = self.ar[:self.m]
            self.ar = ar
        if 4 * (self.n + 1) > 3 * len(self.slots):
            self.slots = np.zeros(2 * len(self.slots), np.uint64)
            _rehash(self.ar, self._rec(), self.slots)

    def _rec(self) -> np.ndarray:
        rec = np.empty(self.n, np.int64)
        _records(self.ar, rec)
        return rec

    def strings(self) -> StrCol:
        """The distinct strings, entry i at position i."""
        rec = self._rec()
        offsets = np.zeros(self.n + 1, np.int64)
        if self.n:
            lengths = np.diff(np.append(rec, self.m)) - _HEAD
            np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), np.uint8)
        _gather(self.ar, rec, offsets, data)
        return StrCol(offsets, data)


@njit(cache=True, nogil=True)
def _add_int(q, start, slots, keys, n, out, sink):
    """Insert ids start.. of q; a slot is (key, entry + 1), 0 in the second word when empty.
    Stops early when a new entry would pass the load factor 3/4 or the key array."""
    cap = slots.shape[0]
    mask = np.uint64(cap - 1)
    last = q.shape[0] - 1
    touch = np.int64(0)
    for i in range(start, q.shape[0]):
        touch += slots[np.int64(mix64(np.uint64(q[min(i + _AHEAD, last)])) & mask), 1]
        k = q[i]
        s = np.int64(mix64(np.uint64(k)) & mask)
        while slots[s, 1] != 0 and slots[s, 0] != k:
            s = np.int64((np.uint64(s) + np.uint64(1)) & mask)
        if slots[s, 1] != 0:
            out[i] = slots[s, 1] - 1
            continue
        if n >= keys.shape[0] or 4 * (n + 1) > 3 * cap:
            sink[0] = touch                   # keeps the early loads
            return i, n
        slots[s, 0] = k
        slots[s, 1] = n + 1
        keys[n] = k
        out[i] = n
        n += 1
    sink[0] = touch
    return q.shape[0], n


class IntDict:
    """Distinct int64 ids in first-seen order; `add` gives each id its entry index."""

    def __init__(self, capacity: int = 1 << 16, limit: int | None = None):
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self.limit = limit            # growing past it raises OverflowError (nothing kept)
        self.slots = np.zeros((cap, 2), np.int64)
        self.keys = np.empty(cap, np.int64)
        self._sink = np.zeros(1, np.int64)
        self.n = 0

    @property
    def nbytes(self) -> int:
        return int(self.slots.nbytes + 8 * self.n)

    def __len__(self) -> int:
        return self.n

    def add(self, col: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(col, np.int64)
        out = np.empty(len(q), np.int64)
        i = 0
        while i < len(q):
            i, self.n = _add_int(q, i, self.slots, self.keys, self.n, out, self._sink)
            if i < len(q):
                self._grow()
        return out

    def _grow(self) -> None:
        more = 2 * self.slots.nbytes if 4 * (self.n + 1) > 3 * len(self.slots) else 8 * self.n
        if self.limit is not None and self.nbytes + more > self.limit:
            raise OverflowError("the id dictionary outgrew its memory budget")
        if self.n >= len(self.keys):
            keys = np.empty(2 * len(self.keys), np.int64)
            keys[:self.n] = self.keys[:self.n]
            self.keys = keys
        if 4 * (self.n + 1) > 3 * len(self.slots):
            self.slots = np.zeros((2 * len(self.slots), 2), np.int64)
            _add_int(self.keys[:self.n], 0, self.slots, np.empty(self.n, np.int64), 0,
                     np.empty(self.n, np.int64), self._sink)

    def ids(self) -> np.ndarray:
        return self.keys[:self.n].copy()


def _inverse(order: np.ndarray) -> np.ndarray:
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank


def sorted_int_ranks(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(`keys` ascending, the dense id of each key): `keys` holds no duplicates."""
    order = np.argsort(keys, kind="stable")
    return keys[order], _inverse(order)


def sorted_ranks(col: StrCol) -> tuple[StrCol, np.ndarray]:
    """(the strings of `col` in bytewise order, the dense id of each string of `col`): the
    dense id of a string is its position in that order. `col` holds no duplicates."""
    import pyarrow.compute as pc
    order = pc.sort_indices(col.to_arrow()).to_numpy().astype(np.int64)
    return col.take(order), _inverse(order)
