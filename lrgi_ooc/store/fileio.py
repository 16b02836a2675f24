"""Exact reads into reused buffers (plain reads, not mmaps: mapped pages count in RSS)."""
from __future__ import annotations

import numpy as np


def read_into(f, buf: np.ndarray, truncated: str, error: type[Exception]) -> np.ndarray:
    """Fill `buf` from the binary file `f`; raise `error(truncated)` if the file ends first."""
    view = memoryview(buf.reshape(-1).view(np.uint8))
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise error(truncated)
        got += n
    return buf
