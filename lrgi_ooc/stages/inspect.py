"""`lrgi-ooc info` and `lrgi-ooc validate`: looking at a store without trusting it.

Both stream every array through `GraphStore.read_rows` in bounded blocks (never a whole-array
load, never a memory map that would grow RSS on a huge store), so they run on stores far
larger than memory. `validate` reports the FIRST broken invariant and exits 1; a path that is
not a store at all is a user error (exit 2). It first reads every chunk file of every array
once, verifying its CRC32C, so that damaged bytes are named as such (array and chunk) before
any invariant check trips over them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lrgi_ooc.store import idcols
from lrgi_ooc.store import ids as id_dict
from lrgi_ooc.store import layout as st
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.progress import bar

BLOCK = 1 << 20          # rows (or edges) per streamed block
READ_BYTES = 8 << 20     # bytes per read of the checksum pass
_HIST = 1 << 16          # degrees below this are counted exactly in a histogram


# --------------------------------------------------------------------------- info
def degree_counts(store: st.GraphStore, desc: str = "degrees") -> tuple[np.ndarray, np.ndarray]:
    """(histogram of the in-degrees below 65536, the few larger degrees sorted: at most
    E / 65536 of them), streamed from indptr: exact statistics in bounded memory."""
    hist = np.zeros(_HIST, np.int64)
    big: list[np.ndarray] = []
    prev = None
    with bar(store.num_nodes, desc, "nodes") as pb:
        for _, blk in store.iter_blocks(st.INDPTR, BLOCK):
            ptr = blk if prev is None else np.concatenate([[prev], blk])
            deg = np.diff(ptr.astype(np.int64))
            prev = int(blk[-1])
            small = deg < _HIST
            hist += np.bincount(deg[small], minlength=_HIST)
            if not small.all():
                big.append(deg[~small])
            pb.update(len(deg))
    return hist, np.sort(np.concatenate(big)) if big else np.zeros(0, np.int64)


def degree_stats(store: st.GraphStore, quantiles=(0.5, 0.9, 0.99)) -> dict[str, Any]:
    """Exact in-degree min/mean/max/quantiles from indptr, streamed."""
    n = store.num_nodes
    hist, large = degree_counts(store)
    if n == 0:
        return {}
    cum = np.cumsum(hist)

    def kth(k: int) -> int:               # k-th smallest degree, 0-based
        if k < cum[-1]:
            return int(np.searchsorted(cum, k, side="right"))
        return int(large[k - cum[-1]])
    total = int((np.arange(_HIST) * hist).sum() + large.sum())
    return {"min": kth(0), "mean": total / n, "max": kth(n - 1),
            "quantiles": {str(q): kth(min(n - 1, int(np.floor(q * (n - 1))))) for q in quantiles},
            "zero_degree": int(hist[0])}


def _label_summary(store: st.GraphStore) -> dict[str, Any] | None:
    if not store.has(st.LABELS):
        return None
    a = store.info(st.LABELS)
    meta = store.meta
    out: dict[str, Any] = {"kind": meta.get("label_kind"), "dtype": str(a.dtype),
                           "shape": list(a.shape), "num_classes": meta.get("num_classes")}
    if len(a.shape) == 1:
        counts = np.zeros(0, np.int64)
        unlabelled = 0
        for _, blk in store.iter_blocks(st.LABELS, BLOCK):
            unlabelled += int((blk < 0).sum())
            c = np.bincount(blk[blk >= 0])
            counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
            counts[:len(c)] += c
        out["class_counts"] = counts.tolist()
        out["unlabelled"] = unlabelled
    else:
        pos = np.zeros(a.shape[1], np.int64)
        for _, blk in store.iter_blocks(st.LABELS, BLOCK):
            pos += blk.sum(axis=0, dtype=np.int64)
        out["positive_rate"] = float(pos.sum() / max(1, a.shape[0] * a.shape[1]))
    return out


def _store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def gather_info(store: st.GraphStore) -> dict[str, Any]:
    meta = store.meta
    arrays = {}
    for key in (st.INDPTR, st.INDICES, st.FEATURES, st.LABELS):
        if store.has(key):
            a = store.info(key)
            arrays[key] = {"shape": list(a.shape), "dtype": str(a.dtype),
                           "chunk_rows": a.chunk_rows}
    splits = [sizes for _, sizes in _split_keys(store)]
    return {
        "path": str(store.path), "format_version": meta.get("format_version"),
        "num_nodes": store.num_nodes, "num_edges": meta.get("num_edges"),
        "symmetrized": meta.get("symmetrized"),
        "self_loops_removed": meta.get("self_loops_removed"),
        "duplicates_removed": meta.get("duplicates_removed"),
        "num_features": meta.get("num_features", 0), "feature_dtype": meta.get("feature_dtype"),
        "arrays": arrays,
        "in_degree": degree_stats(store) if store.has(st.INDPTR) else None,
        "labels": _label_summary(store), "splits": splits,
        "ids": _id_summary(store),
        "layers": store.layers(),
        "stages": {k: v.get("completed_at") for k, v in store.stages().items()},
        "bytes_on_disk": _store_bytes(store.path),
    }


def _id_summary(store: st.GraphStore, sample: int = 5) -> dict[str, Any]:
    """The id kind and the first few external ids (dense stores: ids are 0 .. N-1)."""
    kind = id_dict.id_kind(store)
    col = id_dict.external(store, 0, min(sample, store.num_nodes))
    return {"kind": kind, "remapped": kind != id_dict.DENSE,
            "sample": [idcols.display(col, i) if kind == "string" else int(col[i])
                       for i in range(idcols.length(col))]}


def _split_keys(store: st.GraphStore) -> list[tuple[int | None, dict[str, int]]]:
    """(split index or None, sizes by part), from array shapes only (no reads)."""
    out = []
    for idx in [None] + list(range(int(store.meta.get("num_splits", 0) or 0))):
        if all(store.has(st.split_key(p, idx)) for p in st.SPLIT_PARTS):
            out.append((idx, {p: store.info(st.split_key(p, idx)).num_rows
                              for p in st.SPLIT_PARTS}))
    return out


# --------------------------------------------------------------------------- validate
class Corrupt(Exception):
    """A broken invariant: the store, not the user, is at fault (exit 1)."""


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise Corrupt(msg)


def _none(bad: np.ndarray, msg: Callable[[int], str]) -> None:
    """Fail with msg(first offending position) when any entry of `bad` is set."""
    idx = np.flatnonzero(bad)
    if len(idx):
        raise Corrupt(msg(int(idx[0])))


def _chunks_present(store: st.GraphStore, key: str) -> st.ArrayInfo:
    a = store.info(key)
    for i in range(a.num_chunks):
        _need(store.chunk_written(key, i), f"{key}: chunk {i} is missing")
    return a


def _blocks(store: st.GraphStore, key: str, rows: int, what: str) -> Iterator[tuple[int, np.ndarray]]:
    """Stream an array, failing on missing chunk files (read_rows would zero-fill them)."""
    a = _chunks_present(store, key)
    with bar(a.num_rows, what, "rows") as pb:
        for s in range(0, a.num_rows, rows):
            blk = store.read_rows(key, s, min(s + rows, a.num_rows))
            yield s, blk
            pb.update(len(blk))


def _check_chunks(store: st.GraphStore) -> None:
    """Every chunk of every array: present (where its stage completed), of the right size,
    and matching its checksum; one streamed pass through one buffer."""
    infos = [store.info(k) for k in store.array_keys()]
    buf = np.empty(READ_BYTES, np.uint8)
    total = sum(a.file_nbytes * a.num_chunks for a in infos if a.raw)
    with bar(total, "checksums", "B") as pb:
        for a in infos:
            if not a.raw:                  # an array some other tool added, compressed
                continue
            _need(a.checksummed, f"{a.key}: written without chunk checksums (codecs [bytes])")
            complete = store.must_be_complete(a.key)
            for i in range(a.num_chunks):
                problem = store.chunk_problem(a.key, i, buf)
                if problem == st.MISSING:
                    _need(not complete, f"{a.key}: chunk {i} is missing")
                elif problem is not None:
                    raise Corrupt(f"{a.key}: chunk {i}: {problem}")
                pb.update(a.file_nbytes)


def _check_csr(store: st.GraphStore, n: int, e: int, meta: dict[str, Any]) -> None:
    ip, ix = store.info(st.INDPTR), store.info(st.INDICES)
    _need(ip.shape == (n + 1,), f"{st.INDPTR}: shape {list(ip.shape)}, expected [{n + 1}]")
    _need(ip.dtype == np.int64, f"{st.INDPTR}: dtype {ip.dtype}, expected int64")
    _need(ix.shape == (e,), f"{st.INDICES}: shape {list(ix.shape)}, expected [{e}]")
    _need(ix.dtype.kind == "i", f"{st.INDICES}: dtype {ix.dtype} is not a signed integer")
    last = None
    for s, blk in _blocks(store, st.INDPTR, BLOCK, "indptr"):
        if s == 0:
            _need(blk[0] == 0, f"{st.INDPTR}: starts at {blk[0]}, not 0")
        ptr = blk if last is None else np.concatenate([[last], blk])
        shift = s - (last is not None)
        _none(np.diff(ptr) < 0, lambda i: f"{st.INDPTR}: decreases at node {shift + i}")
        last = int(blk[-1])
    _need(last == e, f"{st.INDPTR}: ends at {last}, expected num_edges {e}")
    _chunks_present(store, st.INDICES)
    _check_rows(store, n, e, meta.get("remove_duplicates", True),
                meta.get("remove_self_loops", True))


def _check_rows(store: st.GraphStore, n: int, e: int, dedup: bool, noloops: bool) -> None:
    """indices in [0, N), strictly ascending within a row, no i -> i: streamed by row blocks,
    each row block's edge range again split into bounded edge blocks."""
    prev_row, prev_val = -1, -1
    with bar(e, "indices", "edges") as pb:
        for r0 in range(0, n, BLOCK):
            ptr = store.read_rows(st.INDPTR, r0, min(r0 + BLOCK, n) + 1)
            for a in range(int(ptr[0]), int(ptr[-1]), BLOCK):
                b = min(a + BLOCK, int(ptr[-1]))
                idx = store.read_rows(st.INDICES, a, b).astype(np.int64)
                rows = r0 + np.searchsorted(ptr, np.arange(a, b), side="right") - 1
                _none((idx < 0) | (idx >= n),
                      lambda i: f"{st.INDICES}: entry {a + i} = {idx[i]} is outside [0, {n})")
                if noloops:
                    _none(idx == rows, lambda i: f"{st.INDICES}: self loop at node {rows[i]} "
                          "although self loops were removed")
                if dedup:
                    pr = np.concatenate([[prev_row], rows])
                    pv = np.concatenate([[prev_val], idx])
                    _none((pr[1:] == pr[:-1]) & (pv[1:] <= pv[:-1]),
                          lambda i: f"{st.INDICES}: row {rows[i]} is not strictly ascending")
                prev_row, prev_val = int(rows[-1]), int(idx[-1])
                pb.update(b - a)


