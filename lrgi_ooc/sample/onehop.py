"""Fixed-size one-hop neighbourhoods from a (memory-mapped) CSR, as plain index arrays.

Why this shape: LRGI trains one layer at a time, so a batch needs only the seeds, up to
k_prop propagation neighbours per seed (for v) and up to k_conv conv neighbours per target
(for u): at most B * (1 + k_prop) * (1 + k_conv) rows, whatever N and the depth.

Determinism: every random draw comes from a counter-based hash (splitmix64) of
(seed, epoch, step, node, role, draw), so a run resumed at (epoch, step) reproduces the
batch without replaying the earlier ones, and the result does not depend on threads.

Relabelling global -> local ids uses an open-addressing hash table that is allocated once
per thread and reset after each batch (only the touched slots), never an O(N) array.

No torch here: the sampler knows nothing of models.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from numba import njit

ROLE_PROP = 1
ROLE_CONV = 2
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass
class Batch:
    """One sampled batch; all ids except `seeds`/`nodes` are LOCAL row numbers.

    Local order: seeds first (0..B-1, input order), then the other propagation targets
    (B..num_targets-1), then nodes needed only as conv sources.
    """
    seeds: np.ndarray        # int64 [B] global ids, input order
    nodes: np.ndarray        # int64 [n] global ids of every needed row, local order
    num_targets: int         # T: rows 0..T-1 get a layer output u
    conv_src: np.ndarray     # int64 [Ec] in [0, n)
    conv_dst: np.ndarray     # int64 [Ec] in [0, T)
    prop_src: np.ndarray     # int64 [Ep] in [0, T)
    prop_dst: np.ndarray     # int64 [Ep] in [0, B)
    prop_weight: np.ndarray  # float32 [Ep]
    epoch: int = 0
    step: int = 0

    @property
    def num_seeds(self) -> int:
        return int(self.seeds.size)

    @property
    def num_nodes(self) -> int:
        return int(self.nodes.size)


# ------------------------------------------------------------------ numba kernels
@njit(cache=True, nogil=True, inline="always")
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _batch_key(seed, epoch, step):
    k = _mix(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
    k = _mix(k ^ (np.uint64(epoch) * np.uint64(0xD1B54A32D192ED03)))
    return _mix(k ^ (np.uint64(step) * np.uint64(0x8CB92BA72F3D8DD7)))


@njit(cache=True, nogil=True, inline="always")
def _choose(deg, k, key, sel):
    """Offsets of min(deg, k) distinct positions in [0, deg) (Robert Floyd's algorithm)."""
    if deg <= k:
        for q in range(deg):
            sel[q] = q
        return deg
    cnt = 0
    for j in range(deg - k, deg):
        r = _mix(key + np.uint64(cnt + 1) * np.uint64(0x9E3779B97F4A7C15))
        t = np.int64(np.float64(r >> np.uint64(11)) * (1.0 / 9007199254740992.0) * (j + 1))
        if t > j:
            t = j
        found = False
        for q in range(cnt):
            if sel[q] == t:
                found = True
                break
        sel[cnt] = j if found else t
        cnt += 1
    return k


@njit(cache=True, nogil=True, inline="always")
def _slot(tab, mask, g):
    """Slot of key g in the interleaved [key, value] table (linear probing)."""
    h = np.int64(_mix(np.uint64(g)) & np.uint64(mask))
    while tab[h, 0] != -1 and tab[h, 0] != g:
        h = (h + 1) & mask
    return h


@njit(cache=True, nogil=True)
def _hop(indptr, indices, count, k, role, bkey, tab, nodes, slot_of, n, src, dst):
    """Up to k distinct in-neighbours of each local row 0..count-1 as edges (src -> dst)."""
    mask = tab.shape[0] - 1
    sel = np.empty(max(k, 1), np.int64)
    e = 0
    for t in range(count):
        g = nodes[t]
        start = indptr[g]
        deg = indptr[g + 1] - start
        key = _mix(bkey ^ _mix(np.uint64(g) * np.uint64(4) + np.uint64(role)))
        kk = _choose(deg, k, key, sel)
        for q in range(kk):
            j = np.int64(indices[start + sel[q]])
            h = _slot(tab, mask, j)
            if tab[h, 0] != j:   # new node: next local id (inlined by hand: a helper
                tab[h, 0] = j    # call here made the whole sampler 1.5x slower)
                tab[h, 1] = n
                nodes[n] = j
                slot_of[n] = h
                n += 1
            src[e] = tab[h, 1]
            dst[e] = t
            e += 1
    return n, e


@njit(cache=True, nogil=True)
def _prop_weights(indptr, nodes, src, dst, num_seeds, sym):
    cnt = np.zeros(num_seeds, np.int64)
    for e in range(dst.size):
        cnt[dst[e]] += 1
    w = np.empty(dst.size, np.float32)
    for e in range(dst.size):
        k = cnt[dst[e]]
        if sym:
            gi, gj = nodes[dst[e]], nodes[src[e]]
            di = indptr[gi + 1] - indptr[gi]
            dj = max(indptr[gj + 1] - indptr[gj], 1)
            w[e] = np.float32(di / (k * np.sqrt(np.float64(di) * dj)))
        else:
            w[e] = np.float32(1.0 / k)
    return w


@njit(cache=True, nogil=True)
def _sample_kernel(indptr, indices, seeds, kp, kc, bkey, sym, tab):
    B = seeds.size
    mask = tab.shape[0] - 1
    bound = B * (1 + kp) * (1 + kc)
    nodes = np.empty(bound, np.int64)
    slot_of = np.empty(bound, np.int64)
    n = 0
    dup = -1
    for i in range(B):
        g = np.int64(seeds[i])
        h = _slot(tab, mask, g)
        if tab[h, 0] == g:
            dup = i
            break
        tab[h, 0], tab[h, 1] = g, i
        nodes[i], slot_of[i] = g, h
        n += 1
    prop = np.empty((2, B * kp), np.int64)
    conv = np.empty((2, B * (1 + kp) * kc), np.int64)
    ep = ec = 0
    T = n
    if dup < 0:
        n, ep = _hop(indptr, indices, B, kp, ROLE_PROP, bkey, tab, nodes, slot_of, n,
                     prop[0], prop[1])
        T = n
        n, ec = _hop(indptr, indices, T, kc, ROLE_CONV, bkey, tab, nodes, slot_of, n,
                     conv[0], conv[1])
    for q in range(n):           # reset only the touched slots: the table is reused
        tab[slot_of[q], 0] = -1
    psrc, pdst = prop[0, :ep].copy(), prop[1, :ep].copy()
    conv_out = np.empty((2, ec), np.int64)
    conv_out[:, :] = conv[:, :ec]
    return (dup, nodes[:n].copy(), T, conv_out, psrc, pdst,
            _prop_weights(indptr, nodes, psrc, pdst, B, sym))


# ------------------------------------------------------------------ the sampler
class OneHopSampler:
    """LRGI's [k_prop, k_conv] sampler over a CSR whose row i lists the nodes i receives from.

    norm="mean": prop_weight = 1/k_i (mean over the k_i sampled neighbours of seed i).
    norm="sym":  prop_weight = deg_i / (k_i * sqrt(deg_i * deg_j)), full in-degrees from indptr
                 (deg_j clamped to >= 1): an unbiased estimate of (D^-1/2 A D^-1/2 u)_i, exact
                 when deg_i <= k_prop. Seeds without neighbours get no prop edge (v = 0).
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray,
                 fanout: tuple[int, int] = (10, 5), *, norm: str = "mean", seed: int = 0):
        if norm not in ("mean", "sym"):
            raise ValueError(f"norm must be 'mean' or 'sym', got {norm!r}")
        kp, kc = (int(f) for f in fanout)
        if kp < 0 or kc < 0:
            raise ValueError(f"fanout must be non-negative, got {fanout}")
        if indptr.dtype != np.int64:
            raise ValueError(f"indptr must be int64, got {indptr.dtype}")
        if indices.dtype not in (np.int32, np.int64):
            raise ValueError(f"indices must be int32 or int64, got {indices.dtype}")
        self.indptr, self.indices = indptr, indices
        self.fanout = (kp, kc)
        self.norm = norm
        self.seed = int(seed)
        self.num_nodes = int(indptr.shape[0]) - 1
        self._local = threading.local()

    def max_rows(self, batch_size: int) -> int:
        """Upper bound of rows (nodes) in a batch of `batch_size` seeds."""
        kp, kc = self.fanout
        return min(batch_size * (1 + kp) * (1 + kc), max(self.num_nodes, batch_size))

    def _table(self, batch_size: int) -> np.ndarray:
        """Per-thread relabel table [slots, (key, local id)]: allocated once per thread, grown
        only for bigger batches, load factor < 0.5."""
        need = 1 << max(10, int(2 * self.max_rows(batch_size) - 1).bit_length())
        tab = getattr(self._local, "tab", None)
        if tab is None or tab.shape[0] < need:
            tab = np.full((need, 2), -1, np.int64)
            self._local.tab = tab
        return tab

    def sample(self, seeds: np.ndarray, epoch: int, step: int) -> Batch:
        """Sample the batch of `seeds` (distinct global ids); pure function of (seed, epoch,
        step, seeds, graph)."""
        seeds = np.ascontiguousarray(seeds, dtype=np.int64)
        if seeds.ndim != 1:
            raise ValueError("seeds must be one-dimensional")
        if seeds.size and (seeds.min() < 0 or seeds.max() >= self.num_nodes):
            raise ValueError(f"seed ids must lie in [0, {self.num_nodes})")
        tab = self._table(seeds.size)
        kp, kc = self.fanout
        bkey = np.uint64(_batch_key(np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF),
                                    np.uint64(epoch), np.uint64(step)))
        dup, nodes, T, conv, psrc, pdst, pw = _sample_kernel(
            self.indptr, self.indices, seeds, kp, kc, bkey, self.norm == "sym", tab)
        if dup >= 0:
            raise ValueError(f"seeds must be distinct: seed {seeds[dup]} repeats "
                             f"(position {dup})")
        return Batch(seeds=seeds, nodes=nodes, num_targets=int(T), conv_src=conv[0],
                     conv_dst=conv[1], prop_src=psrc, prop_dst=pdst, prop_weight=pw,
                     epoch=int(epoch), step=int(step))

    def epoch_batches(self, nodes: np.ndarray, batch_size: int, epoch: int) -> list[np.ndarray]:
        """Seed batches of one epoch: a shuffle that depends only on (seed, epoch).

        A last batch of fewer than 2 seeds is dropped: LRGI's covariance needs B >= 2.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), 0x5A3D])
        perm = rng.permutation(np.asarray(nodes, dtype=np.int64))
        out = [perm[s:s + batch_size] for s in range(0, perm.size, batch_size)]
        if out and out[-1].size < 2:
            out.pop()
        return out

    def iter_epoch(self, nodes: np.ndarray, batch_size: int, epoch: int,
                   start_step: int = 0) -> Iterator[Batch]:
        """Batches of one epoch from `start_step` on (resume without replaying)."""
        for step, seeds in enumerate(self.epoch_batches(nodes, batch_size, epoch)):
            if step >= start_step:
                yield self.sample(seeds, epoch, step)
