"""Node tables keyed by node id (Parquet or CSV), joined onto the graph's dense ids out-of-core.

With arbitrary node ids the rows of a features / labels / split table cannot be positional:
each row names its node in an id column (`--id-col`, default "id"). Joining streams the table
once, maps the ids with `store.ids.IdIndex` (one dictionary chunk at a time), partitions the
(dense id, values) pairs by dense-id range into files under a work directory, then builds each
range's block in memory (at most `memory_limit // 4` bytes) and appends the blocks in dense
order with the store's stream writer. Nothing here holds the table or the dictionary whole.

Every message is one line naming the option and the file (the CLI prints it and exits 2).
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.progress import bar
from lrgi_ooc.ingest.tables import (first_line, iter_batches, parquet_files, parquet_meta,
                                    require_file, sniff)
from lrgi_ooc.store import idcols
from lrgi_ooc.store import ids as idstore
from lrgi_ooc.store.idcols import INT, STR, Col, StrCol
from lrgi_ooc.store.ids import DENSE, IdIndex
from lrgi_ooc.store.layout import GraphStore

_KIND_WORDS = {INT: "integers", STR: "strings"}
_I64 = np.iinfo(np.int64)
_MAX_BATCH = 1 << 16
# floors that keep tiny memory limits from costing a file append per handful of rows (a
# range's block itself always stays within memory_limit // 4)
MIN_BATCH_ROWS = 1 << 10
MIN_BUFFER_BYTES = 1 << 20


# --------------------------------------------------------------------------- messages
def _show(col: Col, i: int) -> str:
    """Id i for a one-line message: strings quoted, unprintable characters escaped."""
    s = idcols.display(col, i)
    if isinstance(col, StrCol):
        s = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)
        return f"'{s}'"
    return s


def _bad_col(e: BaseException) -> str:
    return first_line(e).replace("\n", " ")


# --------------------------------------------------------------------------- the table
@dataclass
class KeyedTable:
    """A Parquet file / directory or a CSV with an id column and numeric value columns,
    checked cheaply at open and read in bounded blocks (`batches`)."""
    source: str                      # the path as given
    what: str                        # the option, for messages ("--features")
    kind: str                        # INT or STR: the id column's type
    id_col: str
    columns: list[str]               # value columns, in file order
    num_rows: int | None             # None for CSV (not cheap)
    format: str                      # "parquet" or "csv"
    files: list[Path] = field(default_factory=list)
    # CSV only: the id column was inferred as integers (or is empty), so it may be read as
    # text instead when the graph's ids are strings (CSV has no types)
    retypable: bool = False
    csv_types: dict[str, Any] = field(default_factory=dict)

    def as_kind(self, kind: str) -> "KeyedTable":
        """The same table with ids read as `kind` (CSV integer-looking ids as strings)."""
        if kind == self.kind:
            return self
        if self.format == "csv" and self.retypable and kind == STR:
            import pyarrow as pa
            return replace(self, kind=STR, retypable=False,
                           csv_types={**self.csv_types, self.id_col: pa.large_binary()})
        raise InputError(f"{self.what} {self.source}: node ids are {_KIND_WORDS[self.kind]} "
                         f"but the graph's node ids are {_KIND_WORDS[kind]}")

    def batches(self, rows: int) -> Iterator[tuple[Col, np.ndarray]]:
        """(ids, values [n, C] float64 or int64) blocks of at most `rows` rows, in file order."""
        for _, _, ids, vals in self._batches(rows):
            yield ids, vals

    # ------------------------------------------------------------------ reading
    def _batches(self, rows: int) -> Iterator[tuple[Path, int, Col, np.ndarray]]:
        """(file, first row in that file, ids, values)."""
        rows = max(1, int(rows))
        names = [self.id_col, *self.columns]
        for f in self.files:
            row0 = 0
            for b in (iter_batches(f, names, rows, str(f)) if self.format == "parquet"
                      else self._csv_batches(f, rows)):
                n = b.num_rows
                if not n:
                    continue
                yield f, row0, self._ids(b.column(self.id_col), f, row0), \
                    self._values(b, f, row0, n)
                row0 += n

    def _csv_batches(self, f: Path, rows: int) -> Iterator[Any]:
        r = _csv_reader(f, self.what, [self.id_col, *self.columns], self.csv_types,
                        block=max(1 << 16, min(32 << 20, rows * 64)))
        while True:
            try:
                b = r.read_next_batch()
            except StopIteration:
                return
            except Exception as e:
                raise InputError(f"{self.what} {f}: {_bad_col(e)}") from None
            for s in range(0, b.num_rows, rows):
                yield b.slice(s, rows)

    def _ids(self, arr: Any, f: Path, row0: int) -> Col:
        import pyarrow as pa
        if arr.null_count:
            i = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
            raise InputError(f"{self.what} {f}: row {row0 + i}: the id '{self.id_col}' is null")
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if self.kind == STR:
            col = StrCol.from_arrow(arr)
            empty = np.diff(col.offsets) == 0
            if empty.any():
                raise InputError(f"{self.what} {f}: row {row0 + int(np.argmax(empty))}: the id "
                                 f"'{self.id_col}' is empty")
            return col
        a = arr.to_numpy(zero_copy_only=False)
        if a.dtype == np.uint64 and len(a) and a.max() > _I64.max:
            i = int(np.argmax(a > _I64.max))
            raise InputError(f"{self.what} {f}: row {row0 + i}: node id {int(a[i])} does not "
                             "fit int64")
        return a.astype(np.int64, copy=False)

    def _values(self, b: Any, f: Path, row0: int, n: int) -> np.ndarray:
        cols = []
        for name in self.columns:
            arr = b.column(name)
            if arr.null_count:
                i = int(np.argmax(arr.is_null().to_numpy(zero_copy_only=False)))
                raise InputError(f"{self.what} {f}: row {row0 + i}: column '{name}' is null")
            a = arr.to_numpy(zero_copy_only=False)
            if a.dtype == np.uint64 and len(a) and a.max() > _I64.max:
                i = int(np.argmax(a > _I64.max))
                raise InputError(f"{self.what} {f}: row {row0 + i}: column '{name}' value "
                                 f"{int(a[i])} does not fit int64")
            cols.append(a.astype(np.float64 if a.dtype.kind == "f" else np.int64, copy=False))
        if not cols:
            return np.zeros((n, 0), np.int64)
        return np.column_stack(cols)


# --------------------------------------------------------------------------- opening
def _id_kind(t: Any) -> str | None:
    import pyarrow as pa
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return INT
    if (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        return STR
    return None


def _numeric(t: Any) -> bool:
    import pyarrow as pa
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _pick_columns(names: list[str], id_col: str | None, what: str, src: str,
                  values: bool) -> tuple[str, list[str]]:
    """(id column, value columns) with the messages for a missing id or wrong value columns."""
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"{what} {src}: column '{dup}' appears twice")
    if not values and id_col not in names and len(names) == 1:
        id_col = names[0]                       # an id list: its one column, whatever its name
    wanted = id_col or "id"
    if wanted not in names:
        raise InputError(f"{what} {src}: no id column '{wanted}' (columns: "
                         f"{', '.join(names) or 'none'}; see --id-col)")
    rest = [n for n in names if n != wanted]
    if values and not rest:
        raise InputError(f"{what} {src}: no value column besides the id column '{wanted}'")
    if not values and rest:
        raise InputError(f"{what} {src}: expected just the id column '{wanted}', found "
                         f"value columns {', '.join(rest)}")
    return wanted, rest


def _open_parquet(p: Path, id_col: str | None, what: str, values: bool) -> KeyedTable:
    files = parquet_files(p, f"{what} {p}")
    metas = [parquet_meta(f, str(f)) for f in files]
    schemas = [m.schema.to_arrow_schema() for m in metas]
    names = list(schemas[0].names)
    for f, s in zip(files, schemas):
        if list(s.names) != names:
            raise InputError(f"{what} {f}: columns {list(s.names)} differ from {names} in "
                             f"{files[0]}")
    idc, rest = _pick_columns(names, id_col, what, str(files[0]) if p.is_dir() else str(p),
                              values)
    kind = None
    for f, s in zip(files, schemas):
        t = s.field(idc).type
        k = _id_kind(t)
        if k is None:
            raise InputError(f"{what} {f}: id column '{idc}' has type {t}; node ids must be "
                             "integers or strings")
        if kind is not None and k != kind:
            raise InputError(f"{what} {f}: id column '{idc}' holds {_KIND_WORDS[k]}, but "
                             f"{_KIND_WORDS[kind]} in {files[0]}")
        kind = k
        for c in rest:
            if not _numeric(s.field(c).type):
                raise InputError(f"{what} {f}: column '{c}' has type {s.field(c).type}; "
                                 "value columns must be numeric")
    return KeyedTable(str(p), what, kind, idc, rest, sum(m.num_rows for m in metas),
                      "parquet", files)


def _csv_reader(p: Path, what: str, include: list[str] | None, types: dict[str, Any],
                block: int = 1 << 20) -> Any:
    import pyarrow as pa
    from pyarrow import csv as pcsv
    try:
        stream = pa.input_stream(str(p), compression="detect")
        return pcsv.open_csv(
            stream, read_options=pcsv.ReadOptions(block_size=block),
            convert_options=pcsv.ConvertOptions(
                include_columns=include or [], column_types=types, null_values=[""],
                strings_can_be_null=False))
    except Exception as e:
        raise InputError(f"{what} {p}: {_bad_col(e)}") from None


def _open_csv(p: Path, id_col: str | None, what: str, values: bool) -> KeyedTable:
    import pyarrow as pa
    r = _csv_reader(p, what, None, {})          # header + types inferred from the first block
    schema = r.schema
    r.close()
    idc, rest = _pick_columns(list(schema.names), id_col, what, str(p), values)
    t = schema.field(idc).type
    # CSV has no types: integer-looking (or no) ids are integers that may still be read as
    # strings (`as_kind`); anything else is text
    retypable = pa.types.is_integer(t) or pa.types.is_null(t)
    kind = INT if retypable else STR
    types: dict[str, Any] = {idc: pa.int64() if kind == INT else pa.large_binary()}
    for c in rest:
        ct = schema.field(c).type
        if pa.types.is_boolean(ct):
            types[c] = pa.bool_()
        elif pa.types.is_integer(ct) or pa.types.is_floating(ct) or pa.types.is_null(ct):
            types[c] = pa.float64()     # later blocks may hold fractions the first did not
        else:
            raise InputError(f"{what} {p}: column '{c}' is not numeric (first values read as "
                             f"{ct}); value columns must be numeric")
    return KeyedTable(str(p), what, kind, idc, rest, None, "csv", [p], retypable, types)


def open_keyed(path: str | Path, id_col: str | None, what: str, *,
               values: bool = True) -> KeyedTable:
    """A keyed node table, with every cheap check done now. `values=False`: an id list (a
    split), where value columns are an error and a single column is the id whatever its name."""
    p = require_file(path, what)
    kind = sniff(p)
    if kind == "parquet":
        return _open_parquet(p, id_col, what, values)
    if kind == "csv":
        return _open_csv(p, id_col, what, values)
    raise InputError(f"{what} {p}: a table keyed by node id must be Parquet or CSV")


def is_keyed(path: str | Path, id_col: str | None = None) -> bool:
    """Whether `path` is the keyed form (Parquet or CSV) rather than the positional form
    (.npy / .npz). With `id_col`, Parquet / CSV count only when they have that column (so
    positional Parquet tables keep working); unreadable or unknown files answer False and are
    left to the opener's messages."""
    p = Path(path)
    try:
        kind = sniff(p)
    except (InputError, OSError):
        return False
    if kind not in ("parquet", "csv"):
        return False
    if id_col is None or not p.exists():
        return True
    try:
        if kind == "parquet":
            names = parquet_meta(parquet_files(p, str(p))[0], str(p)).schema.to_arrow_schema().names
        else:
            r = _csv_reader(p, "", None, {})
            names = r.schema.names
            r.close()
    except InputError:
        return True                   # let open_keyed report it
    return id_col in names


