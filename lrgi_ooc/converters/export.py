"""`export`: a layer's table (layer 0: the node features) out of the store, streamed.

Formats follow the suffix of `out` (docs/cli.md, "export"):
- `.parquet`: columns `node` (int64) and `embedding` (fixed_size_list<float32|float16>[D]),
  or with `wide` `node`, `dim_0` ... `dim_{D-1}`; one row group per block.
- `.npy`: the [R, D] matrix alone (an .npy header, then the rows block by block).
- `.csv` / `.csv.gz`: a header `node,dim_0,...` and one line per node (shortest round-trip
  decimal text, so the values read back exactly).

Memory is bounded by one block (~32 MiB of rows) whatever N: full exports read blocks with
plain reads (`GraphStore.read_rows`, nothing stays mapped); `nodes` subsets gather from
the memory map in sorted windows whose pages are unmapped as soon as they are read
(`gather_rows`), so RSS stays flat there too.
The file is written beside `out` under a temporary name, fsync'd and renamed into place, so
a failed or killed export leaves no partial `out`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.progress import bar
from lrgi_ooc.store import ids as store_ids
from lrgi_ooc.store.chunkmap import release_rows
from lrgi_ooc.store.layout import GraphStore, pid_alive

FORMATS = {".parquet": "parquet", ".npy": "npy", ".csv": "csv", ".csv.gz": "csv.gz"}
DTYPES = ("float32", "float16")
BLOCK_BYTES = 32 << 20        # rows per block (= per Parquet row group) ~ this many bytes
MAX_BLOCK_ROWS = 1 << 20
ID_BLOCK = 1 << 20            # node ids checked per step
GZIP_LEVEL = 1
RELEASE_BYTES = 64 << 20      # `nodes`: table bytes mapped at once during a gather


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def output_format(out: Path) -> str:
    """The format named by the suffix of `out` (InputError naming --out otherwise)."""
    name = out.name.lower()
    for suffix in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return FORMATS[suffix]
    raise InputError(f"--out {out}: unknown output format (use a name ending in "
                     f"{', '.join(FORMATS)})")


def block_rows(row_nbytes: int) -> int:
    """Rows per block: a power of two (so blocks align with the store's power-of-two
    chunks) of about BLOCK_BYTES, between 1 and MAX_BLOCK_ROWS."""
    rows = 1
    while rows < MAX_BLOCK_ROWS and rows * 2 * max(row_nbytes, 1) <= BLOCK_BYTES:
        rows *= 2
    return rows


class NodeIds:
    """The ids of `--nodes`, read block by block with plain reads (a memory map of the file
    would keep every page it read in RSS), checked on opening: 1-D, integer, in
    [0, num_rows). Repeats are allowed (the row is written again)."""

    def __init__(self, path: Path, num_rows: int, index: Any = None):
        """`index`: a remapped store's `IdIndex`: the file then holds the user's int64 ids."""
        self.path, self.index = path, index
        if not path.is_file():
            raise InputError(f"--nodes {path}: file does not exist")
        try:  # parses the header and checks the size; no data page is touched
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # numpy raises ValueError, OSError, EOFError, ... on bad files
            raise InputError(f"--nodes {path}: not a readable .npy file "
                             f"({_one_line(e)})") from None
        if not isinstance(ids, np.memmap):
            raise InputError(f"--nodes {path}: not a single .npy array")
        if ids.ndim != 1:
            raise InputError(f"--nodes {path}: expected a 1-D array of node ids, got shape "
                             f"{ids.shape}")
        if ids.dtype.kind not in "iu":
            raise InputError(f"--nodes {path}: expected integer node ids, got dtype "
                             f"{ids.dtype}")
        self.dtype, self.offset, self.len = ids.dtype, int(ids.offset), len(ids)
        del ids
        for s in range(0, self.len, ID_BLOCK):
            blk = self._raw(s, min(s + ID_BLOCK, self.len))
            if index is not None:
                got = index.find(blk.astype(np.int64))
                if (got < 0).any():
                    i = int(np.argmax(got < 0))
                    raise InputError(f"--nodes {path}: id {int(blk[i])} (position {s + i}) is "
                                     "not a node of the store (--dense-ids: the file holds "
                                     "dense ids)")
                continue
            bad = (blk >= num_rows) if self.dtype.kind == "u" else (blk < 0) | (blk >= num_rows)
            if bad.any():
                i = int(np.argmax(bad))
                raise InputError(f"--nodes {path}: node id {int(blk[i])} (position {s + i}) "
                                 f"is out of range [0, {num_rows})")

    def __len__(self) -> int:
        return self.len

    def _raw(self, start: int, stop: int) -> np.ndarray:
        blk = np.fromfile(self.path, dtype=self.dtype, count=stop - start,
                          offset=self.offset + start * self.dtype.itemsize)
        if len(blk) != stop - start:
            raise InputError(f"--nodes {self.path}: file is truncated")
        return blk

    def read(self, start: int, stop: int) -> np.ndarray:
        """Dense ids [start, stop) as int64 (already checked to lie in range)."""
        blk = self._raw(start, min(stop, self.len)).astype(np.int64)
        return blk if self.index is None else self.index.find(blk)


def _table_key(store: GraphStore, layer: int) -> str:
    if layer < 0:
        raise InputError(f"--layer: must be >= 0 (0 = the node features), got {layer}")
    key = store.table_key(layer)
    if not store.has(key):
        if layer == 0:
            raise InputError(f"{store.path}: layer 0 table is missing: the store has no node "
                             f"features (preprocess with --features)")
        raise InputError(f"{store.path}: layer {layer} table is missing: run "
                         f"`lrgi-ooc embed {store.path} --layer {layer}` first")
    info = store.info(key)
    if len(info.shape) != 2:
        raise InputError(f"{store.path}: layer {layer} table has shape {info.shape}, "
                         f"expected [N, D]")
    missing = sum(not store.chunk_written(key, i) for i in range(info.num_chunks))
    if missing:
        raise InputError(f"{store.path}: layer {layer} table is incomplete ({missing} of "
                         f"{info.num_chunks} chunks missing): run `lrgi-ooc embed "
                         f"{store.path} --layer {layer}` first")
    return key


def _remove_stale_temps(out: Path) -> None:
    """Temporary files beside `out` left by exports that were killed (their pid is gone)."""
    prefix = f".{out.name}.tmp-"
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for p in entries:
        pid = p.name[len(prefix):] if p.name.startswith(prefix) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            p.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gather_rows(store: GraphStore, key: str, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (any order, repeats allowed) of `key`, gathered from the memory map.

    The ids are visited sorted, in windows spanning at most RELEASE_BYTES of the table;
    each window's pages are unmapped before the next (`chunkmap.release_rows`), so RSS stays about one
    window whatever the table and the number of ids (mapping once and never releasing grew
    RSS by ~2 MiB per id: 256 random ids of a 2.4 GiB table, 484 MiB)."""
    info = store.info(key)
    out = np.empty((len(ids),) + info.row_shape, dtype=info.dtype)
    if not len(ids):
        return out
    order = np.argsort(ids, kind="stable")
    sids = ids[order]
    window = max(1, RELEASE_BYTES // max(info.row_nbytes, 1))
    table = store.mmap(key)
    # only a true file map may be released: a non-raw array comes back decoded in memory,
    # and a missing chunk as anonymous memory (tables with missing chunks are refused
    # before; this keeps the public function safe on its own)
    mapped = info.raw and all(store.chunk_written(key, i) for i in range(info.num_chunks))
    a = 0
    while a < len(sids):
        lo = int(sids[a])
        e = a + int(np.searchsorted(sids[a:], lo + window))
        out[order[a:e]] = table[sids[a:e]]
        if mapped:
            release_rows(table, lo, int(sids[e - 1]) + 1)
        a = e
    return out


# ------------------------------------------------------------------------------ writers
# Each writer takes the temporary path and an iterator of (node ids, [n, D] block) in the
# output dtype and writes the whole file.

def _arrow_type(dtype: np.dtype) -> Any:
    import pyarrow as pa
    return pa.float16() if dtype == np.float16 else pa.float32()


def _write_parquet(path: Path, blocks: Iterator[tuple[Any, np.ndarray]], dim: int,
                   dtype: np.dtype, wide: bool, keys: list[tuple[str, Any]],
                   meta: dict[str, str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    value = _arrow_type(dtype)
    heads = [pa.field(n, t, nullable=False) for n, t in keys]
    if wide:
        fields = heads + [pa.field(f"dim_{j}", value, nullable=False) for j in range(dim)]
    else:
        fields = heads + [pa.field("embedding", pa.list_(pa.field("element", value), dim),
                                   nullable=False)]
    schema = pa.schema(fields, metadata=meta)
    # random floats do not dictionary-encode: trying costs time and memory for nothing
    with pq.ParquetWriter(str(path), schema, use_dictionary=False,
                          compression="snappy") as w:
        for heads_, blk in blocks:
            if wide:
                cols = np.ascontiguousarray(blk.T)
                arrays = list(heads_) + [pa.array(cols[j]) for j in range(dim)]
            else:
                flat = pa.array(np.ascontiguousarray(blk).reshape(-1))
                arrays = list(heads_) + [pa.FixedSizeListArray.from_arrays(flat, dim)]
            t = pa.Table.from_arrays(arrays, schema=schema)
            w.write_table(t, row_group_size=max(len(blk), 1))


def _write_npy(path: Path, blocks: Iterator[tuple[np.ndarray, np.ndarray]], rows: int,
               dim: int, dtype: np.dtype) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": (rows, dim)}
    with open(path, "wb") as f:
        try:
            np.lib.format.write_array_header_1_0(f, header)
        except ValueError:  # header over 64 KiB: never for 2-D, but the format allows it
            f.seek(0)
            f.truncate()
            np.lib.format.write_array_header_2_0(f, header)
        for _, blk in blocks:
            f.write(memoryview(np.ascontiguousarray(blk, dtype=dtype).reshape(-1)))


def _write_csv(path: Path, blocks: Iterator[tuple[Any, np.ndarray]], dim: int,
               dtype: np.dtype, keys: list[tuple[str, Any]], gzip: bool) -> None:
    import gzip as gzip_mod

    import pyarrow as pa
    import pyarrow.csv as pcsv
    value = _arrow_type(dtype)
    names = [n for n, _ in keys] + [f"dim_{j}" for j in range(dim)]
    schema = pa.schema([pa.field(n, t) for n, t in keys] +
                       [pa.field(n, value) for n in names[len(keys):]])
    with open(path, "wb") as raw:
        # gzip level 1: 25x faster than Arrow's default (level 9) on float text, measured;
        # mtime 0 so that the same table gives the same file
        sink = (gzip_mod.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
                if gzip else raw)
        with sink:
            # the header is written here: pyarrow quotes header names, and
            # `quoting_header` needs pyarrow >= 19
            sink.write((",".join(names) + "\n").encode())
            opts = pcsv.WriteOptions(include_header=False, batch_size=8192)
            with pcsv.CSVWriter(sink, schema, write_options=opts) as w:
                for heads_, blk in blocks:
                    cols = np.ascontiguousarray(blk.T)
                    w.write_table(pa.Table.from_arrays(
                        list(heads_) + [pa.array(cols[j]) for j in range(dim)],
                        schema=schema))


# ------------------------------------------------------------------------------ export
def export_table(store: str | Path, layer: int, out: str | Path, *,
                 nodes: str | Path | None = None, dtype: str = "float32", wide: bool = False,
                 overwrite: bool = False, dense_ids: bool = False) -> dict[str, Any]:
    """Write layer `layer`'s table (0: the features) to `out` (Parquet, .npy or CSV by
    suffix): every node in node order, or the rows of the ids in the .npy `nodes`, in that
    order (repeats allowed). Every cheap check runs before any data is read; memory is one
    block whatever the table size; `out` appears only when complete. Returns a summary."""
    t0 = time.perf_counter()
    out = Path(out)
    fmt = output_format(out)
    if dtype not in DTYPES:
        raise InputError(f"--dtype: must be float32 or float16, got '{dtype}'")
    if wide and fmt == "npy":
        raise InputError("--wide: applies to .parquet output only (.npy has no columns, "
                         "CSV is always wide)")
    if out.is_dir():
        raise InputError(f"--out {out}: is a directory")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out}: output exists (use --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: directory {out.parent} does not exist")
    layer = int(layer)
    gs = GraphStore(store)
    key = _table_key(gs, layer)
    info = gs.info(key)
    num_rows, dim = info.num_rows, int(info.row_shape[0])
    kind = store_ids.id_kind(gs)
    if nodes is not None and kind == "string" and not dense_ids:
        raise InputError(f"--nodes {nodes}: this store has string ids; give dense ids in an "
                         ".npy with --dense-ids")
    ids = None
    if nodes is not None:
        ids = NodeIds(Path(nodes), num_rows, None if dense_ids or kind == store_ids.DENSE
                      else store_ids.IdIndex(gs))
    rows = num_rows if ids is None else len(ids)
    out_dtype = np.dtype(dtype)
    step = block_rows(dim * max(info.dtype.itemsize, out_dtype.itemsize))

    def source() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(node ids, rows in the table's dtype), block by block."""
        if ids is None:
            for s in range(0, num_rows, step):
                e = min(s + step, num_rows)
                yield np.arange(s, e, dtype=np.int64), gs.read_rows(key, s, e)
            return
        for s in range(0, rows, step):
            blk_ids = ids.read(s, s + step)
            yield blk_ids, gather_rows(gs, key, blk_ids)

    def converted(pb: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for node_ids, blk in source():
            if blk.dtype != out_dtype:
                with np.errstate(over="ignore"):   # overflow is checked just below
                    cast = blk.astype(out_dtype)
                if out_dtype == np.float16:
                    bad = ~np.isfinite(cast).all(axis=1)
                    if bad.any():
                        node = int(node_ids[int(np.argmax(bad))])
                        raise InputError(
                            f"--dtype float16: node {node} of layer {layer} has values that "
                            f"are not finite in float16 (|x| > 65504): export as float32")
                blk = cast
            yield node_ids, blk
            pb.update(len(node_ids))

    import pyarrow as pa
    id_type = pa.large_string() if kind == "string" else pa.int64()
    keys = [("node", pa.int64())] if kind == store_ids.DENSE else \
        [("id", id_type)] + ([("node", pa.int64())] if dense_ids else [])

    def headed(pb: Any) -> Iterator[tuple[list[Any], np.ndarray]]:
        """The key columns (`node`, or the user's `id` [and `node`]) as Arrow arrays."""
        for node_ids, blk in converted(pb):
            if kind == store_ids.DENSE:
                yield [pa.array(node_ids)], blk
                continue
            ext = store_ids.external_at(gs, node_ids)
            arr = pa.array(ext) if kind != "string" else \
                ext.to_arrow().cast(pa.large_string())
            yield ([arr, pa.array(node_ids)] if dense_ids else [arr]), blk

    writers: dict[str, Callable[[Path, Iterator[tuple[Any, np.ndarray]]], None]] = {
        "parquet": lambda p, b: _write_parquet(
            p, b, dim, out_dtype, wide, keys,
            {"lrgi_ooc.store": str(gs.path.resolve()), "lrgi_ooc.layer": str(layer)}),
        "npy": lambda p, b: _write_npy(p, b, rows, dim, out_dtype),
        "csv": lambda p, b: _write_csv(p, b, dim, out_dtype, keys, gzip=False),
        "csv.gz": lambda p, b: _write_csv(p, b, dim, out_dtype, keys, gzip=True),
    }
    _remove_stale_temps(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with bar(total=rows, desc=f"export layer {layer}", unit="rows") as pb:
            writers[fmt](tmp, converted(pb) if fmt == "npy" else headed(pb))
        _fsync(tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - t0
    return {"path": str(out), "format": fmt, "rows": rows, "dim": dim, "dtype": dtype,
            "bytes": out.stat().st_size, "seconds": round(seconds, 3)}
