"""Edge lists (NPY / Parquet / CSV) as validated id streams, and as independently readable
parts that Dask workers read themselves (`EdgeInput.parts`). Table readers live in `ingest`;
nothing here knows the store layout."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.ingest.tables import (NpyArray, column_numpy, first_line, iter_batches, parquet_files,
                     parquet_meta, require_file, sniff)

EdgeChunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


def check_ids(a: np.ndarray, source: str, num_nodes: int | None, hint: str = "") -> np.ndarray:
    """Node ids as a signed integer array (int32 stays int32: no copy of the hot stream), or
    a one-line InputError naming the first bad id."""
    if a.dtype.kind not in "iu":
        raise InputError(f"{source}: node ids must be integers, got {a.dtype}")
    if a.dtype == np.uint64 and len(a) and a.max() > np.iinfo(np.int64).max:
        raise InputError(f"{source}: node id {int(a.max())} is too large")
    if not (a.dtype.kind == "i" and a.dtype.itemsize >= 4):
        a = a.astype(np.int64)
    if len(a):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0:
            raise InputError(f"{source}: node id {lo} is negative{hint}")
        if num_nodes is not None and hi >= num_nodes:
            raise InputError(f"{source}: node id {hi} is out of range [0, {num_nodes}){hint}")
    return a


@dataclass
class EdgeInput:
    """A restartable stream of (src, dst) blocks plus what is known about it cheaply."""
    source: str
    raw_chunks: EdgeChunks
    num_edges: int | None = None
    max_id_hint: int | None = None   # from Parquet statistics, when every row group has them
    files: list[Path] = field(default_factory=list)
    # independent pieces of the same stream (row groups, item ranges), in order, that a task
    # can read on its own: lets Dask workers read the input in parallel; None = stream only
    raw_parts: list[EdgeChunks] | None = None

    def chunks(self, num_nodes: int | None, hint: str = "") -> EdgeChunks:
        return _Checked(self.raw_chunks, self.source, num_nodes, hint)

    def parts(self, num_nodes: int | None, hint: str = "") -> list[EdgeChunks] | None:
        """The stream as independently readable, validated parts (picklable), or None."""
        if self.raw_parts is None:
            return None
        return [_Checked(p, self.source, num_nodes, hint) for p in self.raw_parts]

    def max_id(self, hint: str = "") -> int:
        """Largest node id: from statistics when present, else one validating read pass."""
        if self.max_id_hint is not None:
            return self.max_id_hint
        from lrgi_ooc.base.progress import bar
        hi, seen = -1, 0
        with bar(self.num_edges, f"scanning {Path(self.source).name}", "edges") as pb:
            for s, d in self.chunks(None, hint)():
                if len(s):
                    hi = max(hi, int(s.max()), int(d.max()))
                seen += len(s)
                pb.update(len(s))
        if not seen:
            raise InputError(f"{self.source}: the edge list is empty")
        return hi


@dataclass(frozen=True)
class _Checked:
    """A raw (src, dst) stream with every id validated (a class, not a closure: picklable)."""
    raw: EdgeChunks
    source: str
    num_nodes: int | None
    hint: str

    @property
    def decoder(self) -> str | None:
        return getattr(self.raw, "decoder", None)

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s, d in self.raw():
            yield (check_ids(s, self.source, self.num_nodes, self.hint),
                   check_ids(d, self.source, self.num_nodes, self.hint))


@dataclass(frozen=True)
class _NpyPart:
    """Edges [start, start + count) of an .npy edge array."""
    arr: NpyArray
    num_edges: int
    rows_first: bool
    start: int
    count: int
    chunk: int

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        a, e, n = self.arr, self.num_edges, self.count
        if self.rows_first:
            yield from zip(a.iter_items(self.start, n, self.chunk),
                           a.iter_items(e + self.start, n, self.chunk))
        else:
            for blk in a.iter_items(2 * self.start, 2 * n, 2 * self.chunk):
                pairs = blk.reshape(-1, 2)
                yield pairs[:, 0].copy(), pairs[:, 1].copy()


@dataclass(frozen=True)
class _ParquetPart:
    """Row groups of one Parquet file."""
    file: Path
    row_groups: tuple[int, ...]
    columns: tuple[str, str]
    chunk: int
    decoder = "pyarrow"       # whose thread pool a worker must limit (cluster.set_arrow_threads)

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        src, dst = self.columns
        for b in iter_batches(self.file, list(self.columns), self.chunk, str(self.file),
                               self.row_groups):
            yield (column_numpy(b.column(0), src, str(self.file)),
                   column_numpy(b.column(1), dst, str(self.file)))


PART_EDGES = 1 << 23     # about 8 M edges per part: enough tasks, little per-task overhead


def _id_stats(meta, cols: tuple[str, str]) -> Iterator[tuple[str, int | None, int | None]]:
    """(column, min, max) of every row group's id columns from the Parquet statistics;
    (column, None, None) where a row group has none, nulls, or no integer min/max."""
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for i in range(rg.num_columns):
            c = rg.column(i)
            if c.path_in_schema in cols:
                st = c.statistics
                if st is None or not st.has_min_max or st.null_count or \
                        not isinstance(st.min, int):
                    yield c.path_in_schema, None, None
                else:
                    yield c.path_in_schema, int(st.min), int(st.max)


def npy_edges(arr: NpyArray, chunk: int) -> EdgeInput:
    """[2, E] or [E, 2] integer array; Fortran order handled by reading the storage layout."""
    if len(arr.shape) != 2 or 2 not in arr.shape:
        raise InputError(f"{arr.source}: edge array must have shape [2, E] or [E, 2], "
                         f"got {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise InputError(f"{arr.source}: node ids must be integers, got {arr.dtype}")
    two_by_e = arr.shape[0] == 2
    e = arr.shape[1] if two_by_e else arr.shape[0]
    rows_first = two_by_e != arr.fortran    # storage is [2, E]: all sources, then all dests

    parts = [_NpyPart(arr, e, rows_first, a, min(PART_EDGES, e - a), chunk)
             for a in range(0, e, PART_EDGES)]
    return EdgeInput(arr.source, _NpyPart(arr, e, rows_first, 0, e, chunk), num_edges=e,
                     files=[arr.path], raw_parts=parts)


def parquet_edges(path: Path, src: str, dst: str, chunk: int) -> EdgeInput:
    import pyarrow as pa
    source = str(path)
    files = parquet_files(path, source)
    rows, hi, stats_ok = 0, -1, True
    parts: list[EdgeChunks] = []
    for f in files:
        meta = parquet_meta(f, source)
        groups: list[int] = []
        for g in range(meta.num_row_groups):       # row groups into parts of ~PART_EDGES
            groups.append(g)
            if sum(meta.row_group(i).num_rows for i in groups) >= PART_EDGES:
                parts.append(_ParquetPart(f, tuple(groups), (src, dst), chunk))
                groups = []
        if groups:
            parts.append(_ParquetPart(f, tuple(groups), (src, dst), chunk))
        schema = meta.schema.to_arrow_schema()
        for col in (src, dst):
            if col not in schema.names:
                raise InputError(f"{f}: no column '{col}' (columns: {', '.join(schema.names)}; "
                                 "see --src-col/--dst-col)")
            t = schema.field(col).type
            if not pa.types.is_integer(t):
                raise InputError(f"{f}: column '{col}' has type {t}; node ids must be integers "
                                 "(--ids remap takes string ids)")
        rows += meta.num_rows
        for col, lo, top in _id_stats(meta, (src, dst)):
            if lo is None:
                stats_ok = False
            elif lo < 0:
                raise InputError(f"{f}: column '{col}' has negative node id {lo} (--ids remap "
                                 "takes any int64 ids)")
            else:
                hi = max(hi, top)

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for f in files:
            for b in iter_batches(f, [src, dst], chunk, source):
                yield (column_numpy(b.column(0), src, source),
                       column_numpy(b.column(1), dst, source))
    return EdgeInput(source, gen, num_edges=rows,
                     max_id_hint=hi if stats_ok and rows else None, files=files,
                     raw_parts=parts)


def csv_edges(path: Path, src: str, dst: str) -> EdgeInput:
    import pyarrow as pa
    from pyarrow import csv as pcsv
    source = str(path)

    def reader():
        try:
            stream = pa.input_stream(str(path), compression="detect")
            return pcsv.open_csv(
                stream, read_options=pcsv.ReadOptions(block_size=32 << 20),
                convert_options=pcsv.ConvertOptions(
                    include_columns=[src, dst],
                    column_types={src: pa.int64(), dst: pa.int64()}))
        except Exception as e:
            msg = first_line(e)
            if "include_columns" in msg or "not found" in msg.lower():
                msg = f"needs a header row with columns '{src}' and '{dst}' (see --src-col/--dst-col)"
            raise InputError(f"{source}: {msg}") from None

    reader().close()     # header and column check now, before any heavy pass

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        r = reader()
        while True:
            try:
                b = r.read_next_batch()
            except StopIteration:
                return
            except Exception as e:
                raise InputError(f"{source}: {first_line(e)}") from None
            yield column_numpy(b.column(0), src, source), column_numpy(b.column(1), dst, source)
    return EdgeInput(source, gen, files=[Path(path)])


def open_edges(path: str | Path, src_col: str = "src", dst_col: str = "dst",
               chunk: int = 1 << 22) -> EdgeInput:
    p = require_file(path, "--edges")
    kind = sniff(p)
    if kind == "parquet":
        return parquet_edges(p, src_col, dst_col, chunk)
    if kind == "csv":
        return csv_edges(p, src_col, dst_col)
    if kind == "npy":
        return npy_edges(NpyArray(p), chunk)
    raise InputError(f"--edges {p}: expected Parquet, CSV or .npy (use --npz for datasets)")




# ------------------------------------------------------------------ ids of any kind
@dataclass
class IdEdges:
    """An edge list whose ids may be any int64 or strings (`--ids auto|remap`): a restartable
    stream of (src, dst) id columns (`store.idcols`), before any remapping."""
    source: str
    kind: str                                   # idcols.INT or idcols.STR
    raw: Callable[[], Iterator[tuple[object, object]]]
    num_edges: int | None = None
    files: list[Path] = field(default_factory=list)
    int_range: tuple[int, int] | None = None    # (min, max) from Parquet statistics
    columns: tuple[str, str] = ("src", "dst")   # the id columns' names, for messages

    def chunks(self) -> Iterator[tuple[object, object]]:
        from lrgi_ooc.store import idcols
        row = 0
        for s, d in self.raw():
            idcols.check_values(s, self.source, self.columns[0], row)
            idcols.check_values(d, self.source, self.columns[1], row)
            row += len(s)
            yield s, d

    def scan(self) -> tuple[int, int, int]:
        """(min id, max id, edges) of integer ids: from statistics, else one read pass."""
        if self.int_range is not None and self.num_edges is not None:
            return (*self.int_range, self.num_edges)
        from lrgi_ooc.base.progress import bar
        lo, hi, seen = None, None, 0
        with bar(self.num_edges, f"scanning {Path(self.source).name}", "edges") as pb:
            for s, d in self.chunks():
                if len(s):
                    a, b = int(min(s.min(), d.min())), int(max(s.max(), d.max()))
                    lo = a if lo is None else min(lo, a)
                    hi = b if hi is None else max(hi, b)
                seen += len(s)
                pb.update(len(s))
        if not seen:
            raise InputError(f"{self.source}: the edge list is empty")
        return lo, hi, seen


def _id_kind(t, where: str, col: str) -> str:
    import pyarrow as pa

    from lrgi_ooc.store import idcols
    if pa.types.is_integer(t):
        return idcols.INT
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
            or pa.types.is_large_binary(t):
        return idcols.STR
    raise InputError(f"{where}: column '{col}' has type {t}; node ids must be integers or "
                     "strings")


def _id_column(col, name: str, kind: str, source: str):
    """An Arrow column as an id column of `kind` (nulls and a kind change are errors)."""
    import pyarrow as pa

    from lrgi_ooc.store import idcols
    if col.null_count:
        raise InputError(f"{source}: column '{name}' has {col.null_count} null node ids")
    got = _id_kind(col.type, source, name)
    if got != kind:
        raise InputError(f"{source}: column '{name}' mixes id types ({kind} ids elsewhere, "
                         f"{col.type} here)")
    if kind == idcols.STR:
        return idcols.StrCol.from_arrow(col)
    a = col.to_numpy(zero_copy_only=False)
    if a.dtype == np.uint64 and len(a) and a.max() > np.iinfo(np.int64).max:
        raise InputError(f"{source}: node id {int(a.max())} does not fit int64")
    if pa.types.is_integer(col.type):
        return a.astype(np.int64, copy=False)
    return a


def open_id_edges(path: str | Path, src_col: str = "src", dst_col: str = "dst",
                  chunk: int = 1 << 22) -> IdEdges:
    """Edges whose ids are any integers or strings; the kind comes from the columns' types
    (Parquet schema, CSV inference), and both columns must agree."""
    import pyarrow as pa

    p = require_file(path, "--edges")
    kind = sniff(p)
    source = str(p)
    if kind == "npy":
        e = npy_edges(NpyArray(p), chunk)

        def npy():
            for s, d in e.raw_chunks():
                yield _as_int64(s, source), _as_int64(d, source)
        return IdEdges(source, "int64", npy, e.num_edges, [p])
    if kind == "parquet":
        files = parquet_files(p, source)
        kinds, rows, lo, hi, stats = set(), 0, None, None, True
        for f in files:
            meta = parquet_meta(f, source)
            schema = meta.schema.to_arrow_schema()
            for col in (src_col, dst_col):
                if col not in schema.names:
                    raise InputError(f"{f}: no column '{col}' (columns: "
                                     f"{', '.join(schema.names)}; see --src-col/--dst-col)")
                kinds.add(_id_kind(schema.field(col).type, str(f), col))
            rows += meta.num_rows
            for _, a, b in _id_stats(meta, (src_col, dst_col)):
                if a is None:
                    stats = False
                else:
                    lo = a if lo is None else min(lo, a)
                    hi = b if hi is None else max(hi, b)
        if len(kinds) > 1:
            raise InputError(f"{source}: columns '{src_col}' and '{dst_col}' mix id types "
                             "(integers and strings)")
        k = kinds.pop()

        def pq_gen():
            for f in files:
                for b in iter_batches(f, [src_col, dst_col], chunk, source):
                    yield (_id_column(b.column(0), src_col, k, str(f)),
                           _id_column(b.column(1), dst_col, k, str(f)))
        rng = (int(lo), int(hi)) if stats and lo is not None and k == "int64" else None
        return IdEdges(source, k, pq_gen, rows, files, rng, (src_col, dst_col))
    if kind == "csv":
        from pyarrow import csv as pcsv

        def reader():
            try:
                stream = pa.input_stream(str(p), compression="detect")
                return pcsv.open_csv(stream, read_options=pcsv.ReadOptions(block_size=32 << 20),
                                     convert_options=pcsv.ConvertOptions(
                                         include_columns=[src_col, dst_col],
                                         strings_can_be_null=False))
            except Exception as e:
                msg = first_line(e)
                if "include_columns" in msg or "not found" in msg.lower():
                    msg = (f"needs a header row with columns '{src_col}' and '{dst_col}' "
                           "(see --src-col/--dst-col)")
                raise InputError(f"{source}: {msg}") from None
        r = reader()
        sch = r.schema
        kinds = {_id_kind(sch.field(c).type, source, c) for c in (src_col, dst_col)}
        r.close()
        if len(kinds) > 1:
            raise InputError(f"{source}: columns '{src_col}' and '{dst_col}' mix id types "
                             "(integers and strings)")
        k = kinds.pop()

        def csv_gen():
            rd = reader()
            while True:
                try:
                    b = rd.read_next_batch()
                except StopIteration:
                    return
                except Exception as e:
                    msg = first_line(e)
                    if "conversion error" in msg.lower() or "invalid value" in msg.lower():
                        msg = f"an id column mixes id types ({msg})"
                    raise InputError(f"{source}: {msg}") from None
                yield (_id_column(b.column(0), src_col, k, source),
                       _id_column(b.column(1), dst_col, k, source))
        return IdEdges(source, k, csv_gen, None, [p], columns=(src_col, dst_col))
    raise InputError(f"--edges {p}: expected Parquet, CSV or .npy (use --npz for datasets)")


def _as_int64(a: np.ndarray, source: str) -> np.ndarray:
    if a.dtype == np.uint64 and len(a) and a.max() > np.iinfo(np.int64).max:
        raise InputError(f"{source}: node id {int(a.max())} does not fit int64")
    return a.astype(np.int64, copy=False)
