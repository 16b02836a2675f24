"""Errors the CLI turns into one-line messages and exit code 2 (no traceback)."""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class InputError(Exception):
    """Bad input, bad option value or an unusable store: the user's to fix (exit 2)."""


class DiskFull(InputError):
    """A write ran out of space (ENOSPC) or quota (EDQUOT): the user's to fix by freeing
    space; what the command had completed is kept, and the same command then resumes."""


def require(cond: bool, message: str) -> None:
    if not cond:
        raise InputError(message)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space of the filesystem holding `path` (its nearest existing parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def disk_full(e: OSError, path: str | os.PathLike | None = None) -> DiskFull:
    """The one-line error for a write that failed for lack of space: names the file (the
    error's own, else `path`: an ENOSPC from f.write() carries no filename) and the space
    left."""
    where = e.filename or path
    what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded (no space)"
    free = free_bytes(where) if where is not None else None
    left = f" ({_size(free)} free)" if free is not None else ""
    head = f"{where}: " if where is not None else ""
    return DiskFull(f"{head}{what}{left}; completed work is kept: free space and run the "
                    f"same command again")


@contextmanager
def space_for(path: str | os.PathLike, *partials: str | os.PathLike) -> Iterator[None]:
    """Writes inside that run out of space raise DiskFull naming `path`, after removing the
    `partials` (temporary files of the failed write: on a full disk they would block the
    rerun). Other errors pass through unchanged."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        for p in partials:
            try:
                os.unlink(p)
            except OSError:
                pass
        raise disk_full(e, path) from None
