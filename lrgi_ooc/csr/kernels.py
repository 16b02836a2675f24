"""numba kernels of the CSR build (csrbuild.py): validation scan, routing to destination
ranges, partitioning into cache-sized parts, per-part counting sort and row sort + dedup.
Plain arrays in, plain arrays out; `csrbuild` owns the buffers, files and memory budget."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

@njit(cache=True)
def _minmax(s, d):
    mn, mx = np.int64(0), np.int64(-1)
    for i in range(len(s)):
        a, b = np.int64(s[i]), np.int64(d[i])
        mn = min(mn, a, b)
        mx = max(mx, a, b)
    return mn, mx


@njit(cache=True)
def _scan(s, d, pairs, hist, shift, undirected, drop_loops):
    """Copy edges into `pairs`, count in-edges per id block; return the number of self loops."""
    loops = 0
    for i in range(len(s)):
        a, b = np.int64(s[i]), np.int64(d[i])
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
def _route(pairs, shift, block_bucket, undirected, drop_loops, bounds, out):
    """Counting sort of edges (and reverses) by the range of their destination."""
    bounds[:] = 0
    for i in range(pairs.shape[0]):
        a, b = pairs[i, 0], pairs[i, 1]
        if not (drop_loops and a == b):
            bounds[block_bucket[b >> shift] + 1] += 1
            if undirected:
                bounds[block_bucket[a >> shift] + 1] += 1
    for k in range(1, len(bounds)):
        bounds[k] += bounds[k - 1]
    for i in range(pairs.shape[0]):
        a, b = pairs[i, 0], pairs[i, 1]
        if not (drop_loops and a == b):
            k = block_bucket[b >> shift]
            out[bounds[k], 0], out[bounds[k], 1] = a, b
            bounds[k] += 1
            if undirected:
                k = block_bucket[a >> shift]
                out[bounds[k], 0], out[bounds[k], 1] = b, a
                bounds[k] += 1
    for k in range(len(bounds) - 1, 0, -1):
        bounds[k] = bounds[k - 1]
    bounds[0] = 0


@njit(cache=True)
def _parts(pairs, lo, pshift, undirected, drop_loops, pos, out, dl):
    """Append sources to their destination's part (out) with the destination within it (dl)."""
    mask = (1 << pshift) - 1
    for i in range(pairs.shape[0]):
        a, b = pairs[i, 0], pairs[i, 1]
        if drop_loops and a == b:
            continue
        r = b - lo
        q = r >> pshift
        out[pos[q]] = a
        dl[pos[q]] = r & mask
        pos[q] += 1
        if undirected:
            r = a - lo
            q = r >> pshift
            out[pos[q]] = b
            dl[pos[q]] = r & mask
            pos[q] += 1


@njit(cache=True)
def _part(out, dl, a0, a1, r0, nr, dedup, indptr, cnt, nxt, tmp):
    """One part: counting sort by dl (through `tmp` when the part fits it, in place
    otherwise), then sort (+ dedup) each row, compacting to a0. indptr[r0 + r + 1] = end of row
    r relative to a0. Returns the number of entries kept."""
    cnt[:nr + 1] = 0
    for j in range(a0, a1):
        cnt[dl[j] + 1] += 1
    for r in range(nr):
        cnt[r + 1] += cnt[r]
    nxt[:nr] = cnt[:nr]
    if a1 - a0 <= len(tmp):
        src, base = tmp, 0
        for j in range(a0, a1):
            t = dl[j]
            tmp[nxt[t]] = out[j]
            nxt[t] += 1
    else:
        src, base = out, a0
        for r in range(nr):                        # American flag sort: cycle elements home
            while nxt[r] < cnt[r + 1]:
                j = a0 + nxt[r]
                t = dl[j]
                if t == r:
                    nxt[r] += 1
                else:
                    k = a0 + nxt[t]
                    nxt[t] += 1
                    out[j], out[k] = out[k], out[j]
                    dl[j] = dl[k]
    w = a0
    for r in range(nr):
        a, b = base + cnt[r], base + cnt[r + 1]
        if b - a > 24:
            src[a:b].sort()
        else:
            for j in range(a + 1, b):
                v = src[j]
                t = j - 1
                while t >= a and src[t] > v:
                    src[t + 1] = src[t]
                    t -= 1
                src[t + 1] = v
        for j in range(a, b):
            if not dedup or j == a or src[j] != src[j - 1]:
                out[w] = src[j]
                w += 1
        indptr[r0 + r + 1] = w - a0
    return w - a0


@njit(cache=True, parallel=True)
def _rows(out, dl, starts, pshift, nrows, dedup, indptr, cnt, nxt, tmp, kept):
    """All parts of a range, split between threads (scratch row t of cnt/nxt/tmp each), then
    one sequential pass moving each part's rows down behind the previous ones. Returns the
    number of stored entries; indptr[r + 1] = end of row r."""
    nparts = len(starts) - 1
    nt = cnt.shape[0]
    for t in prange(nt):
        for q in range(t * nparts // nt, (t + 1) * nparts // nt):
            r0 = q << pshift
            kept[q] = _part(out, dl, starts[q], starts[q + 1], r0,
                            min(1 << pshift, nrows - r0), dedup, indptr, cnt[t], nxt[t], tmp[t])
    indptr[0] = 0
    w = 0
    for q in range(nparts):
        a0 = starts[q]
        if w != a0:
            for j in range(kept[q]):
                out[w + j] = out[a0 + j]
        r0 = q << pshift
        for r in range(r0 + 1, min(r0 + (1 << pshift), nrows) + 1):
            indptr[r] += w
        w += kept[q]
    return w


