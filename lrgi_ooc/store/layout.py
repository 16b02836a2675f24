"""The graph store: the ONE module that knows the Zarr v3 layout (docs/format.md).

Every other module asks this one for arrays by meaning (`indptr`, `table(layer)`, ...);
no other module spells a key, a chunk path or an attribute name.

Hot arrays are uncompressed, row-chunked with page-aligned chunk sizes, so that
`chunkmap` can memory-map a local store at numpy.memmap speed while zarr-python and
dask.array.from_zarr still read it as ordinary Zarr v3. Every chunk carries a CRC32C
(zarr's `crc32c` codec: the chunk's bytes, then a 4-byte trailer), which zarr-python verifies
on read and `validate` checks; the memory maps cover only the data part before it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import google_crc32c
import numpy as np

from lrgi_ooc.store import chunkmap
from lrgi_ooc.base.errors import InputError, space_for
from lrgi_ooc.base.memory import peak_rss_bytes

if TYPE_CHECKING:
    from lrgi_ooc.store.rows import ChunkRowFile

FORMAT_NAME = "lrgi-ooc"
FORMAT_VERSION = 3            # 2: trained weights inside the store (layers/<l>/weights)
#                               3: a CRC32C trailer on every chunk (codecs [bytes, crc32c])
ATTR = "lrgi_ooc"

INDPTR = "csr/indptr"
INDICES = "csr/indices"
FEATURES = "node/features"
LABELS = "node/labels"
NODE_IDS = "node/ids"                    # remapped ids: dense id -> external id (int64 [N])
NODE_ID_OFFSETS = "node/ids/offsets"     # string ids: int64 [N + 1] into ...
NODE_ID_BYTES = "node/ids/bytes"         # ... uint8 [total bytes], UTF-8 as given
SPLIT_PARTS = ("train", "val", "test")
SUB_INDPTR = "subgraph/train/indptr"     # inductive mode: CSR induced by split/train,
SUB_INDICES = "subgraph/train/indices"   # global ids, rows of other nodes empty

CRC_NBYTES = 4                 # zarr's crc32c codec: little-endian uint32 after the chunk
MISSING = "missing"            # GraphStore.chunk_problem: the chunk file does not exist
TARGET_CHUNK_BYTES = 32 << 20
MIN_CHUNK_ROWS = 4096          # power of two >= page size: any row width stays page-aligned
MAX_CHUNK_ROWS = 1 << 24


def embeddings_key(layer: int) -> str:
    return f"layers/{int(layer)}/embeddings"


def train_embeddings_key(layer: int) -> str:
    """Inductive mode: layer output on the training-induced subgraph, rows = split/train."""
    return f"layers/{int(layer)}/train_embeddings"


def projection_keys(layer: int) -> tuple[str, str]:
    """Transient, while `embed` runs: every node's projected input [N, D] and source attention
    logits [N, heads] (the per-node half of the GAT layer); deleted when the stage completes."""
    return f"layers/{int(layer)}/projection", f"layers/{int(layer)}/source_logits"


def weights_key(layer: int, name: str | None = None) -> str:
    """Layer L's trained block: a group whose attributes hold the configuration it was trained
    with, and one array per parameter (`name`), so that the store carries its model."""
    base = f"layers/{int(layer)}/weights"
    return base if name is None else f"{base}/{name}"


def train_stage(layer: int) -> str:
    """The stage record of layer L's training."""
    return f"train/{int(layer)}"


def embed_stage(layer: int) -> str:
    """The stage record of layer L's table."""
    return f"embed/{int(layer)}"


def split_key(part: str, index: int | None = None) -> str:
    return f"split/{part}" if index is None else f"split/{int(index)}/{part}"


