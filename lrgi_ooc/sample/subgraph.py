"""Row-range planning over a CSR and the training-induced subgraph (inductive mode)."""
from __future__ import annotations

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.store.layout import INDICES, SUB_INDICES, SUB_INDPTR, GraphStore


def row_ranges(indptr: np.ndarray, start: int, stop: int, max_edges: int,
               max_rows: int | None = None) -> list[tuple[int, int]]:
    """Split rows [start, stop) into consecutive ranges of at most `max_edges` edges (a single
    row may exceed it: callers that must bound memory split such rows themselves)."""
    out = []
    a = start
    while a < stop:
        limit = indptr[a] + max_edges
        b = int(np.searchsorted(indptr[a + 1:stop + 1], limit, side="right")) + a
        b = max(b, a + 1)
        if max_rows is not None:
            b = min(b, a + max_rows)
        out.append((a, min(b, stop)))
        a = min(b, stop)
    return out


def training_subgraph(store: GraphStore, nodes: np.ndarray,
                      max_edges: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the subgraph induced by `nodes`, over global ids; built once, stored, mmapped."""
    n = store.num_nodes
    if store.has(SUB_INDPTR) and store.has(SUB_INDICES) and \
            store.meta.get("subgraph_train_nodes") == int(len(nodes)):
        return store.mmap(SUB_INDPTR), store.mmap(SUB_INDICES)
    keep = np.zeros(n, dtype=bool)
    keep[nodes] = True
    indptr = store.indptr()
    counts = np.zeros(n, dtype=np.int64)
    pieces = row_ranges(indptr, 0, n, max_edges)
    for a, b in pieces:
        idx = store.read_rows(INDICES, int(indptr[a]), int(indptr[b]))
        m = keep[idx]
        row = np.repeat(np.arange(a, b), np.diff(indptr[a:b + 1]))
        counts[a:b] = np.bincount(row[m] - a, minlength=b - a)
    counts[~keep] = 0
    sub_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=sub_ptr[1:])
    store.write_array(SUB_INDPTR, sub_ptr)
    store.create_array(SUB_INDICES, (int(sub_ptr[-1]),), store.info(INDICES).dtype)
    w = store.stream_writer(SUB_INDICES)
    for a, b in pieces:
        idx = store.read_rows(INDICES, int(indptr[a]), int(indptr[b]))
        row = np.repeat(np.arange(a, b), np.diff(indptr[a:b + 1]))
        w.write(idx[keep[idx] & keep[row]])
    w.close()
    store.update_meta(subgraph_train_nodes=int(len(nodes)))
    return store.mmap(SUB_INDPTR), store.mmap(SUB_INDICES)


def seed_nodes(store: GraphStore, inductive: bool) -> np.ndarray:
    """The nodes a layer trains on: all of them, or (inductive) the first split's training nodes."""
    if not inductive:
        return np.arange(store.num_nodes, dtype=np.int64)
    splits = store.splits()
    if not splits:
        raise InputError(f"{store.path}: --inductive needs a training split in the store")
    return np.unique(splits[0]["train"]).astype(np.int64)


def graph_for(store: GraphStore, inductive: bool) -> tuple[np.ndarray, np.ndarray]:
    """The CSR the layer trains on: the whole graph, or the training-induced subgraph."""
    if not inductive:
        return store.indptr(), store.indices()
    return training_subgraph(store, seed_nodes(store, True))
