"""`lrgi-ooc preprocess`: turn edge lists, features, labels and splits into a graph store.

Order matters for the user: every cheap check (files, formats, columns, sizes against N, option
values) runs before the first heavy pass, and the store is built in a staging directory that
`store.publish` moves into place only when complete, so a failed or killed run never leaves
anything at --out that `validate` would accept, and --overwrite never loses the old store.
This module must not import torch (only the --ogb reader does).
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lrgi_ooc.cluster import tasks as cluster
from lrgi_ooc.ingest import datasets
from lrgi_ooc.ingest import edges
from lrgi_ooc.ingest import tables as ingest
from lrgi_ooc.store import layout as st
from lrgi_ooc.stages import remapped
from lrgi_ooc.store import publish
from lrgi_ooc.store.lock import writer_lock
from lrgi_ooc.base.errors import InputError, disk_full, is_disk_full
from lrgi_ooc.base.memory import parse_size
from lrgi_ooc.base.progress import bar

FEATURE_DTYPES = ("float32", "float16")
WORKER_MODULES = ("lrgi_ooc.csr.tasks", "lrgi_ooc.csr.kernels")   # preloaded by local workers


@dataclass
class PreprocessOptions:
    """The inputs and settings of one preprocess run (the fields are the command's flags)."""
    out: str | Path
    npz: str | Path | None = None
    edges: str | Path | None = None
    ogb: str | None = None
    ogb_root: str | Path | None = None
    src_col: str = "src"
    dst_col: str = "dst"
    num_nodes: int | str | None = None
    features: str | Path | None = None
    labels: str | Path | None = None
    train: str | Path | None = None
    val: str | Path | None = None
    test: str | Path | None = None
    undirected: bool = False
    keep_self_loops: bool = False
    keep_duplicates: bool = False
    feature_dtype: str = "float32"
    memory_limit: str | int = "2GB"
    overwrite: bool = False
    ids: str = "auto"
    id_col: str = "id"
    ignore_unknown_ids: bool = False


@dataclass
class Options:
    out: Path
    feature_dtype: np.dtype
    memory_limit: int
    num_nodes: int | None

    @property
    def edge_chunk(self) -> int:
        return int(min(max(self.memory_limit // 256, 1 << 16), 1 << 23))  # 2 x int64: limit/16 B

    def block_rows(self, row_nbytes: int) -> int:
        return int(max(1, min(1 << 16, self.memory_limit // 8 // max(row_nbytes, 1))))


_PATHS = ("out", "npz", "edges", "ogb_root", "features", "labels") + st.SPLIT_PARTS
_FLAGS = ("undirected", "keep_self_loops", "keep_duplicates", "overwrite", "ignore_unknown_ids")


def _check_types(a: PreprocessOptions) -> None:
    """What argparse guaranteed for the CLI, for API and config callers too."""
    for k in _PATHS + ("ogb", "src_col", "dst_col", "feature_dtype", "ids", "id_col"):
        v = getattr(a, k)
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise InputError(f"--{k.replace('_', '-')}: expected a path or name, got {v!r}")
    for k in _FLAGS:
        if not isinstance(getattr(a, k), bool):
            raise InputError(f"--{k.replace('_', '-')}: expected true or false, "
                             f"got {getattr(a, k)!r}")


def _options(a: PreprocessOptions) -> Options:
    _check_types(a)
    given = [o for o in ("npz", "edges", "ogb") if getattr(a, o)]
    if len(given) != 1:
        raise InputError("give exactly one of --npz, --edges, --ogb"
                         + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
    extra = [o for o in ("features", "labels") + st.SPLIT_PARTS if getattr(a, o)]
    if not a.edges and extra:
        raise InputError(f"--{extra[0]}: only with --edges (--npz and --ogb carry their own)")
    if a.ogb and not a.ogb_root:
        raise InputError("--ogb-root: required with --ogb")
    if a.ids not in remapped.IDS_MODES:
        raise InputError(f"--ids: must be auto, dense or remap, got '{a.ids}'")
    if a.ids == "remap" and not a.edges:
        raise InputError("--ids remap: only with --edges (--npz and --ogb have dense ids)")
    if a.feature_dtype not in FEATURE_DTYPES:
        raise InputError(f"--feature-dtype: must be float32 or float16, got '{a.feature_dtype}'")
    n = None
    if a.num_nodes is not None:
        try:
            n = int(a.num_nodes)
        except ValueError:
            raise InputError(f"--num-nodes: not an integer: '{a.num_nodes}'") from None
        if n <= 0:
            raise InputError(f"--num-nodes: must be positive, got {n}")
    return Options(Path(a.out), np.dtype(a.feature_dtype), parse_size(str(a.memory_limit)), n)


def _open(a: PreprocessOptions, o: Options) -> datasets.Dataset:
    if a.npz:
        return datasets.open_npz(a.npz, o.edge_chunk)
    if a.ogb:
        return datasets.open_ogb(a.ogb, a.ogb_root, o.edge_chunk)
    ds = datasets.Dataset(edges=edges.open_edges(a.edges, a.src_col, a.dst_col, o.edge_chunk))
    ds.files = list(ds.edges.files)
    if a.features:
        ds.features = ingest.open_features(a.features)
    if a.labels:
        ds.labels = ingest.open_labels(a.labels)
    for part in st.SPLIT_PARTS:
        if getattr(a, part):
            ds.splits[part] = ingest.open_split(getattr(a, part), f"--{part}")
    ds.files += [Path(getattr(a, k)) for k in ("features", "labels") + st.SPLIT_PARTS
                 if getattr(a, k)]
    return ds


# --------------------------------------------------------------------------- cheap checks
def _num_splits(splits: dict[str, ingest.Table], n: int | None) -> int:
    if not splits:
        return 0
    missing = [p for p in st.SPLIT_PARTS if p not in splits]
    if missing:
        raise InputError(f"--{missing[0]}: give train, val and test together (or none)")
    counts = {}
    for p, t in splits.items():
        if t.dtype == np.bool_:
            if len(t.shape) not in (1, 2):
                raise InputError(f"{t.source}: mask must be [N] or [S, N], got {list(t.shape)}")
            counts[p] = 1 if len(t.shape) == 1 else t.shape[0]
        elif t.dtype.kind in "iu" and len(t.shape) == 1:
            counts[p] = 1
        else:
            raise InputError(f"{t.source}: expected a 1-D integer index array or a boolean "
                             f"mask, got {t.dtype} {list(t.shape)}")
    if len(set(counts.values())) != 1:
        raise InputError(f"splits disagree on their number: {counts}")
    return counts["train"]


def _resolve_nodes(ds: datasets.Dataset, o: Options, hint: str = "") -> tuple[int, str]:
    """N, and where it came from; every table's row count must agree with it."""
    cands: list[tuple[int, str, str]] = []          # (count, why, who must agree)
    if o.num_nodes is not None:
        cands.append((o.num_nodes, "--num-nodes", "--num-nodes"))
    if ds.num_nodes is not None:
        cands.append((ds.num_nodes, f"num_nodes of {ds.edges.source}", ds.edges.source))
    for t in (ds.features, ds.labels):
        if t is not None:
            cands.append((t.num_rows, f"rows of {t.source}", t.source))
    for t in ds.splits.values():
        if t.dtype == np.bool_:
            cands.append((t.shape[-1], f"length of {t.source}", t.source))
    if ds.edges.num_edges == 0:
        raise InputError(f"{ds.edges.source}: the edge list is empty")
    if not cands:
        return ds.edges.max_id(hint) + 1, "max id + 1"
    n, why, _ = cands[0]
    for m, _, who in cands[1:]:
        if m != n:
            raise InputError(f"{who}: has {m} rows but N = {n} ({why})")
    if n <= 0:
        raise InputError(f"{why}: the graph has no nodes")
    return n, why


def _check_tables(ds: datasets.Dataset) -> None:
    f = ds.features
    if f is not None:
        if len(f.shape) != 2 or f.shape[1] == 0:
            raise InputError(f"{f.source}: features must be [N, F] with F > 0, got {list(f.shape)}")
        if f.dtype.kind not in "fiub":
            raise InputError(f"{f.source}: features must be numeric, got {f.dtype}")
    y = ds.labels
    if y is not None:
        if len(y.shape) not in (1, 2) or y.dtype.kind not in "fiub":
            raise InputError(f"{y.source}: labels must be numeric [N] or [N, C], got "
                             f"{y.dtype} {list(y.shape)}")


# --------------------------------------------------------------------------- writers
def _feature_block(blk: np.ndarray, dtype: np.dtype, source: str, row0: int) -> np.ndarray:
    """Rows converted to the store's dtype (no copy when it already is); a non-finite or
    overflowing value is an error."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = blk.astype(dtype, copy=False)
    if not np.isfinite(out).all():
        r, c = (int(v[0]) for v in np.nonzero(~np.isfinite(out)))
        how = "is not finite" if not np.isfinite(blk[r, c]) else f"overflows {dtype}"
        raise InputError(f"{source}: value at row {row0 + r}, column {c} {how}")
    return out


def _features_task(store_path: str, arr: ingest.NpyArray, i: int) -> None:
    """Dask: chunk i of node/features, read straight from the .npy (C order) and written whole."""
    store = st.GraphStore(store_path)
    info = store.info(st.FEATURES)
    s, e = info.chunk_bounds(i)
    f = info.shape[1]
    blk = arr.mapped_items(s * f, (e - s) * f).reshape(e - s, f)
    store.write_chunk(st.FEATURES, i, _feature_block(blk, info.dtype, arr.source, s))


def _submit_features(store: st.GraphStore, t: ingest.Table, n: int, o: Options,
                     client: Any) -> list[Any] | None:
    """Dask: the feature copy as low-priority chunk tasks, submitted before the CSR passes so
    that they fill the workers' idle moments; None when the workers cannot read the table
    themselves (not a C-order .npy), then the client copies it afterwards."""
    if not (isinstance(t, ingest.NpyTable) and not t.arr.fortran and t.arr.member is None):
        return None
    info = store.create_array(st.FEATURES, (n, t.shape[1]), o.feature_dtype)
    path = str(store.path.resolve())
    t.arr.path = t.arr.path.resolve()
    return cluster.submit_tasks(client, _features_task, _feature_tasks(path, t, info),
                                priority=-1)


def _feature_tasks(path: str, t: ingest.NpyTable, info: st.ArrayInfo) -> list[tuple]:
    return [(path, t.arr, i) for i in range(info.num_chunks)]


def _write_features(store: st.GraphStore, t: ingest.Table, n: int, o: Options,
                    client: Any = None, futures: list[Any] | None = None) -> None:
    f = t.shape[1]
    if futures is not None:
        info = store.info(st.FEATURES)
        cluster.run_tasks(client, _features_task, _feature_tasks(str(store.path.resolve()), t,
                                                                 info),
                          "features", unit="rows", futures=futures,
                          weights=[int(np.diff(info.chunk_bounds(i))[0])
                                   for i in range(info.num_chunks)])
        return
    store.create_array(st.FEATURES, (n, f), o.feature_dtype)
    w = store.stream_writer(st.FEATURES)
    row0 = 0
    with bar(n, "features", "rows") as pb:
        for blk in t.blocks(o.block_rows(f * 8)):
            out = _feature_block(np.asarray(blk).reshape(len(blk), f), o.feature_dtype,
                                 t.source, row0)
            w.write(out)
            row0 += len(out)
            pb.update(len(out))
    w.close()


def _labels_block(blk: np.ndarray, multi: bool, source: str, row0: int) -> np.ndarray:
    blk = np.asarray(blk)
    if blk.dtype.kind == "f":
        nan = np.isnan(blk)
        if not multi and nan.any():
            blk = np.where(nan, -1, blk)
        if np.any(blk != np.round(blk)) or (multi and nan.any()):
            raise InputError(f"{source}: labels must be integers (found a fraction or NaN "
                             f"near row {row0})")
    if multi:
        if np.any((blk != 0) & (blk != 1)):
            raise InputError(f"{source}: multi-label [N, C] labels must be 0/1 (near row {row0})")
        return blk.astype(np.uint8)
    blk = blk.reshape(-1).astype(np.int64)
    if len(blk) and blk.min() < -1:
        raise InputError(f"{source}: class label {int(blk.min())} < -1 (-1 marks unlabelled)")
    return blk


def _write_labels(store: st.GraphStore, t: ingest.Table, n: int, o: Options) -> dict[str, Any]:
    multi = len(t.shape) == 2 and t.shape[1] > 1
    shape = (n, t.shape[1]) if multi else (n,)
    store.create_array(st.LABELS, shape, np.uint8 if multi else np.int64)
    w = store.stream_writer(st.LABELS)
    row0, hi = 0, -1
    for blk in t.blocks(o.block_rows(int(np.prod(t.shape[1:], dtype=np.int64)) * 8)):
        out = _labels_block(blk, multi, t.source, row0)
        if not multi and len(out):
            hi = max(hi, int(out.max()))
        w.write(out)
        row0 += len(out)
    w.close()
    if multi:
        return {"label_kind": "multilabel", "num_classes": int(t.shape[1])}
    return {"label_kind": "class", "num_classes": hi + 1}


def _split_masks(t: ingest.Table, k: int, n: int, o: Options):
    """Boolean blocks of split k (a restartable generator of (offset, mask) pairs)."""
    block = o.block_rows(1)

    def gen():
        off = 0
        it = t.row_items(k, block) if len(t.shape) == 2 else t.blocks(block)
        for m in it:
            yield off, np.asarray(m, bool)
            off += len(m)
    if t.dtype == np.bool_:
        return gen
    mask = np.zeros(n, bool)       # index arrays: N bytes, sorted and deduplicated for free
    seen = 0
    for ids in t.blocks(block):
        ids = edges.check_ids(np.asarray(ids), t.source, n)
        mask[ids] = True
        seen += len(ids)
    if int(mask.sum()) != seen:
        raise InputError(f"{t.source}: repeats node ids")
    return lambda: iter([(0, mask)])


def _write_splits(store: st.GraphStore, ds: datasets.Dataset, n: int, s: int, o: Options) -> None:
    for k in range(s):
        for part in st.SPLIT_PARTS:
            masks = _split_masks(ds.splits[part], k, n, o)
            count = sum(int(m.sum()) for _, m in masks())
            key = st.split_key(part, k if s > 1 else None)
            store.create_array(key, (count,), np.int64)
            w = store.stream_writer(key)
            for off, m in masks():
                w.write(np.flatnonzero(m).astype(np.int64) + off)
            w.close()


# --------------------------------------------------------------------------- command
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("lrgi-ooc")
    except PackageNotFoundError:
        return "unknown"


def _provenance(files: list[Path]) -> dict[str, Any]:
    def size(p: Path) -> int:
        if p.is_dir():
            return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        return p.stat().st_size if p.exists() else 0
    return {"inputs": [{"path": str(p.resolve()), "bytes": size(p)} for p in files],
            "command": " ".join(sys.argv), "lrgi_ooc_version": _version(),
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def preprocess(a: PreprocessOptions, workers: int | None = None,
               scheduler: str | None = None) -> dict[str, Any]:
    """The stage, in-process or on Dask; returns the new store's preprocess record."""
    cluster.check_options(workers, scheduler)
    out = _options(a).out            # bad options fail before the lock and the cluster
    with writer_lock(out, "preprocess", create=True), \
            cluster.dask_client(workers, scheduler, preload=WORKER_MODULES) as client:
        return run_preprocess(a, client)


def run_preprocess(a: PreprocessOptions, client: Any = None) -> dict[str, Any]:
    """The stage on an open client (or none); with a Dask client, the CSR build and the
    feature copy run as tasks. Returns the new store's preprocess record. Holds --out's
    writer lock: a store another command is writing is not replaced under it."""
    with writer_lock(_options(a).out, "preprocess", create=True):
        return _build(a, client)


def _build(a: PreprocessOptions, client: Any) -> dict[str, Any]:
    t0 = time.time()
    o = _options(a)
    out = o.out
    publish.clean_stale(out)
    if out.exists() and not a.overwrite:
        raise InputError(f"--out {out}: output exists (use --overwrite to replace it)")
    if out.exists() and not publish.replaceable(out):
        raise InputError(f"--out {out}: exists and is not an lrgi-ooc store (--overwrite only "
                         "replaces a store or an empty directory)")
    ie = remapped.id_edges(a, o.edge_chunk, o.num_nodes)
    if ie is not None:
        files = list(ie.files) + [Path(getattr(a, k)) for k in ("features", "labels")
                                  + st.SPLIT_PARTS if getattr(a, k)]
        return remapped.run(a, o, ie, _provenance(files), client)
    ds = _open(a, o)
    _check_tables(ds)
    n_splits = _num_splits(ds.splits, None)
    remap_hint = " (--ids remap takes ids that are not 0..N-1)" if a.edges else ""
    n, why = _resolve_nodes(ds, o, remap_hint)
    hint = "" if why in ("max id + 1", "--num-nodes") else f" (N from {why}; see --num-nodes)"
    hint += remap_hint
    out.parent.mkdir(parents=True, exist_ok=True)
    staging, work = publish.staging_path(out), publish.work_path(out)
    config = {"inputs": [str(p) for p in ds.files], "ogb": a.ogb, "undirected": a.undirected,
              "keep_self_loops": a.keep_self_loops, "keep_duplicates": a.keep_duplicates,
              "feature_dtype": o.feature_dtype.name, "num_nodes": n,
              "src_col": a.src_col, "dst_col": a.dst_col}
    features: list[Any] | None = None      # feature tasks submitted to Dask, not yet waited for
    try:
        store = st.GraphStore.create(staging, {"num_nodes": n,
                                               "provenance": _provenance(ds.files)})
        work.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"label_kind": None, "num_classes": 0, "num_splits": n_splits}
        if ds.labels is not None:
            meta.update(_write_labels(store, ds.labels, n, o))
        _write_splits(store, ds, n, n_splits, o)
        if client is not None and ds.features is not None:
            features = _submit_features(store, ds.features, n, o, client)
        if client is None:
            from lrgi_ooc.csr.build import build_csr as build
        else:
            from functools import partial

            from lrgi_ooc.csr.tasks import build_csr_dask
            build = partial(build_csr_dask, client, parts=ds.edges.parts(n, hint))
        res = build(store, ds.edges.chunks(n, hint), n, source=ds.edges.source,
                    undirected=a.undirected, remove_self_loops=not a.keep_self_loops,
                    remove_duplicates=not a.keep_duplicates, memory_limit=o.memory_limit,
                    workdir=work)
        if ds.features is not None:
            _write_features(store, ds.features, n, o, client, features)
            features = None
        meta.update(
            num_nodes=res.num_nodes, num_edges=res.num_edges, num_input_edges=res.num_input_edges,
            symmetrized=bool(a.undirected), remove_self_loops=not a.keep_self_loops,
            remove_duplicates=not a.keep_duplicates, self_loops_removed=res.self_loops_removed,
            duplicates_removed=res.duplicates_removed,
            feature_dtype=o.feature_dtype.name if ds.features is not None else None,
            num_features=int(ds.features.shape[1]) if ds.features is not None else 0)
        store.mark_stage("preprocess", config, fields=meta,
                         seconds=round(time.time() - t0, 2))
        publish.publish(staging, out, a.overwrite)
    except OSError as e:                  # a write with no file name (scratch, staging)
        if is_disk_full(e):
            raise disk_full(e, staging) from None
        raise
    finally:
        if features:                      # failed while they ran
            cluster.drain_tasks(features)
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    feat = (f"{meta['num_features']} features ({meta['feature_dtype']})"
            if meta["num_features"] else "no features")
    print(f"{out}: {res.num_nodes} nodes, {res.num_edges} edges ({res.self_loops_removed} self "
          f"loops, {res.duplicates_removed} duplicates removed), {feat}, "
          f"labels: {meta['label_kind'] or 'none'}, splits: {n_splits}")
    if ds.features is None:
        print("lrgi-ooc preprocess: warning: the store has no node features; `train` needs "
              "them (re-run with --features)", file=sys.stderr)
    return st.GraphStore(out).stage_record("preprocess")
