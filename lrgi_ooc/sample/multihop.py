"""L-hop neighbourhoods for END-TO-END training of L stacked layers, as plain index arrays.

Why it exists: the baseline LRGI is compared against (docs/benchmarks.md "Depth"). Training
L layers at once with the same loss needs `[k_prop] + [k] * (L-1) + [k_last]` sampling
(LRGI.md: `[10] * L + [5]`): seeds -> up to k_prop propagation neighbours (targets S_0 = T),
then L conv hops; hop j samples up to k_j in-neighbours of EVERY row of S_{j-1}, and
S_j = S_{j-1} + the new sources. Rows grow as ~(1 + k)^L until they saturate at N: that is
the neighbourhood explosion the layer-wise schedule avoids.

Same randomness as `sampler.OneHopSampler` (its numba kernels are reused, not copied): a
node's draw is keyed by (seed, epoch, step, node, role), so with L = 1 a batch is exactly the
layer-wise one, and a node re-visited by a later hop with the same fanout gets the same
neighbours. No torch here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from lrgi_ooc.sample.onehop import ROLE_CONV, Batch, OneHopSampler, _batch_key, _hop, _slot


def depth_fanouts(num_layers: int, k_prop: int = 10, k_conv: int = 10,
                  k_last: int = 5) -> tuple[int, ...]:
    """(k_prop, k_conv x (L-1), k_last): LRGI.md's `[10] * L + [5]` for the defaults."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return (int(k_prop),) + (int(k_conv),) * (int(num_layers) - 1) + (int(k_last),)


@dataclass
class MultiHopBatch(Batch):
    """A `Batch` whose conv edges (hop 1, into the targets) are followed by L-1 more hops.

    Local order: S_0 = targets (seeds first), then S_1 \\ S_0, ..., S_L \\ S_{L-1}, so every
    hop's targets are a prefix of `nodes`. hop_sizes[j] = |S_j| (hop_sizes[0] = num_targets,
    hop_sizes[L] = num_nodes). Hop j (1-based) has edges hop_src[j-1] in [0, |S_j|) ->
    hop_dst[j-1] in [0, |S_{j-1}|); hop 1 is (conv_src, conv_dst). Encoder layer l (1 = on
    the input table) uses hop L - l + 1.
    """
    hop_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    hop_src: list = field(default_factory=list)
    hop_dst: list = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.hop_src)

    def layer_edges(self, layer: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(src, dst, number of targets) of encoder layer `layer` (1..L)."""
        j = self.num_layers - int(layer)
        return self.hop_src[j], self.hop_dst[j], int(self.hop_sizes[j])


@njit(cache=True, nogil=True)
def _insert(tab, g_nodes, nodes, slot_of):
    """Put distinct global ids g_nodes into the (clean) relabel table as local 0..n-1."""
    mask = tab.shape[0] - 1
    for q in range(g_nodes.size):
        g = g_nodes[q]
        h = _slot(tab, mask, g)
        tab[h, 0], tab[h, 1] = g, q
        nodes[q], slot_of[q] = g, h
    return g_nodes.size


@njit(cache=True, nogil=True)
def _reset(tab, slot_of, n):
    for q in range(n):
        tab[slot_of[q], 0] = -1


class MultiHopSampler(OneHopSampler):
    """`fanouts` = (k_prop, k_1, ..., k_L): L conv hops after the propagation hop.

    Batches, epochs and resumption work as in `OneHopSampler` (same seed batches, same keys);
    `max_rows` is the product bound capped at N, so the loader's buffers never exceed N rows.
    """

    def __init__(self, indptr: np.ndarray, indices: np.ndarray,
                 fanouts: tuple[int, ...] = (10, 10, 5), *, norm: str = "mean", seed: int = 0):
        fanouts = tuple(int(f) for f in fanouts)
        if len(fanouts) < 2 or min(fanouts) < 0:
            raise ValueError(f"fanouts must be (k_prop, k_1, ..., k_L), non-negative, "
                             f"got {fanouts}")
        super().__init__(indptr, indices, (fanouts[0], fanouts[1]), norm=norm, seed=seed)
        self.fanouts = fanouts
        self.num_layers = len(fanouts) - 1

    def hop_bounds(self, batch_size: int) -> list[int]:
        """Upper bounds of |S_0|, ..., |S_L| (B (1 + k_prop) prod_j (1 + k_j), capped at N)."""
        cap = max(self.num_nodes, batch_size)
        b = batch_size * (1 + self.fanouts[0])
        out = [min(b, cap)]
        for k in self.fanouts[1:]:
            b *= 1 + k
            out.append(min(b, cap))
        return out

    def max_rows(self, batch_size: int) -> int:
        return self.hop_bounds(batch_size)[-1]

    def sample(self, seeds: np.ndarray, epoch: int, step: int) -> MultiHopBatch:
        """The L-hop batch of `seeds`; pure function of (seed, epoch, step, seeds, graph)."""
        b = super().sample(seeds, epoch, step)        # propagation hop + conv hop 1
        hop_src, hop_dst = [b.conv_src], [b.conv_dst]
        sizes = [b.num_targets, b.num_nodes]
        nodes = b.nodes
        if self.num_layers > 1:
            cap = self.max_rows(b.seeds.size)
            tab = self._table(b.seeds.size)
            bkey = np.uint64(_batch_key(np.uint64(self.seed & 0xFFFFFFFFFFFFFFFF),
                                        np.uint64(epoch), np.uint64(step)))
            buf = np.empty(cap, np.int64)
            slot_of = np.empty(cap, np.int64)
            n = _insert(tab, b.nodes, buf, slot_of)
            try:
                for k in self.fanouts[2:]:
                    count = n
                    g = buf[:count]
                    deg = self.indptr[g + 1] - self.indptr[g]
                    e = int(np.minimum(deg, k).sum())
                    src, dst = np.empty(e, np.int64), np.empty(e, np.int64)
                    n, e2 = _hop(self.indptr, self.indices, count, k, ROLE_CONV, bkey, tab,
                                 buf, slot_of, n, src, dst)
                    assert e2 == e
                    hop_src.append(src)
                    hop_dst.append(dst)
                    sizes.append(n)
            finally:
                _reset(tab, slot_of, n)
            nodes = buf[:n].copy()
        return MultiHopBatch(seeds=b.seeds, nodes=nodes, num_targets=b.num_targets,
                             conv_src=b.conv_src, conv_dst=b.conv_dst, prop_src=b.prop_src,
                             prop_dst=b.prop_dst, prop_weight=b.prop_weight, epoch=b.epoch,
                             step=b.step, hop_sizes=np.asarray(sizes, np.int64),
                             hop_src=hop_src, hop_dst=hop_dst)
