"""Bytewise order of byte strings, compiled: the dictionary's distinct strings get their
dense ids from it (issue 16), and Arrow's generic string sort took 6.6 s for 10 M ids.

One vectorised integer sort, then small settles. Every string's key is the bytes after the
prefix all the strings share, each as an order-preserving code of as few bits as the bytes
that occur need (0 marks the end of a string), as many as fit beside the string's index in
one uint64 (10 M hex ids: 8 codes of 5 bits beside 24 bits of index): sorting those packed
words (numpy's SIMD sort) orders the strings by key and carries the permutation in the low
bits. Each run of equal keys is then settled on its own (one thread per run): short runs
by insertion with a word-at-a-time comparison, long ones by words, 8 bytes deeper each
round, strings that end within the shared bytes first, shortest first (each is a prefix of
the longer). 10 M ids of the form `user-<16 hex>`, loaded machine: 6.0 s -> 1.8 s
(docs/benchmarks.md, session 15).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from lrgi_ooc.store.idcols import StrCol


@njit(cache=True, nogil=True, inline="always")
def _word(off, data, i, p):
    """Bytes [p, p + 8) of string i as a big-endian integer, zero padded."""
    a = off[i] + p
    b = off[i + 1]
    w = np.uint64(0)
    for k in range(8):
        w <<= np.uint64(8)
        if a + k < b:
            w |= np.uint64(data[a + k])
    return w


@njit(cache=True, nogil=True)
def _shared_prefix(off, data):
    """Bytes every string starts with (at most the shortest string's length)."""
    n = off.shape[0] - 1
    cp = off[1] - off[0]
    for i in range(1, n):
        cp = min(cp, off[i + 1] - off[i])
        k = 0
        while k < cp and data[off[i] + k] == data[off[0] + k]:
            k += 1
        cp = k
        if cp == 0:
            break
    return cp


@njit(cache=True, nogil=True)
def _codes(off, data, p):
    """An order-preserving code of every byte that occurs after the shared prefix: 1, 2, ...
    in byte order (0 is the end of a string, before every byte); and how many there are."""
    seen = np.zeros(256, np.bool_)
    for i in range(off.shape[0] - 1):
        for k in range(off[i] + p, off[i + 1]):
            seen[data[k]] = True
    code = np.zeros(256, np.uint64)
    a = 0
    for b in range(256):
        if seen[b]:
            a += 1
            code[b] = a
    return code, a


@njit(cache=True, parallel=True, nogil=True)
def _packed_keys(off, data, p, code, bits, chars, ib, out):
    """(the codes of bytes [p, p + chars), `bits` each) << ib | i, for every string i."""
    for i in prange(out.shape[0]):
        a = off[i] + p
        b = off[i + 1]
        w = np.uint64(0)
        for k in range(chars):
            w <<= np.uint64(bits)
            if a + k < b:
                w |= code[data[a + k]]
        out[i] = (w << np.uint64(ib)) | np.uint64(i)


@njit(cache=True, parallel=True, nogil=True)
def _unpack(packed, ib, order):
    low = np.uint64((1 << ib) - 1)
    for i in prange(packed.shape[0]):
        order[i] = np.int64(packed[i] & low)


@njit(cache=True, nogil=True)
def _runs(packed, ib, starts, ends):
    """Write the (start, end) of every run of equal keys longer than one string, if given
    room; return how many there are."""
    n = packed.shape[0]
    sh = np.uint64(ib)
    r = 0
    i = 0
    while i < n:
        j = i + 1
        while j < n and (packed[j] >> sh) == (packed[i] >> sh):
            j += 1
        if j - i > 1:
            if r < starts.shape[0]:
                starts[r], ends[r] = i, j
            r += 1
        i = j
    return r


def _ties(packed: np.ndarray, ib: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the runs of equal keys longer than one string: counted, then written."""
    none = np.empty(0, np.int64)
    k = _runs(packed, ib, none, none)
    starts, ends = np.empty(k, np.int64), np.empty(k, np.int64)
    _runs(packed, ib, starts, ends)
    return starts, ends


@njit(cache=True, nogil=True, inline="always")
def _less(off, data, i, j, p):
    """String i before string j, both sharing (zero padded) bytes [0, p)."""
    li = off[i + 1] - off[i]
    lj = off[j + 1] - off[j]
    while True:
        wi = _word(off, data, i, p)
        wj = _word(off, data, j, p)
        if wi != wj:
            return wi < wj
        if li <= p + 8 or lj <= p + 8:
            return li < lj
        p += 8


@njit(cache=True, nogil=True)
def _insertion(off, data, order, lo, hi, p):
    for a in range(lo + 1, hi):
        x = order[a]
        b = a - 1
        while b >= lo and _less(off, data, x, order[b], p):
            order[b + 1] = order[b]
            b -= 1
        order[b + 1] = x


_SMALL = 24                           # runs up to this size are settled by insertion


@njit(cache=True, nogil=True)
def _settle(off, data, order, lo, hi, p0):
    """Sort order[lo:hi], whose strings share (zero padded) bytes [0, p0), bytewise."""
    stack = [(lo, hi, p0)]
    while len(stack):
        a, b, p = stack.pop()
        if b - a <= _SMALL:
            _insertion(off, data, order, a, b, p)
            continue
        # strings ending within the shared bytes first, by length
        ended = []
        rest = []
        for q in range(a, b):
            i = order[q]
            if off[i + 1] - off[i] <= p:
                ended.append(i)
            else:
                rest.append(i)
        q = a
        if len(ended):
            lens = np.empty(len(ended), np.int64)
            for k in range(len(ended)):
                lens[k] = off[ended[k] + 1] - off[ended[k]]
            for k in np.argsort(lens, kind="mergesort"):
                order[q] = ended[k]
                q += 1
        if len(rest) == 0:
            continue
        keys = np.empty(len(rest), np.uint64)
        for k in range(len(rest)):
            keys[k] = _word(off, data, rest[k], p)
        sub = np.argsort(keys, kind="mergesort")
        start = q
        for k in range(len(sub)):
            order[q] = rest[sub[k]]
            q += 1
        k = 0
        while k < len(sub):
            e = k + 1
            while e < len(sub) and keys[sub[e]] == keys[sub[k]]:
                e += 1
            if e - k > 1:
                stack.append((start + k, start + e, p + 8))
            k = e


@njit(cache=True, parallel=True, nogil=True)
def _settle_runs(off, data, order, starts, ends, p0):
    for r in prange(starts.shape[0]):
        _settle(off, data, order, starts[r], ends[r], p0)


@njit(cache=True, parallel=True, nogil=True)
def _take(off, data, order, new_off, out):
    for j in prange(order.shape[0]):
        i = order[j]
        a = off[i]
        p = new_off[j]
        for k in range(off[i + 1] - a):
            out[p + k] = data[a + k]


def bytewise_order(col: StrCol) -> np.ndarray:
    """The permutation that puts the strings of `col` in bytewise order (int64); ties keep
    no particular order, so `col` should hold distinct strings."""
    n = len(col)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    data = col.kernel_data
    p = int(_shared_prefix(col.offsets, data))
    code, alphabet = _codes(col.offsets, data, p)
    bits = max(1, int(alphabet).bit_length())  # a code, 0 (the end) included
    ib = (n - 1).bit_length()                 # the index's bits; the key keeps the rest
    chars = (64 - ib) // bits
    packed = np.empty(n, np.uint64)
    _packed_keys(col.offsets, data, p, code, bits, chars, ib, packed)
    packed.sort()
    order = np.empty(n, np.int64)
    _unpack(packed, ib, order)
    starts, ends = _ties(packed, ib)
    del packed
    # equal keys: equal bytes [0, p + chars) (a string ending there is the run's first)
    _settle_runs(col.offsets, data, order, starts, ends, p + chars)
    return order


def take(col: StrCol, order: np.ndarray) -> StrCol:
    """The strings of `col` at `order`, on every thread."""
    lengths = np.diff(col.offsets)[order]
    off = np.zeros(len(order) + 1, np.int64)
    np.cumsum(lengths, out=off[1:])
    out = np.empty(int(off[-1]), np.uint8)
    _take(col.offsets, col.kernel_data, np.ascontiguousarray(order, np.int64), off, out)
    return StrCol(off, out)
