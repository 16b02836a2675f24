"""Reading user inputs (NPY / NPZ / Parquet / CSV) as validated, bounded-memory streams: the
node tables (features, labels, splits) and the file readers that `edges` builds on.

Every reader opens its file and checks what is cheap (existence, format, header, columns,
dtypes, sizes) at construction, so `preprocess` can reject bad input before any heavy pass.
Data is then read block by block with explicit file reads (never whole-file loads), and each
stream can be restarted, because the CSR builder may read the edges more than once.
Nothing here knows the store layout.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import numpy.lib.format as npformat

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.store.fileio import read_into

def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def require_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {p}: no such file or directory")
    return p


# --------------------------------------------------------------------------- .npy streams
class NpyArray:
    """An .npy array, on disk or inside an .npz, read by explicit sequential reads."""

    def __init__(self, path: Path, member: str | None = None, source: str | None = None):
        self.path, self.member = Path(path), member
        self.source = source or (f"{path}:{member[:-4]}" if member else str(path))
        try:
            with self._open() as f:
                version = npformat.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = npformat.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = npformat.read_array_header_2_0(f)
                else:
                    shape, fortran, dtype = npformat._read_array_header(f, version)
                self.offset = f.tell()
            size = (zipfile.ZipFile(self.path).getinfo(member).file_size if member
                    else self.path.stat().st_size)
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise InputError(f"{self.source}: not a readable .npy array ({first_line(e)})")
        if dtype.hasobject or dtype.fields is not None:
            raise InputError(f"{self.source}: holds Python objects or records ({dtype}); "
                             "save a plain numeric array")
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype: np.dtype = dtype
        self.fortran = bool(fortran) and len(self.shape) > 1
        self.size = int(np.prod(self.shape, dtype=np.int64))
        if size < self.offset + self.size * dtype.itemsize:
            raise InputError(f"{self.source}: truncated ({size} bytes, header promises "
                             f"{self.offset + self.size * dtype.itemsize})")

    def _open(self) -> BinaryIO:
        if self.member is None:
            return open(self.path, "rb")
        z = zipfile.ZipFile(self.path)
        return z.open(self.member)

    def iter_items(self, start: int, count: int, block: int) -> Iterator[np.ndarray]:
        """Items [start, start+count) of the raw (storage-order) buffer, `block` at a time."""
        with self._open() as f:
            f.seek(self.offset + start * self.dtype.itemsize)
            done = 0
            while done < count:
                n = min(block, count - done)
                out = read_into(f, np.empty(n, self.dtype), f"{self.source}: truncated data",
                                InputError)
                done += n
                yield out

    def mapped_items(self, start: int, count: int) -> np.ndarray:
        """Items [start, start+count) of a plain .npy as a read-only memory map: a Dask task
        that copies one chunk reads the page cache directly instead of into fresh memory."""
        if self.member is not None:
            raise ValueError(f"{self.source}: an .npz member cannot be mapped")
        return np.memmap(self.path, self.dtype, "r", self.offset + start * self.dtype.itemsize,
                         (count,))

    def iter_rows(self, block_rows: int) -> Iterator[np.ndarray]:
        """Rows along axis 0, C-order arrays only."""
        if self.fortran:
            raise InputError(f"{self.source}: Fortran-ordered array; save it with "
                             "numpy.ascontiguousarray first")
        row = int(np.prod(self.shape[1:], dtype=np.int64))
        if row == 0:
            if self.shape[0]:
                yield np.zeros(self.shape, self.dtype)
            return
        for blk in self.iter_items(0, self.size, max(1, block_rows) * row):
            yield blk.reshape((-1,) + self.shape[1:])

    def read_all(self) -> np.ndarray:
        """Whole array: only for small arrays (shapes, format tags)."""
        data = np.concatenate(list(self.iter_items(0, self.size, max(self.size, 1))) or
                              [np.zeros(0, self.dtype)])
        return data.reshape(self.shape[::-1]).T if self.fortran else data.reshape(self.shape)


# --------------------------------------------------------------------------- tables
class Table:
    """A 1-D or 2-D array read in row blocks (features, labels, split masks or indices)."""
    source: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def num_rows(self) -> int:
        return self.shape[0]

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def row_items(self, row: int, block: int) -> Iterator[np.ndarray]:
        """Row `row` of a 2-D table, `block` items at a time (for [S, N] split masks)."""
        raise InputError(f"{self.source}: cannot read a row of this input")


class NpyTable(Table):
    def __init__(self, arr: NpyArray):
        self.arr, self.source, self.shape, self.dtype = arr, arr.source, arr.shape, arr.dtype

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        return self.arr.iter_rows(rows)

    def row_items(self, row: int, block: int) -> Iterator[np.ndarray]:
        s, n = self.shape
        if not self.arr.fortran:
            return self.arr.iter_items(row * n, n, block)
        # column-major [S, N] (e.g. masks saved from a transposed array): row k is every
        # S-th item; S is small (number of splits), so reading all S rows costs little
        return (b.reshape(-1, s)[:, row] for b in self.arr.iter_items(0, s * n, max(1, block) * s))


class ArrayTable(Table):
    """An array already in memory (the OGB path, whose loader reads everything anyway)."""

    def __init__(self, a: np.ndarray, source: str):
        self.a, self.source, self.shape, self.dtype = a, source, a.shape, a.dtype

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        for s in range(0, len(self.a), max(1, rows)):
            yield self.a[s:s + rows]

    def row_items(self, row: int, block: int) -> Iterator[np.ndarray]:
        r = self.a[row]
        for s in range(0, len(r), block):
            yield r[s:s + block]


class CSRTable(Table):
    """A sparse CSR matrix (scipy.sparse.save_npz layout, or x_* parts) densified by rows."""

    def __init__(self, data: NpyArray, indices: NpyArray, indptr: NpyArray,
                 shape: tuple[int, int], source: str):
        self.data, self.indices, self.indptr = data, indices, indptr
        self.source, self.shape = source, (int(shape[0]), int(shape[1]))
        self.dtype = data.dtype if data.dtype.kind == "f" else np.dtype(np.float64)
        for a in (data, indices, indptr):
            if len(a.shape) != 1:
                raise InputError(f"{a.source}: CSR part must be 1-D, has shape {a.shape}")
        if indptr.shape[0] != self.shape[0] + 1:
            raise InputError(f"{source}: indptr has {indptr.shape[0]} entries for "
                             f"{self.shape[0]} rows")
        if data.shape != indices.shape:
            raise InputError(f"{source}: data and indices differ in length")
        if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
            raise InputError(f"{source}: CSR indices/indptr must be integers")

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        n, f, nnz = self.shape[0], self.shape[1], self.data.shape[0]
        ptrs = _Sequential(self.indptr.iter_items(0, n + 1, 1 << 20))
        prev = int(ptrs.take(1)[0])
        if not 0 <= prev <= nnz:
            raise InputError(f"{self.source}: indptr[0] = {prev} is out of range")
        vals = _Sequential(self.data.iter_items(prev, nnz - prev, 1 << 20))
        cols = _Sequential(self.indices.iter_items(prev, nnz - prev, 1 << 20))
        for s in range(0, n, max(1, rows)):
            ptr = np.concatenate([[prev], ptrs.take(min(rows, n - s)).astype(np.int64)])
            if np.any(np.diff(ptr) < 0) or ptr[-1] > nnz:
                raise InputError(f"{self.source}: indptr is not monotone or exceeds nnz")
            cnt = int(ptr[-1] - prev)
            v, c = vals.take(cnt), cols.take(cnt).astype(np.int64)
            if cnt and (c.min() < 0 or c.max() >= f):
                raise InputError(f"{self.source}: column index out of range [0, {f})")
            out = np.zeros((len(ptr) - 1, f), self.dtype)
            np.add.at(out, (np.repeat(np.arange(len(ptr) - 1), np.diff(ptr)), c), v)
            prev = int(ptr[-1])
            yield out


class _Sequential:
    """Take exactly n items at a time from a stream of blocks (one file, read forward)."""

    def __init__(self, it: Iterator[np.ndarray]):
        self.it, self.buf = it, np.zeros(0)

    def take(self, n: int) -> np.ndarray:
        parts, need = [], n
        while need:
            if not len(self.buf):
                self.buf = next(self.it)
            parts.append(self.buf[:need])
            self.buf = self.buf[need:]
            need -= len(parts[-1])
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, self.buf.dtype)


class ParquetTable(Table):
    """Numeric Parquet columns, one row per node, in file (then row) order."""

    def __init__(self, path: Path, source: str, max_columns: int | None = None):
        self.files, self.source = parquet_files(path, source), source
        schemas = [parquet_schema(f, source) for f in self.files]
        names = schemas[0].names
        for f, s in zip(self.files, schemas):
            if s.names != names:
                raise InputError(f"{f}: columns {s.names} differ from {names} in {self.files[0]}")
        import pyarrow as pa
        for fld in schemas[0]:
            t = fld.type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
                raise InputError(f"{source}: column '{fld.name}' has type {t}; "
                                 "expected numeric columns only")
        if max_columns is not None and len(names) > max_columns:
            raise InputError(f"{source}: expected {max_columns} column, found {names}")
        if not names:
            raise InputError(f"{source}: no columns")
        self.names = names
        rows = sum(parquet_meta(f, source).num_rows for f in self.files)
        self.dtype = np.result_type(*[fld.type.to_pandas_dtype() for fld in schemas[0]])
        self.shape = (rows,) if max_columns == 1 else (rows, len(names))

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        for f in self.files:
            for batch in iter_batches(f, self.names, rows, self.source):
                cols = [column_numpy(batch.column(i), n, self.source)
                        for i, n in enumerate(self.names)]
                yield cols[0] if len(self.shape) == 1 else np.column_stack(cols)


# --------------------------------------------------------------------------- parquet helpers
def parquet_files(path: Path, source: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file()
                       and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
        if not files:
            raise InputError(f"{source}: directory holds no Parquet files")
        return files
    return [p]


def parquet_meta(f: Path, source: str):
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(f).metadata
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on corrupt files
        raise InputError(f"{f}: not a readable Parquet file ({first_line(e)})") from None


def parquet_schema(f: Path, source: str):
    return parquet_meta(f, source).schema.to_arrow_schema()


def iter_batches(f: Path, columns: list[str], rows: int, source: str,
                  row_groups: tuple[int, ...] | None = None):
    """Record batches of at most `rows` rows, one row group at a time: pyarrow's own
    `iter_batches` reads ahead across row groups (about 400 MB above the data measured on a
    320 MB file), which a memory budget cannot afford."""
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(f)
        groups = range(pf.num_row_groups) if row_groups is None else row_groups
        for g in groups:
            t = pf.read_row_group(g, columns=columns, use_threads=False)
            yield from t.to_batches(max_chunksize=max(1, rows))
            del t
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{f}: cannot read Parquet data ({first_line(e)})") from None


def column_numpy(col, name: str, source: str) -> np.ndarray:
    if col.null_count:
        raise InputError(f"{source}: column '{name}' has {col.null_count} null values")
    return col.to_numpy(zero_copy_only=False)


def sniff(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir() or name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.zst")):
        return "csv"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".npz"):
        return "npz"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK"):
        return "npz"
    raise InputError(f"{path}: cannot tell the format (use .parquet, .csv, .npy or .npz)")


# --------------------------------------------------------------------------- node tables
def npz_members(path: Path) -> dict[str, str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({first_line(e)})") from None
    return {n[:-4]: n for n in names if n.endswith(".npy")}


def csr_from_npz(path: Path, members: dict[str, str], prefix: str = "") -> CSRTable:
    def part(k: str) -> NpyArray:
        if prefix + k not in members:
            raise InputError(f"{path}: sparse matrix part '{prefix + k}' is missing")
        return NpyArray(path, members[prefix + k])
    shape = part("shape").read_all().reshape(-1)
    if len(shape) != 2:
        raise InputError(f"{path}: sparse matrix shape must have 2 entries")
    return CSRTable(part("data"), part("indices"), part("indptr"), (int(shape[0]), int(shape[1])),
                    str(path))


def open_features(path: str | Path) -> Table:
    p = require_file(path, "--features")
    kind = sniff(p)
    if kind == "parquet":
        return ParquetTable(p, str(p))
    if kind == "npy":
        t = NpyTable(NpyArray(p))
        if len(t.shape) != 2:
            raise InputError(f"{p}: features must have shape [N, F], got {list(t.shape)}")
        return t
    if kind == "npz":
        members = npz_members(p)
        if "format" in members:
            fmt = NpyArray(p, members["format"]).read_all()
            fmt = fmt.item().decode() if fmt.dtype.kind == "S" else str(fmt.item())
            if fmt != "csr":
                raise InputError(f"{p}: sparse format '{fmt}' is not supported (save as CSR)")
        return csr_from_npz(p, members)
    raise InputError(f"--features {p}: expected Parquet, .npy or a sparse CSR .npz")


def open_labels(path: str | Path) -> Table:
    p = require_file(path, "--labels")
    kind = sniff(p)
    if kind == "parquet":
        return ParquetTable(p, str(p), max_columns=1)
    if kind == "npy":
        t = NpyTable(NpyArray(p))
        if len(t.shape) not in (1, 2):
            raise InputError(f"{p}: labels must have shape [N] or [N, C], got {list(t.shape)}")
        return t
    raise InputError(f"--labels {p}: expected .npy or Parquet")


def open_split(path: str | Path, option: str) -> Table:
    p = require_file(path, option)
    if sniff(p) != "npy":
        raise InputError(f"{option} {p}: expected a .npy index array or boolean mask")
    return NpyTable(NpyArray(p))
