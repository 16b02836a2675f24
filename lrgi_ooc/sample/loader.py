"""Batches as tensors: sample, gather input rows, prefetch in the background, copy to device.

Why a thread and not DataLoader workers: numba kernels (sampling, gathering) and torch copies
release the GIL, so one background thread overlaps them with the training step without
pickling memory maps into worker processes (which also fail inside daemonic Dask workers).

Memory stays flat across epochs: host buffers live in a fixed ring of slots that is
allocated once (grown only up to the sampler's row bound) and reused for every batch.
A yielded batch stays valid until the batch after the next one is requested.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from numba import njit

from lrgi_ooc.sample.onehop import Batch, OneHopSampler

_END = object()
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_HELD = 2                      # batches the consumer may hold before their slot is reused


@dataclass
class TensorBatch:
    x: torch.Tensor                 # float32 [n, F] on device, local row order
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

    def ensure(self, rows: int, cap: int, feat: int, dtype: torch.dtype, pin: bool) -> None:
        if self.host is None or self.host.shape[0] < rows:
            size = min(cap, max(rows, int(rows * 1.25)))
            self.host = None
            self.host = torch.empty((size, feat), dtype=dtype, pin_memory=pin)


class BatchLoader:
    """Iterates the batches of one epoch as `TensorBatch`es (see `iter_epoch` for others).

    prefetch = 0 runs everything in the calling thread (same batches, no thread).
    """

    def __init__(self, sampler: OneHopSampler, table: np.ndarray, seeds: np.ndarray,
                 batch_size: int, epoch: int = 0, start_step: int = 0,
                 device: str | torch.device = "cpu", prefetch: int = 2):
        if table.ndim != 2 or table.shape[0] != sampler.num_nodes:
            raise ValueError(f"table must be [{sampler.num_nodes}, F], got {table.shape}")
        if table.dtype not in (np.float32, np.float16):
            raise ValueError(f"table must be float32 or float16, got {table.dtype}")
        self.sampler, self.table = sampler, table
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
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

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
        slot.ensure(n, self._cap, self.table.shape[1], self._hdtype, self._cuda)
        gather_rows(self.table, b.nodes, slot.host.numpy())

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


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False
