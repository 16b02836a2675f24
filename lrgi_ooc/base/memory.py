"""Memory budgets: parsing `--memory-limit` and reading peak RSS."""
from __future__ import annotations

import ctypes
import re
import resource
import sys

from lrgi_ooc.base.errors import InputError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10, "M": 1 << 20,
          "MB": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40, "TIB": 1 << 40}


def parse_size(text: str, option: str = "--memory-limit") -> int:
    """'256MB' -> bytes (binary units: 1MB = 2^20 B)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise InputError(f"{option}: cannot read '{text}' as a size (e.g. 512MB, 4GB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise InputError(f"{option}: must be positive, got '{text}'")
    return value


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def anon_rss_bytes() -> int:
    """Anonymous resident memory of this process now (Linux; 0 elsewhere): what a pass left
    behind for the next (tables, allocator pools, compiled kernels), which the next pass's
    budget must leave out."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_LIBC: list = []


def libc():
    """glibc, or None where there is none (then nothing below does anything)."""
    if not _LIBC:
        try:
            lib = ctypes.CDLL(None)
            lib.mallopt, lib.madvise        # glibc on Linux; elsewhere neither is used
        except (OSError, AttributeError):
            lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def return_freed_memory() -> None:
    """glibc raises its mmap threshold up to 32 MB after large frees; buffers below it then
    come from the heap and stay resident after `del` (measured: +60 to +100 MB peak RSS here).
    A fixed threshold keeps every allocation >= 1 MB an mmap that free() returns at once.
    Call it before a pass that allocates and frees many large blocks."""
    if libc() is not None:
        libc().mallopt(-3, 1 << 20)                # M_MMAP_THRESHOLD
