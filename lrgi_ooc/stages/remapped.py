"""`preprocess --ids auto|remap` for edge lists whose ids are not dense integers.

The ids are remapped out-of-core (`ingest.remap`): dense ids follow the external ids' order,
the store keeps the dictionary (`store.ids`), node tables are joined to it by id
(`ingest.keyed`), and the CSR build that follows is the one every store uses. Like plain
preprocess, everything is built in a staging directory and published whole.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lrgi_ooc.base import memory
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.ingest import edges, keyed
from lrgi_ooc.ingest import remap as remap_mod
from lrgi_ooc.ingest.remap import InMemory, Remap, needs_remap
from lrgi_ooc.store import idcols, ids, publish
from lrgi_ooc.store import layout as st

IDS_MODES = ("auto", "dense", "remap")


def id_edges(a: Any, edge_chunk: int, known_n: int | None) -> edges.IdEdges | None:
    """The edge list to remap, or None when its ids go straight through (`dense`, or
    `auto` with integer ids dense in [0, N))."""
    if a.ids == "dense" or not a.edges:
        return None
    ie = edges.open_id_edges(a.edges, a.src_col, a.dst_col, edge_chunk)
    if a.ids == "remap" or ie.kind == idcols.STR:
        return ie
    lo, hi, e = ie.scan()
    return ie if needs_remap(ie.kind, lo, hi, known_n, e) else None


def _tables(a: Any) -> dict[str, Any]:
    """The node tables, opened as tables keyed by `--id-col`."""
    out = {}
    for what in ("features", "labels") + st.SPLIT_PARTS:
        path = getattr(a, what)
        if path is None:
            continue
        if not keyed.is_keyed(Path(path), a.id_col):
            raise InputError(f"--{what} {path}: with remapped ids, node tables must be "
                             f"Parquet or CSV files with an id column (--id-col "
                             f"{a.id_col} not found)")
        out[what] = keyed.open_keyed(path, a.id_col, f"--{what}",
                                     values=what in ("features", "labels"))
    parts = [p for p in st.SPLIT_PARTS if p in out]
    if parts and len(parts) != 3:
        missing = [p for p in st.SPLIT_PARTS if p not in out]
        raise InputError(f"--{missing[0]}: give train, val and test together (or none)")
    return out


def _left(limit: int, resident: int) -> int:
    """The budget of the next pass: what the passes so far left resident (the dictionary's
    entry table, allocator pools, compiled kernels; 100 MB at a 256 MB limit, measured) is not
    its to use, down to half the limit."""
    return max(limit - max(0, memory.anon_rss_bytes() - resident), limit // 2)


def run(a: Any, o: Any, ie: edges.IdEdges, provenance: dict[str, Any],
        client: Any = None) -> dict[str, Any]:
    """The whole preprocess of a remapped edge list (`o`: preprocess's parsed options)."""
    t0 = time.time()
    resident = memory.anon_rss_bytes()
    if a.num_nodes is not None:
        raise InputError("--num-nodes: not with remapped ids (N is the number of distinct ids)")
    tables = _tables(a)
    out = o.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging, work = publish.staging_path(out), publish.work_path(out)
    files = list(ie.files) + [Path(getattr(a, k)) for k in tables]
    config = {"inputs": [str(p) for p in files], "ids": ie.kind, "id_col": a.id_col,
              "undirected": a.undirected, "keep_self_loops": a.keep_self_loops,
              "keep_duplicates": a.keep_duplicates, "feature_dtype": o.feature_dtype.name,
              "ignore_unknown_ids": a.ignore_unknown_ids,
              "src_col": a.src_col, "dst_col": a.dst_col}
    remap = None
    try:
        work.mkdir(parents=True, exist_ok=True)
        if client is None and remap_mod.IN_MEMORY:
            remap = InMemory(work, ie.kind, o.memory_limit, ie.source, o.edge_chunk)
            if not remap.collect(ie.chunks, ie.num_edges):
                remap.close()
                remap = None
        if remap is None:
            remap = Remap(work, ie.kind, _left(o.memory_limit, resident), ie.source,
                          o.edge_chunk)
            remap.partition(ie.chunks(), ie.num_edges)
            n = remap.assign(client)
        else:
            n = remap.num_nodes
        store = st.GraphStore.create(staging, {"num_nodes": n, "provenance": provenance,
                                               "id_kind": ie.kind})
        total = sum(int(b.offsets[-1]) for b in remap.ids()) if ie.kind == idcols.STR else 0
        ids.write_ids(store, ie.kind, remap.ids(), n, total)
        remap.written()
        index = ids.IdIndex(st.GraphStore(staging))
        meta: dict[str, Any] = {"label_kind": None, "num_classes": 0, "num_splits": 0,
                                "id_kind": ie.kind}
        summary = _join(store, tables, index, a, o, work, meta)
        if client is None:
            from lrgi_ooc.csr.build import build_csr as build
        else:
            from functools import partial

            from lrgi_ooc.csr.tasks import build_csr_dask
            build = partial(build_csr_dask, client, parts=remap.parts())
        res = build(store, remap.chunks(), n, source=ie.source, undirected=a.undirected,
                    remove_self_loops=not a.keep_self_loops,
                    remove_duplicates=not a.keep_duplicates,
                    memory_limit=_left(o.memory_limit, resident), workdir=work)
        meta.update(
            num_nodes=res.num_nodes, num_edges=res.num_edges, num_input_edges=res.num_input_edges,
            symmetrized=bool(a.undirected), remove_self_loops=not a.keep_self_loops,
            remove_duplicates=not a.keep_duplicates, self_loops_removed=res.self_loops_removed,
            duplicates_removed=res.duplicates_removed, **summary)
        store.mark_stage("preprocess", {**config, "num_nodes": n}, fields=meta,
                         seconds=round(time.time() - t0, 2))
        publish.publish(staging, out, a.overwrite)
    finally:
        if remap is not None:
            remap.close()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    feat = (f"{meta['num_features']} features ({meta['feature_dtype']}, "
            f"{meta['features_missing']} nodes without a row: zeros)"
            if meta["num_features"] else "no features")
    print(f"{out}: {res.num_nodes} nodes ({ie.kind} ids remapped), {res.num_edges} edges "
          f"({res.self_loops_removed} self loops, {res.duplicates_removed} duplicates removed), "
          f"{feat}, labels: {meta['label_kind'] or 'none'}, splits: {meta['num_splits']}")
    if not meta["num_features"]:
        print("lrgi-ooc preprocess: warning: the store has no node features; `train` needs "
              "them (re-run with --features)", file=sys.stderr)
    return st.GraphStore(out).stage_record("preprocess")


def _join(store: st.GraphStore, tables: dict[str, Any], index: ids.IdIndex, a: Any, o: Any,
          work: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Features, labels and the split joined by id; returns the store attributes."""
    got: dict[str, Any] = {"num_features": 0, "feature_dtype": None, "features_missing": 0,
                           "unknown_ids_skipped": 0}
    common = dict(ignore_unknown=a.ignore_unknown_ids, memory_limit=o.memory_limit,
                  work=work / "join")
    if "features" in tables:
        t = tables["features"]
        r = keyed.join_rows(store, st.FEATURES, t, index, dtype=o.feature_dtype, fill=0.0,
                            squeeze=False, finite=True, **common)
        got.update(num_features=len(t.columns), feature_dtype=o.feature_dtype.name,
                   features_missing=int(r["missing"]))
        got["unknown_ids_skipped"] += int(r["skipped"])
    if "labels" in tables:
        t = tables["labels"]
        multi = len(t.columns) > 1
        r = keyed.join_rows(store, st.LABELS, t, index, dtype=np.uint8 if multi else np.int64,
                            fill=0 if multi else -1, squeeze=not multi, finite=True, **common)
        got["unknown_ids_skipped"] += int(r["skipped"])
        meta.update(_label_meta(r, multi, t.source, len(t.columns)))
    if "train" in tables:
        for part in st.SPLIT_PARTS:
            stats: dict[str, int] = {}
            dense = keyed.keyed_ids(tables[part], index, ignore_unknown=a.ignore_unknown_ids,
                                    what=f"--{part}", stats=stats)
            got["unknown_ids_skipped"] += int(stats.get("skipped", 0))
            store.write_array(st.split_key(part), np.asarray(dense, np.int64))
        meta["num_splits"] = 1
    return got


def _label_meta(r: dict[str, Any], multi: bool, source: str, columns: int) -> dict[str, Any]:
    """Label attributes from the join's value range (no second pass over the labels)."""
    lo, hi = r.get("min"), r.get("max")
    if multi:
        if hi is not None and (hi > 1 or lo < 0):
            raise InputError(f"{source}: multi-label labels must be 0/1")
        return {"label_kind": "multilabel", "num_classes": int(columns)}
    if lo is not None and lo < -1:
        raise InputError(f"{source}: class label {int(lo)} < -1 (-1 marks unlabelled)")
    return {"label_kind": "class", "num_classes": int(hi) + 1 if hi is not None else 0}
