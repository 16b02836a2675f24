"""Node-id columns of any kind as numpy data: int64 ids, or byte strings (offsets + bytes).

The remap (`ingest.remap`) and the dictionary (`store.ids`) sort, deduplicates and searches ids in blocks; this module gives
both kinds the same small set of operations, and the order-preserving uint64 keys the remap
partitions by (ascending ids for integers, bytewise order for strings).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, Sequence

import numpy as np

from lrgi_ooc.base.errors import InputError

INT, STR = "int64", "string"
_SIGN = np.uint64(1 << 63)
SYMBOLS = 7                 # bytes per string key level: 7 x 9 bits (0 = end of string) = 63
_SUB = 1 << 16              # strings per step of the key computation (bounds temporaries)


@dataclass
class StrCol:
    """Byte strings: string i is data[offsets[i]:offsets[i + 1]]."""
    offsets: np.ndarray     # int64 [n + 1]
    data: np.ndarray        # uint8 [offsets[-1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.data.nbytes)

    @property
    def kernel_data(self) -> np.ndarray:
        """The bytes as the compiled kernels take them: never a zero-length array (one zero
        byte stands in for none)."""
        return self.data if len(self.data) else np.zeros(1, np.uint8)

    def to_arrow(self) -> Any:
        import pyarrow as pa
        return pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), len(self), [None, pa.py_buffer(self.offsets),
                                           pa.py_buffer(self.data)])

    @classmethod
    def from_arrow(cls, arr: Any) -> "StrCol":
        import pyarrow as pa
        import pyarrow.compute as pc
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
            odt = np.dtype(np.int32)
        else:
            arr, odt = pc.cast(arr, pa.large_binary()), np.dtype(np.int64)
        bufs = arr.buffers()
        n, off = len(arr), arr.offset
        offsets = np.frombuffer(bufs[1], dtype=odt, count=n + 1, offset=odt.itemsize * off)
        lo, hi = int(offsets[0]), int(offsets[-1])
        out = offsets.astype(np.int64)
        if lo:
            out -= lo
        # the bytes stay in Arrow's buffer (read-only): copying 2 x 21 MB a batch, into fresh
        # pages, cost the 100 M-edge remap ~10 s of CPU. A small slice of a large buffer is
        # copied, so that it does not keep the rest alive.
        data = np.frombuffer(bufs[2], dtype=np.uint8)[lo:hi] if bufs[2] is not None \
            else np.zeros(0, np.uint8)
        if bufs[2] is not None and 2 * (hi - lo) < bufs[2].size:
            data = data.copy()
        return cls(out, data)

    def take(self, idx: np.ndarray) -> "StrCol":
        import pyarrow as pa
        return StrCol.from_arrow(self.to_arrow().take(pa.array(np.asarray(idx, np.int64))))

    def value(self, i: int) -> bytes:
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes()


Col = Any        # np.ndarray (int64) or StrCol


def kind_of(col: Col) -> str:
    return STR if isinstance(col, StrCol) else INT


def length(col: Col) -> int:
    return len(col)


def concat(cols: Sequence[Col], kind: str) -> Col:
    if kind == INT:
        return np.concatenate([np.asarray(c, np.int64) for c in cols]) if cols \
            else np.zeros(0, np.int64)
    if not cols:
        return StrCol(np.zeros(1, np.int64), np.zeros(0, np.uint8))
    offs, base = [np.zeros(1, np.int64)], 0
    for c in cols:
        offs.append(c.offsets[1:] + base)
        base += int(c.offsets[-1])
    return StrCol(np.concatenate(offs), np.concatenate([c.data for c in cols]))


def take(col: Col, idx: np.ndarray) -> Col:
    return col.take(idx) if isinstance(col, StrCol) else col[idx]


def unique_sorted(col: Col) -> Col:
    """Distinct ids, ascending (integers) or in bytewise order (strings)."""
    if not isinstance(col, StrCol):
        # sort + neighbour compare: numpy 2.4's np.unique is 60x slower than np.sort on 40 M
        # random int64 here (33 s against 0.5 s), measured
        srt = np.sort(np.asarray(col, np.int64))
        if len(srt) < 2:
            return srt
        keep = np.empty(len(srt), bool)
        keep[0] = True
        np.not_equal(srt[1:], srt[:-1], out=keep[1:])
        return srt[keep]
    import pyarrow.compute as pc
    u = pc.unique(col.to_arrow())
    return StrCol.from_arrow(u.take(pc.sort_indices(u)))


def distinct(col: Col) -> Col:
    """Distinct ids in no particular order: hashing for strings (sorting millions of strings
    costs 20x more), the sorted form for integers (a sort is the fastest there)."""
    if not isinstance(col, StrCol):
        return unique_sorted(col)
    if len(col) >= 1 << 16:
        from lrgi_ooc.store.idkernel import distinct_strings
        reps = distinct_strings(col)
        if reps is not None:
            return col.take(reps)
    import pyarrow.compute as pc
    return StrCol.from_arrow(pc.unique(col.to_arrow()))


def rank(col: Col, uniq: Col) -> np.ndarray:
    """Position of each id in `uniq` (sorted, containing every id of `col`)."""
    if not isinstance(col, StrCol):
        if len(col) < 1 << 16:
            return np.searchsorted(uniq, col).astype(np.int64)
        from lrgi_ooc.store.idkernel import rank_int64
        return rank_int64(uniq if uniq.dtype == np.int64 else uniq.astype(np.int64),
                          np.asarray(col, np.int64))
    if len(col) >= 1 << 16:
        from lrgi_ooc.store.idkernel import rank_strings
        r, ok = rank_strings(uniq, col)
        if ok.all():
            return r
        miss = np.flatnonzero(~ok)               # a hash collision: look those up exactly
        r[miss] = rank(col.take(miss), uniq) if len(miss) < 1 << 16 else _index_in(
            col.take(miss), uniq)
        return r
    return _index_in(col, uniq)


def _index_in(col: "StrCol", uniq: "StrCol") -> np.ndarray:
    import pyarrow.compute as pc
    pos = pc.index_in(col.to_arrow(), value_set=uniq.to_arrow())
    return pos.to_numpy(zero_copy_only=False).astype(np.int64)


def find(col: Col, uniq: Col) -> np.ndarray:
    """Like `rank`, with -1 for ids that are not in `uniq`."""
    if isinstance(col, StrCol):
        import pyarrow.compute as pc
        pos = pc.index_in(col.to_arrow(), value_set=uniq.to_arrow())
        return pos.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    col = np.asarray(col, np.int64)
    pos = np.searchsorted(uniq, col)
    ok = pos < len(uniq)
    ok[ok] = uniq[pos[ok]] == col[ok]
    return np.where(ok, pos, -1).astype(np.int64)


def key(col: Col, depth: int) -> np.ndarray:
    """Order-preserving uint64 key of level `depth`: for integers the id itself with the
    sign bit flipped (one level); for strings 9-bit symbols (byte + 1, 0 past the end) of
    bytes [7 depth, 7 depth + 7), so that comparing keys level by level is bytewise order."""
    if not isinstance(col, StrCol):
        return np.asarray(col, np.int64).view(np.uint64) ^ _SIGN
    n = len(col)
    out = np.empty(n, np.uint64)
    lengths = np.diff(col.offsets)
    j = np.arange(SYMBOLS, dtype=np.int64) + SYMBOLS * depth
    shifts = (9 * (SYMBOLS - 1 - np.arange(SYMBOLS))).astype(np.uint64)
    data = col.kernel_data
    for a in range(0, n, _SUB):
        b = min(a + _SUB, n)
        valid = j[None, :] < lengths[a:b, None]
        pos = np.where(valid, col.offsets[a:b, None] + j[None, :], 0)
        sym = np.where(valid, data[pos].astype(np.uint64) + np.uint64(1), np.uint64(0))
        out[a:b] = (sym << shifts[None, :]).sum(axis=1, dtype=np.uint64)
    return out


def max_depth(col: Col) -> int:
    """The deepest key level that can still tell two ids of `col` apart."""
    if not isinstance(col, StrCol) or len(col) == 0:
        return 0
    return int(np.diff(col.offsets).max(initial=0)) // SYMBOLS


KEY_BITS = {INT: 64, STR: 63}


# ------------------------------------------------------------------ block files
def save(f: BinaryIO, cols: Sequence[Col]) -> None:
    """Append one block of equally long columns to an open bucket file."""
    for c in cols:
        if isinstance(c, StrCol):
            np.save(f, np.int8(1))
            np.save(f, c.offsets)
            np.save(f, c.data)
        else:
            np.save(f, np.int8(0))
            np.save(f, np.asarray(c))


def load_blocks(path: Any, ncols: int):
    """The blocks `save` appended, in order."""
    import os
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        while f.tell() < end:
            block = []
            for _ in range(ncols):
                if int(np.load(f)):
                    block.append(StrCol(np.load(f), np.load(f)))
                else:
                    block.append(np.load(f))
            yield block


def check_values(col: Col, source: str, column: str = "", first_row: int = 0) -> None:
    """Empty string ids are refused (a null is refused where the column is read); the message
    names the column and the row of the input (`first_row`: the block's first row, 0-based)."""
    if isinstance(col, StrCol) and len(col) and (np.diff(col.offsets) == 0).any():
        i = first_row + int(np.argmax(np.diff(col.offsets) == 0))
        where = f"column '{column}', " if column else ""
        raise InputError(f"{source}: empty node id ({where}row {i + 1} of the edge list)")


def display(col: Col, i: int) -> str:
    """Id i as the user wrote it (for messages and `info`)."""
    if isinstance(col, StrCol):
        return col.value(i).decode("utf-8", "backslashreplace")
    return str(int(col[i]))