# --------------------------------------------------------------------------- joining
def _graph_kind(index: IdIndex) -> str:
    return INT if index.kind in (DENSE, INT) else STR


def _match(table: KeyedTable, index: IdIndex) -> KeyedTable:
    """The table read with the graph's id kind, or the one-line mismatch error."""
    return table.as_kind(_graph_kind(index))


def _lookup(table: KeyedTable, index: IdIndex, f: Path, row0: int, ids: Col,
            ignore_unknown: bool) -> tuple[np.ndarray, np.ndarray]:
    """(dense ids of the known rows, their positions in the batch); unknown ids are an error
    naming the first, unless skipped."""
    d = index.find(ids)
    unknown = d < 0
    if unknown.any() and not ignore_unknown:
        i = int(np.argmax(unknown))
        raise InputError(f"{table.what} {f}: row {row0 + i}: node id {_show(ids, i)} is not "
                         "in the graph (--ignore-unknown-ids skips such rows)")
    keep = np.flatnonzero(~unknown)
    return d[keep], keep


def _fit(vals: np.ndarray, dtype: np.dtype, *, finite: bool, nan_fill: Any,
         table: KeyedTable, f: Path, ids: Col) -> np.ndarray:
    """Values converted to `dtype`, or an error naming the node and column. `nan_fill` (not
    None): NaN becomes it (single-label tables: NaN = unlabelled, as in positional labels)."""
    def fail(mask: np.ndarray, how: str) -> None:
        r, c = (int(v[0]) for v in np.nonzero(mask))
        raise InputError(f"{table.what} {f}: node id {_show(ids, r)}, column "
                         f"'{table.columns[c]}': value {vals[r, c].item()!r} {how}")
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):
            out = vals.astype(dtype)
        if vals.dtype.kind == "f":
            bad = ~np.isfinite(vals)
            if finite and bad.any():
                fail(bad, "is not finite")
            over = ~np.isfinite(out) & ~bad
        else:
            over = ~np.isfinite(out)
        if over.any():
            fail(over, f"does not fit {dtype}")
        return out
    info = np.iinfo(dtype)
    if vals.dtype.kind == "f":
        if nan_fill is not None:
            vals = np.where(np.isnan(vals), float(nan_fill), vals)
        bad = ~np.isfinite(vals)
        if bad.any():
            fail(bad, "is not finite")
        frac = vals != np.round(vals)
        if frac.any():
            fail(frac, "is not an integer")
        out_of = (vals < float(info.min)) | (vals >= float(info.max) + 1.0)
    else:
        out_of = (vals < info.min) | (vals > info.max)
    if out_of.any():
        fail(out_of, f"does not fit {dtype}")
    return vals.astype(dtype)


