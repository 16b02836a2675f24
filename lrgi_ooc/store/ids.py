"""The id dictionary of a remapped store: dense id <-> the user's external id.

Dense ids follow the external ids' order (ascending int64, or bytewise for strings), so the
dictionary `node/ids` is also its own sorted index: `IdIndex.find` binary-searches it one
chunk at a time (only the first id of every chunk stays in memory), and `external` reads
ids back for exports. Stores built from dense integer ids have no dictionary (id = dense id).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from lrgi_ooc.store import idcols
from lrgi_ooc.store.idcols import INT, STR, Col, StrCol
from lrgi_ooc.store.layout import NODE_ID_BYTES, NODE_ID_OFFSETS, NODE_IDS, GraphStore

DENSE = "dense"


def id_kind(store: GraphStore) -> str:
    """"dense" (no dictionary), "int64" or "string"."""
    return store.meta.get("id_kind") or DENSE


def write_ids(store: GraphStore, kind: str, blocks: Iterable[Col], n: int,
              total_bytes: int = 0) -> None:
    """The dictionary from the sorted distinct ids, in dense order (streamed)."""
    if kind == INT:
        store.create_array(NODE_IDS, (n,), np.int64)
        w = store.stream_writer(NODE_IDS)
        for b in blocks:
            w.write(np.asarray(b, np.int64))
        w.close()
        return
    store.create_array(NODE_ID_OFFSETS, (n + 1,), np.int64)
    store.create_array(NODE_ID_BYTES, (max(total_bytes, 1),), np.uint8)
    wo, wb = store.stream_writer(NODE_ID_OFFSETS), store.stream_writer(NODE_ID_BYTES)
    base = 0
    wo.write(np.zeros(1, np.int64))
    for b in blocks:
        wo.write(b.offsets[1:] + base)
        wb.write(b.data)
        base += int(b.offsets[-1])
    if total_bytes == 0:
        wb.write(np.zeros(1, np.uint8))
    wo.close()
    wb.close()


def external(store: GraphStore, start: int, stop: int) -> Col:
    """External ids of dense ids [start, stop) (plain reads)."""
    kind = id_kind(store)
    if kind == DENSE:
        return np.arange(start, stop, dtype=np.int64)
    if kind == INT:
        return store.read_rows(NODE_IDS, start, stop)
    off = store.read_rows(NODE_ID_OFFSETS, start, stop + 1)
    data = store.read_rows(NODE_ID_BYTES, int(off[0]), int(off[-1])) if stop > start \
        else np.zeros(0, np.uint8)
    return StrCol(off - off[0], data)


def external_at(store: GraphStore, dense: np.ndarray) -> Col:
    """External ids of arbitrary dense ids (gathered chunk by chunk of the sorted ids)."""
    dense = np.asarray(dense, np.int64)
    if id_kind(store) == DENSE:
        return dense.copy()
    order = np.argsort(dense, kind="stable")
    parts, step = [], 1 << 16
    sd = dense[order]
    a = 0
    while a < len(sd):
        lo = int(sd[a])
        b = a + int(np.searchsorted(sd[a:], lo + step))
        col = external(store, lo, int(sd[b - 1]) + 1)
        parts.append(idcols.take(col, sd[a:b] - lo))
        a = b
    got = idcols.concat(parts, INT if id_kind(store) == INT else STR)
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return idcols.take(got, inv)


class IdIndex:
    """External id -> dense id without the whole dictionary in memory."""

    def __init__(self, store: GraphStore):
        self.store, self.kind = store, id_kind(store)
        self.n = store.num_nodes
        if self.kind == DENSE:
            return
        key = NODE_IDS if self.kind == INT else NODE_ID_OFFSETS
        info = store.info(key)
        self.rows = info.chunk_rows
        self.starts = list(range(0, self.n, self.rows))
        firsts = [external(store, s, s + 1) for s in self.starts]
        self.firsts = idcols.concat(firsts, self.kind)

    def find(self, col: Col) -> np.ndarray:
        """Dense ids of `col`, -1 for ids that are not in the graph."""
        if self.kind == DENSE:
            a = np.asarray(col, np.int64)
            return np.where((a >= 0) & (a < self.n), a, -1)
        out = np.full(idcols.length(col), -1, np.int64)
        chunk = self._chunk_of(col)
        for c in np.unique(chunk[chunk >= 0]):
            m = np.flatnonzero(chunk == c)
            s = self.starts[int(c)]
            block = external(self.store, s, min(s + self.rows, self.n))
            pos = idcols.find(idcols.take(col, m), block)
            out[m] = np.where(pos >= 0, pos + s, -1)
        return out

    def _chunk_of(self, col: Col) -> np.ndarray:
        if self.kind == INT:
            return np.searchsorted(self.firsts, np.asarray(col, np.int64), side="right") - 1
        import pyarrow as pa
        import pyarrow.compute as pc
        arr = col.to_arrow()
        out = np.full(len(col), -1, np.int64)
        for i in range(len(self.firsts)):
            ge = pc.greater_equal(arr, pa.scalar(self.firsts.value(i), pa.large_binary()))
            out[ge.to_numpy(zero_copy_only=False)] = i
        return out
