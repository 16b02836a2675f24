"""Out-of-core CSR construction (first, simple in-memory version; bucketed version follows)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import store as store_module
from .errors import InputError
from .store import GraphStore


@dataclass
class CSRResult:
    num_nodes: int
    num_edges: int
    num_input_edges: int
    self_loops_removed: int
    duplicates_removed: int


def _as_ids(a: np.ndarray, source: str) -> np.ndarray:
    a = np.asarray(a).reshape(-1)
    if a.dtype.kind in "iu":
        return a.astype(np.int64, copy=False)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise InputError(f"{source}: node ids must be finite integers (found NaN/inf)")
        r = np.rint(a)
        bad = np.flatnonzero(r != a)
        if len(bad):
            raise InputError(f"{source}: node id {a[bad[0]]!r} is not an integer")
        return r.astype(np.int64)
    raise InputError(f"{source}: node ids must be integers, got dtype {a.dtype}")


def build_csr(store: GraphStore, chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
              num_nodes: int | None, *, source: str, undirected: bool = False,
              remove_self_loops: bool = True, remove_duplicates: bool = True,
              memory_limit: int = 2 << 30, workdir: Path) -> CSRResult:
    srcs, dsts = [], []
    for s, d in chunks():
        s, d = _as_ids(s, source), _as_ids(d, source)
        if len(s) != len(d):
            raise InputError(f"{source}: source and destination columns differ in length")
        for a in (s, d):
            if len(a) and a.min() < 0:
                raise InputError(f"{source}: node id {int(a.min())} is negative")
            if num_nodes is not None and len(a) and a.max() >= num_nodes:
                raise InputError(f"{source}: node id {int(a.max())} >= --num-nodes {num_nodes}")
        srcs.append(s)
        dsts.append(d)
    src = np.concatenate(srcs) if srcs else np.zeros(0, np.int64)
    dst = np.concatenate(dsts) if dsts else np.zeros(0, np.int64)
    m = len(src)
    if m == 0:
        raise InputError(f"{source}: the edge list is empty")
    n = int(num_nodes) if num_nodes is not None else int(max(src.max(), dst.max())) + 1
    loops = 0
    if remove_self_loops:
        keep = src != dst
        loops = int(len(src) - keep.sum())
        src, dst = src[keep], dst[keep]
    if undirected:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    order = np.lexsort((src, dst))
    src, dst = src[order], dst[order]
    dups = 0
    if remove_duplicates and len(src):
        keep = np.ones(len(src), bool)
        keep[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
        dups = int(len(src) - keep.sum())
        src, dst = src[keep], dst[keep]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=indptr[1:])
    e = len(src)
    store.create_array(store_module.INDPTR, (n + 1,), np.int64)
    w = store.stream_writer(store_module.INDPTR)
    w.write(indptr)
    w.close()
    store.create_array(store_module.INDICES, (e,), np.int32 if n < 2**31 else np.int64)
    w = store.stream_writer(store_module.INDICES)
    w.write(src)
    w.close()
    return CSRResult(n, e, m, loops, dups)
