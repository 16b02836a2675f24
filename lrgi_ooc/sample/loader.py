"""Batches as tensors: sample, gather input rows, prefetch in the background, copy to device.

Why a thread and not DataLoader workers: numba kernels (sampling, gathering) and torch copies
release the GIL, so one background thread overlaps them with the training step without
pickling memory maps into worker processes (which also fail inside daemonic Dask workers).

Memory stays flat across epochs: host buffers live in a fixed ring of slots that is
allocated once (grown only up to the sampler's row bound) and reused for every batch.
A yielded batch stays valid until the batch after the next one is requested.

Rows come from the memory-mapped table (`gather_rows`), or, when the table is larger than
memory, from a `rowreader.RowReader` (a row cache, then `pread`s from a thread pool): the
same values either way, so the batches never depend on which.

Sparse rows (`sparse_below`, bag-of-words features): a batch with few non-zeros comes as a
CSR tensor with the values of the dense batch, without writing and then scanning the dense
[rows, F] copy (27 KB a row on Coauthor CS, about 140 MB a batch). A memory-mapped table
that is sparse as a whole is converted to CSR once (`table_csr`: 8 bytes a non-zero, at most
2 x `sparse_below` of a float32 table's bytes) and batches copy their rows from it; otherwise
each batch scans its rows (`gather_csr`).
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
from numba import njit

from lrgi_ooc.base.readahead import put as _put
from lrgi_ooc.sample.onehop import Batch, OneHopSampler

if TYPE_CHECKING:
    from lrgi_ooc.sample.rowreader import RowReader

_END = object()
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_HELD = 2                      # batches the consumer may hold before their slot is reused


@dataclass
class TensorBatch:
    x: torch.Tensor                 # float32 [n, F] on device, local row order (CSR: sparse_below)
    conv_edge_index: torch.Tensor   # int64 [2, Ec]: (src in [0, n), dst in [0, T))
    prop_src: torch.Tensor          # int64 [Ep] in [0, T)
    prop_dst: torch.Tensor          # int64 [Ep] in [0, B)
    prop_weight: torch.Tensor       # float32 [Ep]
    num_targets: int
    num_seeds: int
    seeds: np.ndarray               # int64 [B] global ids (host)
    epoch: int = 0
    step: int = 0


_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True, nogil=True)
def _gather(table, nodes, order, out):
    """out[r] = table[nodes[r]] with r taken in `order` (ascending rows: page locality).
    Explicit loops: numba's per-row slice assignment is several times slower."""
    f = table.shape[1]
    for q in range(order.size):
        r = order[q]
        s = nodes[r]
        for c in range(f):
            out[r, c] = table[s, c]


@njit(cache=True, nogil=True)
def _gather_f16(table, nodes, order, lut, out):
    """As _gather, float16 bits -> float32 through a 2^16-entry table (exact, one pass)."""
    f = table.shape[1]
    for q in range(order.size):
        r = order[q]
        s = nodes[r]
        for c in range(f):
            out[r, c] = lut[table[s, c]]


@njit(cache=True, nogil=True)
def _gather_csr(table, nodes, cap, crow, col, val):
    """The non-zeros of rows `nodes` of `table`, in that order, as CSR; -1 past `cap`."""
    k = 0
    crow[0] = 0
    for r in range(nodes.size):
        s = nodes[r]
        for c in range(table.shape[1]):
            v = table[s, c]
            if v != 0:
                if k >= cap:
                    return -1
                col[k] = c
                val[k] = v
                k += 1
        crow[r + 1] = k
    return k


@njit(cache=True, nogil=True)
def _gather_csr_f16(table, nodes, cap, lut, crow, col, val):
    """As _gather_csr on float16 bits (+0 and -0 are zeros)."""
    k = 0
    crow[0] = 0
    for r in range(nodes.size):
        s = nodes[r]
        for c in range(table.shape[1]):
            b = table[s, c]
            if b & 0x7fff:
                if k >= cap:
                    return -1
                col[k] = c
                val[k] = lut[b]
                k += 1
        crow[r + 1] = k
    return k