class _Ranges:
    """Buffered appends of (dense id, values) blocks to one file per dense-id range."""

    def __init__(self, root: Path, limit: int):
        self.root, self.limit = root, max(int(limit), 1)
        self.parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        self.size = 0

    def path(self, r: int) -> Path:
        return self.root / f"range-{r:08d}.npy"

    def add(self, r: int, d: np.ndarray, v: np.ndarray) -> None:
        self.parts.setdefault(r, []).append((d, v))
        self.size += d.nbytes + v.nbytes
        if self.size > self.limit:
            self.flush()

    def flush(self) -> None:
        for r, blocks in self.parts.items():
            with open(self.path(r), "ab") as fh:
                idcols.save(fh, [np.concatenate([b[0] for b in blocks]),
                                 np.concatenate([b[1] for b in blocks])])
        self.parts.clear()
        self.size = 0


def _range_rows(memory_limit: int, row_nbytes: int) -> int:
    """Rows per dense-id range: its block plus its `seen` mask within memory_limit // 4."""
    return max(1, (int(memory_limit) // 4) // (row_nbytes + 1))


def _batch_rows(memory_limit: int, columns: int) -> int:
    return int(max(MIN_BATCH_ROWS, 1,
                   min(_MAX_BATCH, int(memory_limit) // 8 // (8 * columns + 32))))


def join_rows(store: GraphStore, key: str, table: KeyedTable, index: IdIndex, *,
              dtype: Any, fill: Any, squeeze: bool, ignore_unknown: bool, memory_limit: int,
              work: Path, finite: bool) -> dict[str, Any]:
    """Write store array `key` ([N, C], or [N] when `squeeze` and C == 1) in dense order from
    a keyed table; nodes the table does not name get `fill`. Returns {"rows", "matched",
    "missing", "skipped"} and, for integer dtypes, "min" / "max" of the values given (None
    when no node matched), so that callers can check label ranges without a second pass."""
    table = _match(table, index)
    dtype = np.dtype(dtype)
    c = len(table.columns)
    if c == 0:
        raise InputError(f"{table.what} {table.source}: no value column besides the id column "
                         f"'{table.id_col}'")
    if np.asarray(fill).astype(dtype) != fill:
        raise ValueError(f"fill {fill!r} does not fit {dtype}")
    n = store.num_nodes
    shape: tuple[int, ...] = (n,) if squeeze and c == 1 else (n, c)
    span = _range_rows(memory_limit, c * dtype.itemsize)
    nan_fill = fill if dtype.kind in "iu" and len(shape) == 1 else None
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="join-", dir=work))
    created = False
    stats: dict[str, Any] = {"rows": 0, "matched": 0, "missing": 0, "skipped": 0}
    lo, hi = None, None
    try:
        ranges = _Ranges(tmp, max(memory_limit // 4, MIN_BUFFER_BYTES))
        # pass 1: stream the table, map ids, check values, partition by dense-id range
        with bar(table.num_rows, f"{table.what.lstrip('-')}: by id", "rows") as pb:
            for f, row0, ids, vals in table._batches(_batch_rows(memory_limit, c)):
                stats["rows"] += len(vals)
                d, keep = _lookup(table, index, f, row0, ids, ignore_unknown)
                stats["skipped"] += len(vals) - len(keep)
                if len(keep) != len(vals):
                    ids, vals = idcols.take(ids, keep), vals[keep]
                out = _fit(vals, dtype, finite=finite, nan_fill=nan_fill, table=table, f=f,
                           ids=ids)
                if dtype.kind in "iu" and len(out):
                    lo = int(out.min()) if lo is None else min(lo, int(out.min()))
                    hi = int(out.max()) if hi is None else max(hi, int(out.max()))
                r = d // span
                order = np.argsort(r, kind="stable")
                r, d, out = r[order], d[order], out[order]
                cuts = np.flatnonzero(np.diff(r)) + 1
                for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(r)]):
                    if b > a:
                        ranges.add(int(r[a]), d[a:b], out[a:b])
                pb.update(len(vals))
        ranges.flush()
        # pass 2: per range, ascending: the block in dense order, duplicates refused
        store.create_array(key, shape, dtype)
        created = True
        w = store.stream_writer(key)
        with bar(n, f"{table.what.lstrip('-')}: write", "rows") as pb:
            for a in range(0, n, span):
                b = min(a + span, n)
                block = np.full((b - a,) + shape[1:], fill, dtype)
                seen = np.zeros(b - a, bool)
                p = ranges.path(a // span)
                for dd, vv in idcols.load_blocks(p, 2):
                    loc = dd - a
                    _check_unique(store, table, loc, seen, a)
                    seen[loc] = True
                    block[loc] = vv.reshape((len(vv),) + shape[1:])
                    stats["matched"] += len(loc)
                p.unlink(missing_ok=True)
                w.write(block)
                pb.update(b - a)
        w.close()
    except BaseException:
        if created:
            store.delete(key)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stats["missing"] = n - stats["matched"]
    if dtype.kind in "iu":
        stats["min"], stats["max"] = lo, hi
    return stats


def _check_unique(store: GraphStore, table: KeyedTable, loc: np.ndarray, seen: np.ndarray,
                  base: int) -> None:
    """A node named on two rows (in this block, or in an earlier one) is an error naming it."""
    dup = None
    if seen[loc].any():
        dup = int(loc[np.argmax(seen[loc])])
    else:
        s = np.sort(loc)
        eq = s[1:] == s[:-1]
        if eq.any():
            dup = int(s[np.argmax(eq)])
    if dup is not None:
        ext = idstore.external(store, base + dup, base + dup + 1)
        raise InputError(f"{table.what} {table.source}: node id {_show(ext, 0)} appears on more "
                         "than one row")


def keyed_ids(table_or_path: KeyedTable | str | Path, index: IdIndex, *, ignore_unknown: bool,
              what: str, stats: dict[str, int] | None = None) -> np.ndarray:
    """Dense ids (int64, ascending) of an id list such as a --train file; a repeated id is an
    error naming it, unknown ids as in `join_rows`. `stats` (optional) receives "rows" and
    "skipped". Holds an N-byte mask, as the positional index form does."""
    table = table_or_path if isinstance(table_or_path, KeyedTable) \
        else open_keyed(table_or_path, None, what, values=False)
    if table.columns:
        raise InputError(f"{table.what} {table.source}: expected just the id column "
                         f"'{table.id_col}', found value columns {', '.join(table.columns)}")
    table = _match(table, index)
    mask = np.zeros(index.n, bool)
    rows = skipped = 0
    for f, row0, ids, _ in table._batches(_MAX_BATCH):
        rows += idcols.length(ids)
        d, keep = _lookup(table, index, f, row0, ids, ignore_unknown)
        skipped += idcols.length(ids) - len(keep)
        dup = None
        if mask[d].any():
            dup = int(keep[np.argmax(mask[d])])
        else:
            order = np.argsort(d, kind="stable")
            eq = d[order][1:] == d[order][:-1]
            if eq.any():
                dup = int(keep[order[int(np.argmax(eq)) + 1]])
        if dup is not None:
            raise InputError(f"{table.what} {f}: row {row0 + dup}: node id {_show(ids, dup)} "
                             "appears more than once")
        mask[d] = True
    if stats is not None:
        stats.update(rows=rows, skipped=skipped)
    return np.flatnonzero(mask).astype(np.int64)
