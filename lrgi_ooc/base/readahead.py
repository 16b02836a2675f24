"""Read the next item of a stream on a thread while the caller works on this one.

Why: the remap's dictionary pass alternates reading and decoding a Parquet batch (Arrow
releases the GIL) with hashing it (numba, nogil); on its own each leaves a core idle. Errors
raised by the stream reach the caller unchanged, and a caller that stops early stops the
thread and closes the stream.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` unless `stop` is set first (False then): a producer thread never blocks
    on a consumer that has gone."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


def read_ahead(source: Iterable[T], depth: int = 1) -> Iterator[T]:
    """The items of `source`, with up to `depth` of them read ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        it = iter(source)
        try:
            for item in it:
                if not put(q, (True, item), stop):
                    return
            put(q, (True, _DONE), stop)
        except BaseException as e:        # handed to the caller, raised there
            put(q, (False, e), stop)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    th = threading.Thread(target=produce, name="read-ahead", daemon=True)
    th.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        th.join()
