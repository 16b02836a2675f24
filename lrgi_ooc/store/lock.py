"""One writer per store: every command that writes a store holds its lock file, so that two
writers never interleave their chunks and stage records (docs/reliability.md).

The lock is an exclusive `flock` on `layout.lock_path(store)`, taken without waiting: a second
writer is refused at once with one line naming the holder (pid, host, command), which the
file records. The kernel drops a flock when its process dies, so the file a killed writer
left behind is simply taken over. Readers take no lock. Within a process the lock is
re-entrant for the thread holding it (`layer` = train + embed, `run` = every stage); Dask
worker tasks write chunks on behalf of the client that holds it and never take it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.store.layout import lock_path, pid_alive

# Test-only: a directory; the process that takes a lock creates DIR/held, then waits (up to
# HOLD_LIMIT_S) until DIR/release exists, so tests can run a second command while it holds.
HOLD_ENV = "LRGI_OOC_TEST_HOLD_LOCK"
HOLD_LIMIT_S = 120.0

_held: dict[Path, int] = {}          # lock file -> ident of the thread holding it
_guard = threading.Lock()
F = TypeVar("F", bound=Callable[..., Any])


def process_command() -> str:
    """This process's command line as the user typed it (`lrgi-ooc ...` for the CLI)."""
    argv = sys.argv or [""]
    if Path(argv[0]).name == "lrgi-ooc" or argv[0].endswith(os.path.join("lrgi_ooc",
                                                                         "__main__.py")):
        return shlex.join(["lrgi-ooc", *argv[1:]])
    return shlex.join([Path(sys.executable).name, *argv])


@contextlib.contextmanager
def writer_lock(store: str | os.PathLike, operation: str, *,
                create: bool = False) -> Iterator[None]:
    """Hold `store`'s writer lock for the block; `operation` (e.g. "train layer 1") is
    recorded beside the command line. `create`: the store may not exist yet (its parent
    directory is made); otherwise a missing store is an InputError."""
    path = lock_path(store)
    me = threading.get_ident()
    with _guard:
        owner = _held.get(path)
    if owner == me:                  # re-entered: the outer block holds it
        yield
        return
    if owner is not None:
        raise InputError(f"{store}: another thread of this process (pid {os.getpid()}) is "
                         "writing this store; one writer at a time")
    fd = _acquire(Path(store), path, operation, create)
    with _guard:
        _held[path] = me
    try:
        _test_hold()
        yield
    finally:
        with _guard:
            del _held[path]
        with contextlib.suppress(OSError):
            os.unlink(path)          # while still held: a waiter that opened it retries
        os.close(fd)


def writes_store(store_param: str, operation: str, *, create: bool = False) -> Callable[[F], F]:
    """Decorator: the call holds the writer lock of its argument `store_param`; `operation`
    is formatted with the call's arguments (`"train layer {layer}"`)."""
    def wrap(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            with writer_lock(bound.arguments[store_param],
                             operation.format(**bound.arguments), create=create):
                return fn(*args, **kwargs)
        return locked  # type: ignore[return-value]
    return wrap


def _acquire(store: Path, path: Path, operation: str, create: bool) -> int:
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not store.exists():
        raise InputError(f"{store}: store does not exist")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise InputError(f"{path}: cannot create the store's lock file ({e.strerror}); "
                             "the directory holding the store must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(_refusal(store, path)) from None
        except OSError as e:
            os.close(fd)
            raise InputError(f"{path}: cannot lock the store ({e.strerror}); its filesystem "
                             "must support flock") from None
        # the holder unlinks the file before it lets go: a lock on an unlinked file is void
        try:
            st, now = os.fstat(fd), os.stat(path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": process_command(),
              "operation": operation,
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)              # a stale record of a dead writer goes
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd


def holder(path: Path, tries: int = 50) -> dict[str, Any]:
    """The lock file's record ({} when unreadable: the holder may be writing it just now)."""
    for _ in range(tries):
        try:
            doc = json.loads(path.read_text())
            if isinstance(doc, dict) and "pid" in doc:
                return doc
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return {}


def _refusal(store: Path, path: Path) -> str:
    h = holder(path)
    if not h:
        return (f"{store}: another process is writing this store (lock {path}); wait for it "
                "to finish or stop it")
    pid, host = h.get("pid"), h.get("host", "?")
    gone = (" (that pid has exited: a process it started still holds the lock)"
            if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)
            else "")
    msg = (f"{store}: another writer holds this store: pid {pid} on {host}, "
           f"`{h.get('command', '?')}` ({h.get('operation', '?')}, since "
           f"{h.get('started', '?')}){gone}; wait for it to finish or stop it (lock {path})")
    return " ".join(msg.splitlines())         # one line, whatever the recorded argv held


def _test_hold() -> None:
    d = os.environ.get(HOLD_ENV)
    if not d:
        return
    Path(d, "held").write_text(str(os.getpid()))
    deadline = time.monotonic() + HOLD_LIMIT_S
    while not Path(d, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