def gather_csr(table: np.ndarray, nodes: np.ndarray, cap: int, crow: np.ndarray,
               col: np.ndarray, val: np.ndarray) -> int:
    """Rows `nodes` of a (memory-mapped) float32 or float16 [N, F] table as CSR (columns
    ascending, float32 values) into crow [len(nodes) + 1], col (int64), val; returns the
    number of non-zeros, or -1 when there are more than `cap` (buffers of at least `cap`),
    or when the table is not a C-contiguous float32 / float16 array."""
    if table.ndim != 2 or not table.flags.c_contiguous:
        return -1
    if table.dtype == np.float32:
        return int(_gather_csr(table, nodes, cap, crow, col, val))
    if table.dtype == np.float16:
        return int(_gather_csr_f16(table.view(np.uint16), nodes, cap, _F16_TO_F32, crow, col,
                                   val))
    return -1


def table_csr(table: np.ndarray, density: float, budget: int | None = None,
              chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The whole [N, F] table as CSR (crow, col int32, val; the values of `gather_csr`) when
    at most `density` of it is non-zero and the CSR takes at most `budget` bytes (8 a
    non-zero, 8 a row), else None; two passes, a chunk of rows at a time."""
    n, f = table.shape
    if budget is not None and 8 * (n + 1) > budget:
        return None
    crow = np.zeros(n + 1, np.int64)
    total = 0
    for a in range(0, n, chunk_rows):
        counts = np.count_nonzero(table[a:a + chunk_rows], axis=1)
        crow[a + 1:a + 1 + counts.size] = counts
        total += int(counts.sum())
        if budget is not None and 8 * (n + 1 + total) > budget:
            return None
    np.cumsum(crow, out=crow)
    if total > density * n * f:
        return None
    col, val = np.empty(total, np.int32), np.empty(total, np.float32)
    part = np.empty(chunk_rows + 1, np.int64)
    for a in range(0, n, chunk_rows):
        b = min(a + chunk_rows, n)
        p, q = int(crow[a]), int(crow[b])
        if gather_csr(table, np.arange(a, b, dtype=np.int64), q - p, part, col[p:q],
                      val[p:q]) != q - p:
            return None                   # not a float32 / float16 C-contiguous table
    return crow, col, val


@njit(cache=True, nogil=True)
def _csr_rows(crow_all, col_all, val_all, nodes, crow, col, val):
    """Rows `nodes` of a CSR matrix, in that order, into crow [len(nodes) + 1], col, val."""
    k = 0
    crow[0] = 0
    for r in range(nodes.size):
        s = nodes[r]
        for q in range(crow_all[s], crow_all[s + 1]):
            col[k] = col_all[q]
            val[k] = val_all[q]
            k += 1
        crow[r + 1] = k


def gather_rows(table: np.ndarray, nodes: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Rows `nodes` of a (memory-mapped) [N, F] table into out[:len(nodes)].

    out has the table's dtype, or float32 for a float16 table (converted while gathering).
    """
    n = nodes.size
    dst = out[:n]
    fast = table.ndim == 2 and table.flags.c_contiguous and table.dtype.itemsize in _UINT
    if fast and table.dtype == out.dtype:
        u = _UINT[table.dtype.itemsize]
        _gather(table.view(u), nodes, np.argsort(nodes), dst.view(u))
    elif fast and table.dtype == np.float16 and out.dtype == np.float32:
        _gather_f16(table.view(np.uint16), nodes, np.argsort(nodes), _F16_TO_F32, dst)
    else:
        dst[...] = np.take(table, nodes, axis=0)
    return dst


class _Slot:
    """One reusable host buffer (pinned when the device is CUDA)."""

    def __init__(self) -> None:
        self.host: torch.Tensor | None = None
        self.event = None                         # CUDA: copy-out finished
        self.crow: torch.Tensor | None = None     # CSR buffers (sparse_below)
        self.col: torch.Tensor | None = None
        self.val: torch.Tensor | None = None
        self.nnz = -1                             # >= 0: the batch in it is CSR

    def ensure_csr(self, rows: int, nnz: int, cap_rows: int, cap_nnz: int) -> None:
        if self.crow is None or self.crow.shape[0] < rows + 1:
            self.crow = torch.empty(min(cap_rows, max(rows, int(rows * 1.25))) + 1,
                                    dtype=torch.int64)
        if self.val is None or self.val.shape[0] < nnz:
            size = min(cap_nnz, max(nnz, int(nnz * 1.25)))
            self.col = self.val = None
            self.col = torch.empty(size, dtype=torch.int64)
            self.val = torch.empty(size, dtype=torch.float32)

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.crow.numpy(), self.col.numpy(), self.val.numpy()

    def ensure(self, rows: int, cap: int, feat: int, dtype: torch.dtype, pin: bool) -> None:
        if self.host is None or self.host.shape[0] < rows:
            size = min(cap, max(rows, int(rows * 1.25)))
            self.host = None
            self.host = torch.empty((size, feat), dtype=dtype, pin_memory=pin)


class BatchLoader:
    """Iterates the batches of one epoch as `TensorBatch`es (see `iter_epoch` for others).

    prefetch = 0 runs everything in the calling thread (same batches, no thread).
    `rows`: a `rowreader.RowReader` over the same table, which then serves the rows instead
    of the memory map (same values; for tables larger than memory); the caller closes it.
    `sparse_below` > 0 (CPU, rows from the memory map): a batch with at most this fraction
    of non-zeros comes as a CSR tensor (the same values), gathered without a dense copy;
    from a CSR copy of the whole table when it is that sparse and the copy fits
    `sparse_cache` bytes (None: no bound).
    """

    def __init__(self, sampler: OneHopSampler, table: np.ndarray, seeds: np.ndarray,
                 batch_size: int, epoch: int = 0, start_step: int = 0,
                 device: str | torch.device = "cpu", prefetch: int = 2,
                 rows: "RowReader | None" = None, sparse_below: float = 0.0,
                 sparse_cache: int | None = None):
        if table.ndim != 2 or table.shape[0] != sampler.num_nodes:
            raise ValueError(f"table must be [{sampler.num_nodes}, F], got {table.shape}")
        if table.dtype not in (np.float32, np.float16):
            raise ValueError(f"table must be float32 or float16, got {table.dtype}")
        self.sampler, self.table, self.rows = sampler, table, None
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.epoch, self.start_step = int(epoch), int(start_step)
        self.device = torch.device(device)
        self.prefetch = max(0, int(prefetch))
        self._cuda = self.device.type == "cuda"
        # host buffers: float16 tables stay float16 up to a CUDA device (half the transfer),
        # become float32 while gathering otherwise
        half = table.dtype == np.float16 and self._cuda
        self._hdtype = torch.float16 if half else torch.float32
        self._slots = [_Slot() for _ in range(self.prefetch + _HELD + 1)]
        self._cap = sampler.max_rows(self.batch_size)
        self.sparse_below = 0.0 if self._cuda else max(0.0, float(sparse_below))
        self._table_csr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._table_csr_tried = False
        self.sparse_cache = sparse_cache
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self.read_from(rows)

    def read_from(self, rows: "RowReader | None") -> None:
        """Serve the rows from `rows` (None: the memory map) from the next iteration on."""
        t = self.table
        if rows is not None and (rows.num_rows, rows.width, rows.dtype) != \
                (t.shape[0], t.shape[1], t.dtype):
            raise ValueError("the row reader does not read this table")
        self.rows = rows

    def __len__(self) -> int:
        return max(0, len(self.sampler.epoch_batches(self.seeds, self.batch_size, self.epoch))
                   - self.start_step)

    def __iter__(self) -> Iterator[TensorBatch]:
        return self.iter_epoch(self.epoch, self.start_step)

    # ------------------------------------------------------------------ producer side
    def _fill(self, b: Batch, slot: _Slot) -> None:
        if slot.event is not None:
            slot.event.synchronize()           # the previous device copy from it is done
            slot.event = None
        n = b.nodes.size
        slot.nnz = -1
        if self.sparse_below > 0 and self.rows is None:
            width = int(self.table.shape[1])
            cap = int(self.sparse_below * n * width)
            most = int(self.sparse_below * self._cap * width)
            if not self._table_csr_tried:
                self._table_csr_tried = True
                self._table_csr = table_csr(self.table, self.sparse_below, self.sparse_cache)
            if self._table_csr is None:
                slot.ensure_csr(n, cap, self._cap, most)
                slot.nnz = gather_csr(self.table, b.nodes, cap, *slot.csr())
            else:
                crow = self._table_csr[0]
                nnz = int((crow[b.nodes + 1] - crow[b.nodes]).sum())
                if nnz <= cap:                 # the test gather_csr makes
                    slot.ensure_csr(n, nnz, self._cap, most)
                    _csr_rows(*self._table_csr, b.nodes, *slot.csr())
                    slot.nnz = nnz
            if slot.nnz >= 0:
                return
        slot.ensure(n, self._cap, self.table.shape[1], self._hdtype, self._cuda)
        if self.rows is not None:
            self.rows.gather(b.nodes, slot.host.numpy())
        else:
            gather_rows(self.table, b.nodes, slot.host.numpy())

    def host_nbytes(self) -> int:
        """Bytes of the ring of host buffers once grown to the sampler's row bound."""
        item = 2 if self._hdtype == torch.float16 else 4
        return len(self._slots) * self._cap * int(self.table.shape[1]) * item

    def _produce(self, batches: list[np.ndarray], epoch: int, start: int,
                 out: queue.Queue, free: queue.Queue, stop: threading.Event) -> None:
        try:
            for step in range(start, len(batches)):
                b = self.sampler.sample(batches[step], epoch, step)
                slot = _get(free, stop)
                if slot is None:
                    return
                self._fill(b, self._slots[slot])
                if not _put(out, (b, slot), stop):
                    return
            _put(out, _END, stop)
        except BaseException as e:             # re-raised in the consumer
            _put(out, e, stop)

    # ------------------------------------------------------------------ consumer side
    def _tensors(self, b: Batch, slot: _Slot) -> TensorBatch:
        n, dev, nb = b.nodes.size, self.device, self._cuda
        if self._cuda:
            x = slot.host[:n].to(dev, non_blocking=True)
            slot.event = torch.cuda.Event()
            slot.event.record()
            x = x.float()
        elif slot.nnz >= 0:
            x = torch.sparse_csr_tensor(slot.crow[:n + 1], slot.col[:slot.nnz],
                                        slot.val[:slot.nnz], (n, int(self.table.shape[1])),
                                        check_invariants=False)
        else:
            x = slot.host[:n]
        ei = torch.from_numpy(np.stack([b.conv_src, b.conv_dst]))
        return TensorBatch(
            x=x, conv_edge_index=ei.to(dev, non_blocking=nb),
            prop_src=torch.from_numpy(b.prop_src).to(dev, non_blocking=nb),
            prop_dst=torch.from_numpy(b.prop_dst).to(dev, non_blocking=nb),
            prop_weight=torch.from_numpy(b.prop_weight).to(dev, non_blocking=nb),
            num_targets=b.num_targets, num_seeds=b.num_seeds, seeds=b.seeds,
            epoch=b.epoch, step=b.step)

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[TensorBatch]:
        """Batches of `epoch` from `start_step` (resume); reuses this loader's buffers."""
        self.close()                           # one live iteration per loader
        batches = self.sampler.epoch_batches(self.seeds, self.batch_size, epoch)
        if self.prefetch == 0:
            return self._iter_sync(batches, epoch, start_step)
        return self._iter_async(batches, epoch, start_step)

    def _iter_sync(self, batches: list[np.ndarray], epoch: int,
                   start: int) -> Iterator[TensorBatch]:
        for step in range(start, len(batches)):
            b = self.sampler.sample(batches[step], epoch, step)
            slot = self._slots[step % len(self._slots)]
            self._fill(b, slot)
            yield self._tensors(b, slot)

    def _iter_async(self, batches: list[np.ndarray], epoch: int,
                    start: int) -> Iterator[TensorBatch]:
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        free: queue.Queue = queue.Queue()
        for i in range(len(self._slots)):
            free.put(i)
        stop = threading.Event()
        th = threading.Thread(target=self._produce, args=(batches, epoch, start, out, free, stop),
                              name="lrgi-batch-prefetch", daemon=True)
        self._stop, self._thread = stop, th
        th.start()
        held: list[int] = []
        try:
            while True:
                item = out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                b, slot = item
                tb = self._tensors(b, self._slots[slot])
                held.append(slot)
                if len(held) > _HELD:
                    free.put(held.pop(0))
                yield tb
        finally:
            self._shutdown(stop, th, out)

    def _shutdown(self, stop: threading.Event, th: threading.Thread, out: queue.Queue) -> None:
        stop.set()
        while th.is_alive():
            try:
                out.get(timeout=0.05)          # unblock a producer waiting on a full queue
            except queue.Empty:
                pass
            th.join(timeout=0.05)
        if self._thread is th:
            self._stop, self._thread = None, None

    def close(self) -> None:
        """Stop a running prefetch thread (also done when an iteration ends or is dropped)."""
        stop, th = self._stop, self._thread
        if stop is not None and th is not None:
            stop.set()
            th.join()
            self._stop, self._thread = None, None

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(q: queue.Queue, stop: threading.Event):
    while not stop.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            pass
    return None