def _check_tables(store: st.GraphStore, n: int, meta: dict[str, Any]) -> None:
    if store.has(st.FEATURES):
        f = store.info(st.FEATURES)
        _need(len(f.shape) == 2 and f.shape[0] == n, f"{st.FEATURES}: shape {list(f.shape)}, "
              f"expected [{n}, F]")
        _need(f.dtype.name in ("float32", "float16"), f"{st.FEATURES}: dtype {f.dtype}")
        _need(f.shape[1] == meta.get("num_features", f.shape[1]),
              f"{st.FEATURES}: width {f.shape[1]} != num_features {meta.get('num_features')}")
        rows = max(1, (64 << 20) // max(f.row_nbytes, 1))
        for s, blk in _blocks(store, st.FEATURES, rows, "features"):
            _none(~np.isfinite(blk).all(axis=1),
                  lambda i: f"{st.FEATURES}: row {s + i} is not finite")
    elif meta.get("num_features"):
        raise Corrupt(f"{st.FEATURES}: missing although num_features = {meta['num_features']}")
    if store.has(st.LABELS):
        y = store.info(st.LABELS)
        _need(y.shape[0] == n and len(y.shape) in (1, 2),
              f"{st.LABELS}: shape {list(y.shape)}, expected [{n}] or [{n}, C]")
        for s, blk in _blocks(store, st.LABELS, BLOCK, "labels"):
            if len(y.shape) == 1:
                _none(blk < -1, lambda i: f"{st.LABELS}: class {blk[i]} < -1 at node {s + i}")
            else:
                _none((blk > 1).any(axis=1), lambda i: f"{st.LABELS}: value > 1 at node {s + i}")
    for idx, parts in _split_keys(store):
        for p in parts:
            key = st.split_key(p, idx)
            last = -1
            for s, ids in _blocks(store, key, BLOCK, key):
                _none((ids < 0) | (ids >= n), lambda i: f"{key}: node id {ids[i]} outside [0, {n})")
                seq = np.concatenate([[last], ids])
                _none(seq[1:] <= seq[:-1], lambda i: f"{key}: ids not strictly ascending at {s + i}")
                last = int(ids[-1]) if len(ids) else last
    for layer in store.layers():
        key = st.embeddings_key(layer)
        a = store.info(key)
        _need(a.shape[0] == n, f"{key}: {a.shape[0]} rows, expected {n}")


def _check_ids(store: st.GraphStore, n: int) -> None:
    """A remapped store's dictionary: N ids, strictly ascending (the lookup relies on it)."""
    kind = id_dict.id_kind(store)
    if kind == id_dict.DENSE:
        return
    if kind == "int64":
        _need(store.has(st.NODE_IDS), f"{st.NODE_IDS}: missing (id_kind int64)")
        a = _chunks_present(store, st.NODE_IDS)
        _need(a.shape == (n,), f"{st.NODE_IDS}: shape {list(a.shape)}, expected [{n}]")
        last = None
        for s, blk in _blocks(store, st.NODE_IDS, BLOCK, st.NODE_IDS):
            seq = blk if last is None else np.concatenate([[last], blk])
            _none(seq[1:] <= seq[:-1], lambda i: f"{st.NODE_IDS}: not strictly ascending at "
                                                 f"node {s + i}")
            last = int(blk[-1]) if len(blk) else last
        return
    for key in (st.NODE_ID_OFFSETS, st.NODE_ID_BYTES):
        _need(store.has(key), f"{key}: missing (id_kind string)")
    off = _chunks_present(store, st.NODE_ID_OFFSETS)
    _need(off.shape == (n + 1,), f"{st.NODE_ID_OFFSETS}: shape {list(off.shape)}, expected "
                                 f"[{n + 1}]")
    total = _chunks_present(store, st.NODE_ID_BYTES).num_rows
    prev = None
    for s in range(0, n, BLOCK):
        col = id_dict.external(store, s, min(s + BLOCK, n))
        lens = np.diff(col.offsets)
        _none(lens <= 0, lambda i: f"{st.NODE_ID_OFFSETS}: empty or decreasing at node {s + i}")
        _need(int(store.read_rows(st.NODE_ID_OFFSETS, s, s + 1)[0]) + int(col.offsets[-1])
              <= total, f"{st.NODE_ID_BYTES}: shorter than the offsets say")
        import pyarrow as pa
        import pyarrow.compute as pc
        arr = col.to_arrow()
        if prev is not None:
            arr = pa.concat_arrays([prev, arr])
        up = pc.greater(arr[1:], arr[:-1]).to_numpy(zero_copy_only=False)
        _none(~up, lambda i: f"{st.NODE_IDS}: string ids not strictly ascending near node "
                             f"{s + i}")
        prev = arr[-1:]


def validate(store: st.GraphStore) -> str | None:
    """The first broken invariant, or None when the store is sound."""
    meta = store.meta
    try:
        _need(isinstance(meta.get("num_nodes"), int) and meta["num_nodes"] > 0,
              "num_nodes attribute missing or not a positive integer")
        _need(isinstance(meta.get("num_edges"), int) and meta["num_edges"] >= 0,
              "num_edges attribute missing or invalid")
        _need(store.stage_complete("preprocess"), "preprocess did not complete")
        for key in (st.INDPTR, st.INDICES):
            _need(store.has(key), f"{key}: missing")
        n, e = int(meta["num_nodes"]), int(meta["num_edges"])
        _check_chunks(store)
        _check_csr(store, n, e, meta)
        _check_tables(store, n, meta)
        _check_ids(store, n)
    except Corrupt as c:
        return str(c)
    except InputError as err:          # unreadable array metadata inside a store
        return str(err)
    return None
