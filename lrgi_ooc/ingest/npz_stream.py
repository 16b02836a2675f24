""".npy arrays inside .npz (zip) archives as bounded streams, without numpy's loader.

`np.load(npz)[key]` inflates a whole member into memory (ogbn-papers100M's `node_feat` alone
is 28 GB). Here a member is read block by block, whichever way the archive stores it:
- stored (`np.savez`): by plain reads at the member's offset inside the archive, so any item
  range is reachable directly (independent Dask parts, memory maps of a chunk);
- compressed (`np.savez_compressed`: deflate; bzip2 and lzma work the same way): through
  zipfile's decompressing stream, which only reads forward. Reaching item k inflates items
  [0, k) through one reused buffer, so the two rows of an [2, E] `edge_index` come from two
  independent streams (the second inflates past the first half: 1.5x the inflation of one
  read, no scratch file), and such a member is read as one stream, never as parts.
Every read from a compressed stream asks zipfile for at most `_PIECE` bytes, which bounds
zipfile's own transient buffers whatever the caller's block size. Stored members are not
CRC-checked (their bytes are read directly); compressed ones are when read to the end.
"""
from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.ingest.tables import NpyArray, first_line
from lrgi_ooc.store.fileio import read_into

_PIECE = 1 << 18                                   # bytes per read from a compressed stream
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")      # zip local file header (APPNOTE 4.3.7)
_LOCAL_MAGIC = b"PK\x03\x04"
_READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError)


def _data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """Offset of a stored member's first byte in the archive (after its local header, whose
    extra field may differ from the central directory's, e.g. zip64 sizes)."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(_LOCAL_HEADER.size)
    if len(head) != _LOCAL_HEADER.size or head[:4] != _LOCAL_MAGIC:
        raise zipfile.BadZipFile(f"bad local header of member {info.filename}")
    fields = _LOCAL_HEADER.unpack(head)
    return info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]


class _Window:
    """Bytes [start, start + size) of a file as a file of their own (a stored member)."""

    def __init__(self, path: Path, start: int, size: int):
        self.f, self.start, self.size, self.pos = open(path, "rb"), start, size, 0

    def __enter__(self) -> "_Window":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int) -> int:
        self.pos = min(max(int(pos), 0), self.size)
        return self.pos

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        n = min(len(view), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        got = self.f.readinto(view[:n]) or 0
        self.pos += got
        return got

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        buf = bytearray(max(n, 0))
        return bytes(buf[:self.readinto(buf)])


class _Inflating:
    """A compressed member's stream (zipfile.ZipExtFile) read `_PIECE` bytes at a time; owns
    its ZipFile, so closing it closes the archive."""

    def __init__(self, path: Path, member: str):
        self.z = zipfile.ZipFile(path)
        try:
            self.f = self.z.open(member)
        except BaseException:
            self.z.close()
            raise

    def __enter__(self) -> "_Inflating":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()
        self.z.close()

    def tell(self) -> int:
        return self.f.tell()

    def readinto(self, buf) -> int:
        view = memoryview(buf).cast("B")
        return self.f.readinto(view[:_PIECE])

    def read(self, n: int = -1) -> bytes:
        return self.f.read(n)

    def skip(self, n: int, scratch: np.ndarray) -> None:
        """Move forward n bytes by inflating them into `scratch` (zipfile's own seek would
        inflate 16 MB at a time into fresh buffers)."""
        view = memoryview(scratch.reshape(-1).view(np.uint8))
        while n > 0:
            got = self.readinto(view[:min(n, len(view))])
            if not got:
                return
            n -= got


class ZipNpyArray(NpyArray):
    """An .npy member of an .npz archive, streamed in bounded memory (module docstring);
    otherwise an `NpyArray` (same header checks, `iter_items`, `iter_rows`, `read_all`)."""

    def __init__(self, path: str | Path, member: str, source: str | None = None):
        path = Path(path)
        where = source or f"{path}:{member[:-4] if member.endswith('.npy') else member}"
        try:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo(member)
        except KeyError:
            raise InputError(f"{path}: no member '{member}'") from None
        except (OSError, zipfile.BadZipFile) as e:
            raise InputError(f"{path}: not a readable .npz archive ({first_line(e)})") from None
        if info.flag_bits & 0x1:
            raise InputError(f"{where}: the member is encrypted")
        self.stored = info.compress_type == zipfile.ZIP_STORED
        self.member_size = int(info.file_size)
        try:
            self.data_start = _data_start(path, info) if self.stored else -1
        except (OSError, zipfile.BadZipFile) as e:
            raise InputError(f"{path}: not a readable .npz archive ({first_line(e)})") from None
        super().__init__(path, member, where)

    @property
    def random_access(self) -> bool:
        """True when any item range can be read without reading what comes before it."""
        return self.stored

    def _open(self) -> BinaryIO:
        if self.stored:
            return _Window(self.path, self.data_start, self.member_size)  # type: ignore
        return _Inflating(self.path, self.member)                        # type: ignore

    def iter_items(self, start: int, count: int, block: int) -> Iterator[np.ndarray]:
        """Items [start, start+count) of the storage-order buffer, at most `block` at a time
        (each a fresh array); one block plus `_PIECE` bytes in memory at any moment."""
        block = max(1, int(block))
        item = self.dtype.itemsize
        try:
            with self._open() as f:
                pos = self.offset + int(start) * item
                if self.stored:
                    f.seek(pos)
                else:
                    f.skip(pos - f.tell(), np.empty(min(block * item, _PIECE), np.uint8))
                done = 0
                while done < count:
                    n = min(block, count - done)
                    out = read_into(f, np.empty(n, self.dtype),
                                    f"{self.source}: truncated data", InputError)
                    done += n
                    yield out
        except InputError:
            raise
        except _READ_ERRORS as e:
            raise InputError(f"{self.source}: cannot read the archive member "
                             f"({first_line(e)})") from None

    def mapped_items(self, start: int, count: int) -> np.ndarray:
        """Items [start, start+count) of a stored member as a read-only memory map."""
        if not self.stored:
            raise ValueError(f"{self.source}: a compressed .npz member cannot be mapped")
        return np.memmap(self.path, self.dtype, "r",
                         self.data_start + self.offset + start * self.dtype.itemsize, (count,))

