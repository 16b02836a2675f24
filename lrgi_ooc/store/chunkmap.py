"""Memory-map a row-chunked, uncompressed Zarr v3 array as ONE contiguous numpy array.

zarr-python 3 decodes every touched chunk whole, so random row gathers through it are
100-500x slower than a memmap (docs/benchmarks.md). Our hot arrays are stored uncompressed
with page-aligned chunk sizes; the chunk files then hold the raw C-order bytes of their rows,
and mapping them side by side into one reserved address range gives a view that numpy
fancy-indexes at plain memmap speed. Missing chunks (never written) read as the fill value 0
because the reservation is anonymous zero memory. A chunk file may be longer than the chunk
(the checksum trailer of format 3): only its first `chunk_nbytes` bytes are mapped.

Only this module and `store` know that chunk files exist; nothing here knows key names.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

_PAGE = mmap.PAGESIZE
_LINUX = sys.platform.startswith("linux")
_PROT_READ, _PROT_WRITE = 1, 2
_MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED = 1, 2, 0x10
_MAP_ANONYMOUS = 0x20 if _LINUX else 0x1000
_MAP_NORESERVE = 0x4000 if _LINUX else 0
_MADV_RANDOM = 1
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]
        lib.munmap.restype = ctypes.c_int
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = lib
    return _libc


class ChunkSizeError(OSError):
    """A chunk file of the wrong size (truncated or damaged); `store` names the array."""

    def __init__(self, index: int, path: Path, size: int, expected: int):
        super().__init__(f"{path}: chunk file holds {size} bytes, expected {expected}")
        self.index, self.size, self.expected = index, size, expected


def stitching_supported() -> bool:
    return _LINUX or sys.platform == "darwin"


class _Mapping:
    """Owns one reserved address range; numpy arrays keep it alive through `.base`."""

    def __init__(self, base: int, nbytes: int, dtype: np.dtype, shape: tuple[int, ...],
                 writable: bool):
        self._base, self._nbytes = base, nbytes
        self.__array_interface__ = {
            "shape": shape, "typestr": np.dtype(dtype).str, "version": 3,
            "data": (base, not writable),
        }

    def __del__(self) -> None:
        if self._base:
            _lib().munmap(self._base, self._nbytes)
            self._base = 0


def map_chunks(files: Sequence[Path], chunk_nbytes: int, dtype: np.dtype,
               shape: tuple[int, ...], writable: bool = False,
               random_access: bool = True, file_nbytes: int | None = None) -> np.ndarray:
    """Map chunk files (index i -> bytes [i*chunk_nbytes, (i+1)*chunk_nbytes)) as one array.

    A file that does not exist reads as zeros. Every existing file must be exactly
    `file_nbytes` long (default `chunk_nbytes`: zarr pads edge chunks; more when a trailer
    follows), else ChunkSizeError; `chunk_nbytes` must be page-aligned.
    """
    file_nbytes = chunk_nbytes if file_nbytes is None else file_nbytes
    dtype = np.dtype(dtype)
    nbytes_used = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes_used == 0:
        return np.zeros(shape, dtype=dtype)
    if chunk_nbytes % _PAGE:
        raise ValueError(f"chunk size {chunk_nbytes} B is not a multiple of the page size")
    if len(files) == 1 and not writable:
        # One chunk needs no stitching: a plain memmap is the same thing.
        if os.path.exists(files[0]):
            size = os.path.getsize(files[0])
            if size != file_nbytes:
                raise ChunkSizeError(0, files[0], size, file_nbytes)
            mm = np.memmap(files[0], dtype=dtype, mode="r", shape=shape)
            if random_access and hasattr(mm, "_mmap") and hasattr(mmap, "MADV_RANDOM"):
                mm._mmap.madvise(mmap.MADV_RANDOM)
            return mm
        return np.zeros(shape, dtype=dtype)
    if not stitching_supported():
        raise OSError("stitched memory maps need Linux or macOS")
    lib = _lib()
    total = chunk_nbytes * len(files)
    prot = _PROT_READ | (_PROT_WRITE if writable else 0)
    base = lib.mmap(None, total, prot, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
    if base in (None, _MAP_FAILED):
        raise OSError(ctypes.get_errno(), "mmap reservation failed")
    holder = _Mapping(base, total, dtype, shape, writable)
    for i, f in enumerate(files):
        try:
            fd = os.open(f, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            if size != file_nbytes:
                raise ChunkSizeError(i, f, size, file_nbytes)
            addr = lib.mmap(base + i * chunk_nbytes, chunk_nbytes, prot,
                            _MAP_SHARED | _MAP_FIXED, fd, 0)
            if addr in (None, _MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"mmap of {f} failed")
        finally:
            os.close(fd)
    if random_access:
        lib.madvise(base, total, _MADV_RANDOM)
    return np.asarray(holder)


_MADV_DONTNEED = 4
_HUGE = 2 << 20


def release_rows(table: np.ndarray, start: int, stop: int) -> None:
    """Unmap the pages of rows [start, stop) of a read-only file map (they stay in the page
    cache and fault back in if touched again): what keeps RSS flat during a long gather. The
    range is widened to 2 MiB boundaries, because the page cache is mapped in large folios
    (up to 2 MiB per touched row, measured) and a partial range would leave their rest. Only
    for arrays that map files: anonymous memory would lose its contents."""
    if not _LINUX or not table.nbytes:
        return
    base = table.ctypes.data
    end_of_map = base + -(-table.nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
    row = table.strides[0]
    lo = max(base, (base + start * row) // _HUGE * _HUGE)
    hi = min(end_of_map, -(-(base + stop * row) // _HUGE) * _HUGE)
    if lo < hi:
        _lib().madvise(lo, hi - lo, _MADV_DONTNEED)
