"""Running a pass's tasks in-process or on Dask (`--workers N` / `--scheduler ADDRESS`).

A pass is a list of task arguments plus one module-level function; `run_tasks` runs them here
(client None) or on a cluster, with one progress bar over completed tasks. Tasks take only
small arguments (paths, chunk ids): what they need from the store is loaded on the worker and
kept in a per-process cache (`worker_cached`), so weights and memory maps are opened once per
worker, not shipped with every task. A task owns whole output chunks, so a task that Dask
re-runs after a worker died simply rewrites its chunks (atomic tmp + rename).
docs/distributed.md describes setting up a cluster.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

from lrgi_ooc.base.errors import InputError

GPU_RESOURCE = "GPU"
CONNECT_TIMEOUT = "10s"
WORKER_WAIT_SECONDS = 20.0


# ------------------------------------------------------------------ options
def check_options(workers: int | None, scheduler: str | None, source: str = "") -> None:
    pre = f"{source} " if source else ""
    if workers is not None and scheduler:
        raise InputError(f"{pre}--workers / --scheduler: give one, not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise InputError(f"{pre}--workers: must be a positive integer, got {workers!r}")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise InputError(f"{pre}--scheduler: must be an address like tcp://host:8786, "
                         f"got {scheduler!r}")


# ------------------------------------------------------------------ client lifecycle
@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None, gpu: bool = False,
                preload: Sequence[str] = ()) -> Iterator[Any]:
    """A `distributed.Client` (in-process: None when neither option is given).

    The cluster starts (or the connection is made) in a background thread while the caller
    goes on opening inputs and creating arrays; the yielded handle waits for it on first use
    and then behaves as the client. `workers`: a LocalCluster of that many processes with one
    thread each (call this only from code that runs under `if __name__ == "__main__"`, e.g.
    the CLI); `preload`: modules its workers import as they start (the tasks' imports, paid
    while the client works instead of by each worker's first task). `gpu`: local workers
    advertise the GPU resource when this machine has CUDA."""
    check_options(workers, scheduler)
    if workers is None and not scheduler:
        yield None
        return
    handle = _Connecting(workers, scheduler, gpu, tuple(preload))
    try:
        yield handle
    except BaseException:
        handle.close(report=False)
        raise
    handle.close(report=True)


class _Connecting:
    """A client being connected in a background thread; attribute access waits for it."""

    def __init__(self, workers: int | None, scheduler: str | None, gpu: bool,
                 preload: tuple[str, ...]):
        self._done: dict[str, Any] = {}
        self._local = not scheduler
        self._thread = threading.Thread(target=self._connect, name="dask-connect", daemon=True,
                                        args=(workers, scheduler, gpu, preload))
        self._thread.start()

    def _connect(self, workers: int | None, scheduler: str | None, gpu: bool,
                 preload: tuple[str, ...]) -> None:
        from distributed import Client, LocalCluster
        try:
            if scheduler:
                try:
                    client = Client(scheduler, timeout=CONNECT_TIMEOUT)
                except (OSError, TimeoutError, ValueError) as e:
                    raise InputError(f"--scheduler {scheduler}: cannot connect ({e})") from None
                self._done["client"] = client
            else:
                resources = {GPU_RESOURCE: 1} if gpu and _has_cuda() else None
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=logging.ERROR,
                                       resources=resources, preload=list(preload))
                self._done["cluster"] = cluster
                client = self._done["client"] = Client(cluster)
            _wait_for_workers(client, scheduler or "the local cluster")
            link = dashboard_link(client)
            n = len(client.scheduler_info(n_workers=-1)["workers"])
            print(f"dask: {n} worker(s) at {client.scheduler.address}"
                  + (f", dashboard {link}" if link else ""), flush=True)
        except BaseException as e:        # raised in the caller's thread, on first use
            self._done["error"] = e

    def client(self) -> Any:
        self._thread.join()
        if "error" in self._done:
            raise self._done["error"]
        return self._done["client"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client(), name)

    def close(self, report: bool) -> None:
        """Close what was started; `report`: raise a connection error nobody has seen yet
        (a command that needed no task must still fail on a bad --scheduler). A command that
        failed does not wait for a remote connection (only a local cluster must be stopped)."""
        self._thread.join(None if report or self._local else 0)
        for key in ("client", "cluster"):
            if key in self._done:
                self._done[key].close()
        if report and "error" in self._done:
            raise self._done["error"]


def _has_cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _wait_for_workers(client: Any, where: str) -> None:
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
    except TimeoutError:
        raise InputError(f"--scheduler {where}: no worker connected within "
                         f"{WORKER_WAIT_SECONDS:.0f} s") from None


def dashboard_link(client: Any) -> str | None:
    """The dashboard's address, or None when the scheduler serves none (e.g. no bokeh)."""
    info = client.scheduler_info(n_workers=0)
    if "dashboard" not in info.get("services", {}):
        return None
    return client.dashboard_link


def require_resource(client: Any, name: str = GPU_RESOURCE, option: str = "--gpu-task") -> None:
    """Fail at once (exit 2) when no worker advertises `name`: Dask would wait forever."""
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if not any(w.get("resources", {}).get(name, 0) >= 1 for w in workers):
        raise InputError(f"{option}: no worker of the cluster advertises the resource {name} "
                         f"(start one with `dask worker ADDRESS --resources {name}=1`)")


def run_on_resource(client: Any, fn: Callable[..., Any], *args: Any,
                    name: str = GPU_RESOURCE) -> Any:
    """Run fn(*args) as one task on a worker holding `name` and return its result."""
    require_resource(client, name)
    return client.submit(fn, *args, resources={name: 1}, pure=False).result()


# ------------------------------------------------------------------ running a pass
def run_tasks(client: Any, fn: Callable[..., Any], tasks: Sequence[tuple], desc: str,
              unit: str = "task", weights: Sequence[int] | None = None, total: int | None = None,
              initial: int = 0, futures: list[Any] | None = None) -> list[Any]:
    """fn(*t) for every t in `tasks`, in-process (client None) or on Dask; results in order.

    One bar over completed tasks (advanced by `weights[i]`, default 1). Dask re-runs the tasks
    of a worker that died; the first task error cancels the rest and is raised here.
    `futures`: the tasks were already submitted (`submit_tasks`); wait for those."""
    from lrgi_ooc.base.progress import bar
    weights = list(weights) if weights is not None else [1] * len(tasks)
    total = total if total is not None else initial + sum(weights)
    results: list[Any] = [None] * len(tasks)
    with bar(total, desc, unit=unit, initial=initial) as pb:
        if client is None:
            for i, t in enumerate(tasks):
                results[i] = fn(*t)
                pb.update(weights[i])
            return results
        from distributed import as_completed
        if futures is None:
            futures = submit_tasks(client, fn, tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for f in as_completed(futures, loop=client.loop):   # not Dask's default client
                i = index[f.key]
                results[i] = f.result()
                pb.update(weights[i])
        finally:
            client.cancel([f for f in futures if not f.done()])
    return results


def submit_tasks(client: Any, fn: Callable[..., Any], tasks: Sequence[tuple],
                 priority: int = 0) -> list[Any]:
    """Submit fn(*t) for every t now; collect with `run_tasks(..., futures=...)`. A negative
    priority makes independent tasks fill the workers' idle moments (while the client plans
    the next pass, the tail of a pass) without delaying tasks submitted later. One
    `client.map` call: the scheduler receives the pass as one graph update, not one per task
    (each costs it a few ms of CPU, which a busy worker shares on a small machine)."""
    if not tasks or not all(tasks):
        return [client.submit(fn, *t, pure=False, priority=priority) for t in tasks]
    return client.map(fn, *(list(col) for col in zip(*tasks)), pure=False, priority=priority)


def drain_tasks(futures: Sequence[Any]) -> None:
    """Wait for submitted tasks, ignoring their results, when a command fails: Dask cannot
    stop a running task, so they must end before the caller removes what they write into."""
    for f in futures:
        try:
            f.exception()
        except Exception:                   # cancelled, or the cluster itself is gone
            pass


# ------------------------------------------------------------------ inside workers
_CACHE: "OrderedDict[tuple, Any]" = OrderedDict()
CACHE_ENTRIES = 2
_THREADS_SET: set[str] = set()


def worker_cached(key: tuple, make: Callable[[], Any], keep: int = CACHE_ENTRIES) -> Any:
    """make() once per process and key; at most `keep` entries live (oldest dropped)."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = make()
    _CACHE[key] = value
    while len(_CACHE) > keep:
        _CACHE.popitem(last=False)
    return value


def clear_cache() -> None:
    _CACHE.clear()


def file_stamp(path: str | os.PathLike) -> tuple[int, int]:
    """(inode, mtime_ns): changes when a file or directory is replaced or rewritten."""
    s = os.stat(path)
    return s.st_ino, s.st_mtime_ns


def worker_threads() -> int | None:
    """Threads of the Dask worker running this code, or None outside a worker."""
    try:
        from distributed import get_worker
        w = get_worker()
    except (ImportError, ValueError):
        return None
    state = getattr(w, "state", w)
    return int(getattr(state, "nthreads", None) or getattr(w, "nthreads", 1))


def task_threads() -> int:
    """Compute threads per task (LRGI_OOC_TASK_THREADS, default 1)."""
    raw = os.environ.get("LRGI_OOC_TASK_THREADS", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise InputError(f"LRGI_OOC_TASK_THREADS: not an integer: '{raw}'") from None


def set_torch_threads() -> None:
    """In a Dask worker, set torch's thread count explicitly: LRGI_OOC_TASK_THREADS, else 1.

    Each worker thread runs one task at a time, so one compute thread per task keeps
    `--nthreads` cores busy without oversubscription. (The nanny sets OMP_NUM_THREADS=1, which
    torch would follow silently.) Outside a worker, torch is left alone."""
    if "torch" in _THREADS_SET or worker_threads() is None:
        return
    import torch
    torch.set_num_threads(task_threads())
    _THREADS_SET.add("torch")


def set_numba_threads() -> None:
    """The same for numba's parallel kernels (which default to one thread per core)."""
    if "numba" in _THREADS_SET or worker_threads() is None:
        return
    import numba
    numba.set_num_threads(min(task_threads(), numba.config.NUMBA_NUM_THREADS))
    _THREADS_SET.add("numba")


def set_arrow_threads() -> None:
    """The same for pyarrow's decoding pool (one thread per core by default): a 1-thread
    worker that decodes Parquet on every core would oversubscribe its neighbours."""
    if "arrow" in _THREADS_SET or worker_threads() is None:
        return
    import pyarrow
    threads = task_threads()
    pyarrow.set_cpu_count(threads)
    pyarrow.set_io_thread_count(threads)
    _THREADS_SET.add("arrow")