def chunk_rows_for(num_rows: int, row_nbytes: int) -> int:
    """Power-of-two rows per chunk: about TARGET_CHUNK_BYTES, page-aligned, not far past N."""
    rows = MIN_CHUNK_ROWS
    while rows < MAX_CHUNK_ROWS and rows * 2 * row_nbytes <= TARGET_CHUNK_BYTES:
        rows *= 2
    cap = MIN_CHUNK_ROWS
    while cap < num_rows:
        cap *= 2
    return max(MIN_CHUNK_ROWS, min(rows, cap))


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ArrayInfo:
    """Shape, dtype and chunk grid of one array, read from its zarr.json."""

    def __init__(self, root: Path, key: str, meta: dict[str, Any]):
        self.key = key
        self.dir = root / key
        self.shape: tuple[int, ...] = tuple(int(s) for s in meta["shape"])
        self.dtype = np.dtype(meta["data_type"])
        self.chunk_rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        names = [c.get("name") for c in meta.get("codecs", [])]
        self.checksummed = names == ["bytes", "crc32c"]
        self.raw = names == ["bytes"] or self.checksummed    # chunk files memory-mappable

    @property
    def num_rows(self) -> int:
        return self.shape[0]

    @property
    def row_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_nbytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def chunk_nbytes(self) -> int:
        return self.chunk_rows * self.row_nbytes

    @property
    def file_nbytes(self) -> int:
        """Size of every chunk file: the padded chunk, then the checksum trailer if any."""
        return self.chunk_nbytes + CRC_NBYTES * self.checksummed

    @property
    def num_chunks(self) -> int:
        return -(-self.num_rows // self.chunk_rows)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        start = i * self.chunk_rows
        return start, min(start + self.chunk_rows, self.num_rows)

    def chunk_path(self, i: int) -> Path:
        return self.dir.joinpath("c", str(i), *(["0"] * (len(self.shape) - 1)))


_GROUP_META = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def _codecs(dtype: np.dtype, checksummed: bool = True) -> list[dict[str, Any]]:
    endian = {"configuration": {"endian": "little"}} if dtype.itemsize > 1 else {}
    return [{"name": "bytes", **endian}] + ([{"name": "crc32c"}] if checksummed else [])


def _zarr_array_meta(shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int) -> dict[str, Any]:
    """The zarr.json that zarr-python 3 writes for an uncompressed, checksummed array
    (`serializer=BytesCodec(), compressors=[Crc32cCodec()]`) with "/" chunk keys
    (tests/test_store.py compares the two): written here, so that commands that only create
    arrays need not import zarr (about 0.5 to 0.9 s per process on these machines)."""
    fill: Any = False if dtype.kind == "b" else 0.0 if dtype.kind == "f" else 0
    return {"shape": list(shape), "data_type": dtype.name,
            "chunk_grid": {"name": "regular",
                           "configuration": {"chunk_shape": [chunk_rows, *shape[1:]]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill, "codecs": _codecs(dtype), "attributes": {},
            "zarr_format": 3, "node_type": "array", "storage_transformers": []}


def _crc(data: np.ndarray, pad: int = 0) -> int:
    """CRC32C of a C-contiguous array's bytes followed by `pad` zero bytes (a padded chunk)."""
    crc = google_crc32c.value(data.reshape(-1).view(np.uint8))
    return google_crc32c.extend(crc, np.zeros(pad, np.uint8)) if pad else crc


def _trailer(crc: int) -> bytes:
    return int(crc).to_bytes(CRC_NBYTES, "little")


def _size_problem(a: ArrayInfo, size: int) -> str:
    what = "truncated chunk file" if size < a.file_nbytes else "chunk file too long"
    return f"{what} ({size} bytes, expected {a.file_nbytes})"


def _create_zarr_array(root: Path, key: str, shape: tuple[int, ...], dtype: Any,
                       chunk_rows: int) -> None:
    """Array metadata at `key` (its old contents removed), with group metadata for every
    parent that has none."""
    parent = root
    for part in key.split("/")[:-1]:
        parent = parent / part
        parent.mkdir(exist_ok=True)
        if not (parent / "zarr.json").exists():
            _write_json_atomic(parent / "zarr.json", _GROUP_META, durable=False)
    d = root / key
    d.mkdir()
    _write_json_atomic(d / "zarr.json", _zarr_array_meta(shape, np.dtype(dtype), chunk_rows),
                       durable=False)


def _write_json_atomic(path: Path, obj: dict[str, Any], durable: bool = True) -> None:
    """tmp + rename; `durable`: fsync first (stage records; not the array metadata of a store
    being built, which is published or discarded as a whole)."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with space_for(path, tmp):           # a full disk keeps the old file, and no temporary
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (a writer's temporary files are then not stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_path(store: str | os.PathLike) -> Path:
    """The writer lock of a store (`store.lock`): beside it, like `<name>.runs`, so that it
    exists before preprocess creates the store and outlives `preprocess --overwrite`."""
    p = Path(store).resolve()
    return p.parent / f"{p.name}.lock"


class GraphStore:
    """A graph store on local disk (or a shared filesystem)."""

    def __init__(self, path: str | os.PathLike, _check: bool = True, _upgrading: bool = False):
        self.path = Path(path)
        self._infos: dict[str, ArrayInfo] = {}
        self._upgrading = _upgrading
        if _check:
            self._check()

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str | os.PathLike, attrs: dict[str, Any]) -> "GraphStore":
        """Create an empty store (a directory that must not exist yet)."""
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        if (p / "zarr.json").exists():
            raise FileExistsError(f"{p}: a store already exists here")
        _write_json_atomic(p / "zarr.json", _GROUP_META, durable=False)
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "stages": {}}
        meta.update(attrs)
        store = cls(p, _check=False)
        store._write_meta(meta)
        return store

    def create_array(self, key: str, shape: tuple[int, ...], dtype: Any,
                     chunk_rows: int | None = None, single_chunk: bool = False) -> ArrayInfo:
        """`single_chunk`: one chunk of exactly the array's shape (small arrays such as
        weights, which are read whole and never memory-mapped)."""
        dtype = np.dtype(dtype)
        row_nbytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        rows = max(int(shape[0]), 1) if single_chunk else \
            chunk_rows or chunk_rows_for(shape[0], max(row_nbytes, 1))
        if rows % MIN_CHUNK_ROWS and not single_chunk:
            raise ValueError("chunk rows must be a multiple of MIN_CHUNK_ROWS")
        if self.path.joinpath(key).exists():
            shutil.rmtree(self.path / key)
        _create_zarr_array(self.path, key, tuple(int(s) for s in shape), dtype, rows)
        self._infos.pop(key, None)
        return self.info(key)

    # ----------------------------------------------------------------- metadata
    def _check(self) -> None:
        if not self.path.exists():
            raise InputError(f"{self.path}: store does not exist")
        meta_file = self.path / "zarr.json"
        if not meta_file.is_file():
            raise InputError(f"{self.path}: not a Zarr v3 store (no zarr.json)")
        try:
            meta = self.meta
        except (ValueError, KeyError) as e:
            raise InputError(f"{self.path}: unreadable store metadata ({e})") from None
        if meta.get("format") != FORMAT_NAME:
            raise InputError(f"{self.path}: not an lrgi-ooc store")
        version = meta.get("format_version")
        if version in (1, 2) and self._upgrading:
            return
        if version == 1:
            raise InputError(
                f"{self.path}: store format version 1 keeps its trained weights outside the "
                f"store; run `lrgi-ooc upgrade {self.path}` once (moves them in, atomically)")
        if version == 2:
            raise InputError(
                f"{self.path}: store format version 2 has no chunk checksums; run "
                f"`lrgi-ooc upgrade {self.path}` once (adds them in place, rerunnable)")
        if version != FORMAT_VERSION:
            raise InputError(
                f"{self.path}: store format version {version} is not "
                f"supported (this lrgi-ooc reads version {FORMAT_VERSION}); re-run preprocess")

    @property
    def meta(self) -> dict[str, Any]:
        with open(self.path / "zarr.json") as f:
            return json.load(f).get("attributes", {}).get(ATTR, {})

    def _write_meta(self, meta: dict[str, Any]) -> None:
        f = self.path / "zarr.json"
        with open(f) as fh:
            doc = json.load(fh)
        doc.setdefault("attributes", {})[ATTR] = meta
        _write_json_atomic(f, doc)

    def update_meta(self, **fields: Any) -> None:
        meta = self.meta
        meta.update(fields)
        self._write_meta(meta)

    @property
    def num_nodes(self) -> int:
        return int(self.meta["num_nodes"])

    @property
    def num_edges(self) -> int:
        return int(self.meta["num_edges"])

    # ----------------------------------------------------------------- stages
    def stages(self) -> dict[str, Any]:
        return dict(self.meta.get("stages", {}))

    def stage_record(self, name: str) -> dict[str, Any] | None:
        return self.stages().get(name)

    def stage_complete(self, name: str, config: dict[str, Any] | None = None) -> bool:
        rec = self.stage_record(name)
        if rec is None:
            return False
        return config is None or rec.get("config_hash") == config_hash(config)

    def mark_stage(self, name: str, config: dict[str, Any], *, fields: dict[str, Any] | None = None,
                   **extra: Any) -> None:
        """Record a stage as complete; call only after all its data is durably written.
        `fields`: store attributes written in the same (one fsync'd) write. The record
        carries this process's peak RSS so far (`peak_rss_mb`; Dask workers not included)."""
        meta = self.meta
        meta.update(fields or {})
        meta.setdefault("stages", {})[name] = {
            "config": config, "config_hash": config_hash(config), "completed_at": _now(),
            "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1), **extra}
        self._write_meta(meta)

    def clear_stage(self, name: str) -> None:
        meta = self.meta
        if meta.get("stages", {}).pop(name, None) is not None:
            self._write_meta(meta)

    def run_dir(self, stage: str) -> Path:
        """Working state of a stage (checkpoints, metrics): beside the store, not inside it."""
        d = self.path.parent / f"{self.path.name}.runs" / stage.replace("/", "-")
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ----------------------------------------------------------------- arrays
    def has(self, key: str) -> bool:
        return (self.path / key / "zarr.json").is_file()

    def info(self, key: str) -> ArrayInfo:
        if key not in self._infos:
            f = self.path / key / "zarr.json"
            if not f.is_file():
                raise InputError(f"{self.path}: array '{key}' is missing")
            with open(f) as fh:
                self._infos[key] = ArrayInfo(self.path, key, json.load(fh))
        return self._infos[key]

    def delete(self, key: str) -> None:
        self._infos.pop(key, None)
        if (self.path / key).exists():
            shutil.rmtree(self.path / key)

    def mmap(self, key: str, writable: bool = False, random_access: bool = True) -> np.ndarray:
        """Whole array as one memory-mapped numpy view (the hot path)."""
        a = self.info(key)
        if not a.raw:
            return self.zarr_array(key)[...]
        if writable and a.checksummed:
            raise ValueError(f"{key}: writing through a map would leave the chunk checksums "
                             "stale; write chunks with write_chunk")
        files = [a.chunk_path(i) for i in range(a.num_chunks)]
        try:
            return chunkmap.map_chunks(files, a.chunk_nbytes, a.dtype, a.shape, writable,
                                       random_access, file_nbytes=a.file_nbytes)
        except chunkmap.ChunkSizeError as e:
            raise self._size_error(a, e.index, e.size) from None

    def row_file(self, key: str, threads: int = 32) -> "ChunkRowFile | None":
        """The array's chunk files for exact `pread`s of whole rows (`store.rows`): the
        same bytes as `mmap`, at the disk's queue depth. None when the chunks are encoded
        (only zarr can read them)."""
        from lrgi_ooc.store.rows import ChunkRowFile     # numba: only when training reads
        a = self.info(key)
        if not a.raw:
            return None
        return ChunkRowFile([a.chunk_path(i) for i in range(a.num_chunks)], a.chunk_rows,
                            a.row_nbytes, a.num_rows, a.file_nbytes,
                            lambda i, size: self._size_error(a, i, size), threads)

    def _size_error(self, a: ArrayInfo, i: int, size: int) -> InputError:
        return InputError(f"{self.path}: array '{a.key}' chunk {i}: {_size_problem(a, size)}")

    def read_rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) by plain reads: for streaming passes that must not grow RSS."""
        a = self.info(key)
        out = np.zeros((max(stop - start, 0),) + a.row_shape, dtype=a.dtype)
        flat = out.reshape(-1).view(np.uint8)
        pos = start
        while pos < stop:
            ci = pos // a.chunk_rows
            c0 = ci * a.chunk_rows
            end = min(stop, c0 + a.chunk_rows)
            try:
                f = open(a.chunk_path(ci), "rb")
            except FileNotFoundError:          # never written: the fill value 0
                pos = end
                continue
            with f:
                size = os.fstat(f.fileno()).st_size
                if size != a.file_nbytes:
                    raise self._size_error(a, ci, size)
                f.seek((pos - c0) * a.row_nbytes)
                f.readinto(memoryview(flat)[(pos - start) * a.row_nbytes:
                                            (end - start) * a.row_nbytes])
            pos = end
        return out

    def iter_blocks(self, key: str, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        a = self.info(key)
        rows = rows or a.chunk_rows
        for s in range(0, a.num_rows, rows):
            yield s, self.read_rows(key, s, min(s + rows, a.num_rows))

    def write_chunk(self, key: str, i: int, block: np.ndarray) -> None:
        """Write chunk i whole and atomically (tmp + rename): the only way chunks are written,
        so a chunk file either holds its final bytes or does not exist."""
        a = self.info(key)
        s, e = a.chunk_bounds(i)
        if block.shape != (e - s,) + a.row_shape:
            raise ValueError(f"{key} chunk {i}: block shape {block.shape}, expected "
                             f"{(e - s,) + a.row_shape}")
        p = a.chunk_path(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        data = np.ascontiguousarray(block, dtype=a.dtype)
        with space_for(p, tmp):          # a full disk: DiskFull naming the chunk, no tmp left
            with open(tmp, "wb") as f:
                f.write(memoryview(data.reshape(-1).view(np.uint8)))
                pad = a.chunk_nbytes - data.nbytes
                if a.checksummed:        # over the padded chunk, as zarr's crc32c codec does
                    f.seek(a.chunk_nbytes)   # the padding: a hole that reads as zeros
                    f.write(_trailer(_crc(data, pad)))
                elif pad:
                    f.truncate(a.chunk_nbytes)
            os.replace(tmp, p)

    def remove_stale_partials(self, key: str, finished: bool = False) -> int:
        """Delete temporary chunk files left by writers that were killed (their pid is gone).

        `finished`: every writer of `key` has returned (a pass whose tasks all completed), so
        every temporary left is a dead writer's, whatever its pid says: a Dask worker killed
        mid-write whose task ran again elsewhere (and may have lived on another host).
        `key` "" means the whole store."""
        removed = 0
        for p in (self.path / key).rglob(".*.tmp-*"):
            pid = p.name.rpartition("-")[2]
            if pid.isdigit() and (finished or int(pid) != os.getpid() and not pid_alive(int(pid))):
                p.unlink(missing_ok=True)
                removed += 1
        return removed

    def chunk_written(self, key: str, i: int) -> bool:
        return self.info(key).chunk_path(i).is_file()

    def chunk_problem(self, key: str, i: int, buf: np.ndarray | None = None) -> str | None:
        """What is wrong with chunk i's file: None when sound, else MISSING, a wrong size or a
        checksum mismatch. Read through `buf` (uint8) piece by piece: bounded memory."""
        a = self.info(key)
        try:
            f = open(a.chunk_path(i), "rb")
        except FileNotFoundError:
            return MISSING
        with f:
            size = os.fstat(f.fileno()).st_size
            if size != a.file_nbytes:
                return _size_problem(a, size)
            if not a.checksummed:
                return None
            if buf is None:
                buf = np.empty(min(a.chunk_nbytes, 8 << 20), np.uint8)
            crc, left = 0, a.chunk_nbytes
            while left:
                n = f.readinto(memoryview(buf)[:min(left, len(buf))])
                if not n:
                    return _size_problem(a, a.file_nbytes - left)     # shrank meanwhile
                crc = google_crc32c.extend(crc, buf[:n])
                left -= n
            stored = int.from_bytes(f.read(CRC_NBYTES), "little")
        if stored != crc:
            return f"checksum mismatch (stored {stored:08x}, computed {crc:08x})"
        return None

    def array_keys(self) -> list[str]:
        """Every array in the store, sorted (what `validate` and `upgrade` walk)."""
        out: list[str] = []

        def walk(d: Path, prefix: str) -> None:
            for c in sorted(d.iterdir()):
                if c.name.startswith(".") or not c.is_dir():
                    continue
                m = c / "zarr.json"
                if m.is_file():
                    try:
                        kind = json.loads(m.read_text()).get("node_type")
                    except ValueError:
                        raise InputError(f"{m}: unreadable Zarr metadata") from None
                    if kind == "array":
                        out.append(prefix + c.name)
                        continue
                walk(c, prefix + c.name + "/")
        walk(self.path, "")
        return out

    def must_be_complete(self, key: str) -> bool:
        """Whether every chunk of `key` must exist: true once the stage writing it completed
        (no writer leaves chunks out: all-zero chunks are written too); false for an array
        still being written (a table whose embed runs or was killed, the transient projection)."""
        parts = key.split("/")
        if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
            layer = int(parts[1])
            if key in projection_keys(layer):
                return False
            if key.startswith(weights_key(layer) + "/"):
                return self.stage_complete(train_stage(layer))
            return self.stage_complete(embed_stage(layer))
        if key in (SUB_INDPTR, SUB_INDICES):         # built by inductive train, then recorded
            return "subgraph_train_nodes" in self.meta
        return self.stage_complete("preprocess")

    def add_checksums(self, key: str, progress: Any = None) -> int:
        """Upgrade to format 3, one array: give every chunk file its CRC32C trailer (each
        rewritten atomically and fsync'd; a file already chunk_nbytes + 4 long was done by an
        earlier, killed run), then the codecs in zarr.json, durably. `progress(nbytes)` after
        each chunk. Returns the chunks rewritten."""
        a = self.info(key)
        if a.checksummed or not a.raw:
            return 0
        done = 0
        for i in range(a.num_chunks):
            p = a.chunk_path(i)
            try:
                size = p.stat().st_size
            except FileNotFoundError:
                continue
            if size != a.chunk_nbytes + CRC_NBYTES:
                if size != a.chunk_nbytes:
                    raise self._size_error(a, i, size)
                data = np.fromfile(p, np.uint8)            # one chunk
                tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
                with space_for(p, tmp):
                    with open(tmp, "wb") as f:
                        f.write(memoryview(data))
                        f.write(_trailer(_crc(data)))
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, p)
                done += 1
            if progress is not None:
                progress(size)
        f = self.path / key / "zarr.json"
        doc = json.loads(f.read_text())
        doc["codecs"] = doc["codecs"] + [{"name": "crc32c"}]
        _write_json_atomic(f, doc)
        self._infos.pop(key, None)
        return done

    def stream_writer(self, key: str) -> "RowStreamWriter":
        return RowStreamWriter(self, key)

    def zarr_array(self, key: str):
        import zarr
        return zarr.open_array(str(self.path / key), mode="r")

    # ----------------------------------------------------------------- convenience
    def indptr(self) -> np.ndarray:
        return self.mmap(INDPTR)

    def indices(self) -> np.ndarray:
        return self.mmap(INDICES)

    def table_key(self, layer: int) -> str:
        """Input table of layer+1: layer 0 is the node features."""
        return FEATURES if int(layer) == 0 else embeddings_key(layer)

    def table(self, layer: int) -> np.ndarray:
        return self.mmap(self.table_key(layer))

    def labels(self) -> np.ndarray | None:
        return np.asarray(self.read_rows(LABELS, 0, self.num_nodes)) if self.has(LABELS) else None

    def splits(self) -> list[dict[str, np.ndarray]]:
        """The stored splits: [] when none, one dict per split otherwise."""
        def load(k: str) -> np.ndarray:
            return self.read_rows(k, 0, self.info(k).num_rows)
        if all(self.has(split_key(p)) for p in SPLIT_PARTS):
            return [{p: load(split_key(p)) for p in SPLIT_PARTS}]
        out, k = [], 0
        while all(self.has(split_key(p, k)) for p in SPLIT_PARTS):
            out.append({p: load(split_key(p, k)) for p in SPLIT_PARTS})
            k += 1
        return out

    def write_array(self, key: str, data: np.ndarray) -> ArrayInfo:
        """Small arrays (labels, splits): create and write whole."""
        info = self.create_array(key, data.shape, data.dtype)
        for i in range(info.num_chunks):
            s, e = info.chunk_bounds(i)
            self.write_chunk(key, i, data[s:e])
        return info

    def write_small(self, key: str, data: np.ndarray) -> None:
        """A small array (weights) as one chunk, written whole and atomically."""
        data = np.ascontiguousarray(data)
        self.create_array(key, data.shape, data.dtype, single_chunk=True)
        self.write_chunk(key, 0, data)

    def read_small(self, key: str) -> np.ndarray:
        """A whole small array, its checksums verified (cheap at this size); a missing chunk
        is an error, not zeros."""
        a = self.info(key)
        for i in range(max(a.num_chunks, 1)):
            problem = self.chunk_problem(key, i)
            if problem == MISSING:
                raise InputError(f"{self.path}: array '{key}' has no data (chunk {i} missing)")
            if problem is not None:
                raise InputError(f"{self.path}: array '{key}' chunk {i}: {problem}")
        return self.read_rows(key, 0, a.num_rows)

    def group_attrs(self, key: str) -> dict[str, Any] | None:
        """The lrgi-ooc attributes of the group at `key` (None when it has none)."""
        f = self.path / key / "zarr.json"
        if not f.is_file():
            return None
        with open(f) as fh:
            return json.load(fh).get("attributes", {}).get(ATTR)

    def write_group_attrs(self, key: str, attrs: dict[str, Any]) -> None:
        """Create (or replace) the group at `key` with these attributes, durably."""
        d = self.path / key
        d.mkdir(parents=True, exist_ok=True)
        parent = self.path
        for part in key.split("/")[:-1]:
            parent = parent / part
            if not (parent / "zarr.json").exists():
                _write_json_atomic(parent / "zarr.json", _GROUP_META, durable=False)
        _write_json_atomic(d / "zarr.json", {**_GROUP_META, "attributes": {ATTR: attrs}})

    def write_split(self, parts: dict[str, np.ndarray], index: int | None = None) -> None:
        for p in SPLIT_PARTS:
            self.write_array(split_key(p, index), np.asarray(parts[p], dtype=np.int64))

    def layers(self) -> list[int]:
        d = self.path / "layers"
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir()
                      if p.name.isdigit() and self.has(embeddings_key(int(p.name))))


class RowStreamWriter:
    """Appends rows in order and writes each chunk whole once it is full (bounded memory)."""

    def __init__(self, store: GraphStore, key: str):
        self.store, self.key = store, key
        self.info = store.info(key)
        self.buf = np.zeros((self.info.chunk_rows,) + self.info.row_shape, self.info.dtype)
        self.fill = 0
        self.chunk = 0
        self.rows_written = 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        pos = 0
        while pos < len(rows):
            take = min(len(rows) - pos, self.info.chunk_rows - self.fill)
            self.buf[self.fill:self.fill + take] = rows[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == self.info.chunk_rows:
                self._flush()

    def _flush(self) -> None:
        s, e = self.info.chunk_bounds(self.chunk)
        if self.fill != e - s:
            raise ValueError(f"{self.key}: wrote {self.rows_written + self.fill} rows, "
                             f"array has {self.info.num_rows}")
        self.store.write_chunk(self.key, self.chunk, self.buf[:self.fill])
        self.rows_written += self.fill
        self.chunk += 1
        self.fill = 0

    def close(self) -> None:
        if self.fill or self.rows_written < self.info.num_rows:
            self._flush()
        if self.rows_written != self.info.num_rows:
            raise ValueError(f"{self.key}: wrote {self.rows_written} rows, array has "
                             f"{self.info.num_rows}")


# --------------------------------------------------------------------- publishing
