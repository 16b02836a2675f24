"""`preprocess` on Dask: csrbuild's passes as tasks, each owning its files and output chunks.

Everything runs on workers, with the same numba kernels as the in-process build (`csrbuild`),
so the CSR is byte-identical:
1. spill: one task per input part (Parquet row groups or an .npy item range, read by the
   worker itself from the shared filesystem; inputs that can only be streamed, such as CSV,
   are read by the client and shipped in segments of SEGMENT_EDGES edges): copy the pairs to
   `seg{j}` in the work dir, count in-edges per id block, count self loops;
2. route: one task per segment: split its pairs into one file per destination range
   (`r{k}-s{j}`; ranges planned from the summed histogram, at least 4 per worker);
3. build: one task per range: counting sort, row sort and dedup (`_Build._range`) into
   `idx{k}` / `ptr{k}`;
4. assemble: one task per output chunk of `csr/indptr` and of `csr/indices`: reads its slice
   of the concatenated ranges and writes that chunk whole (`GraphStore.write_chunk`).
Every file is written to a temporary name and renamed, and no task deletes an input another
task may need, so a task that Dask re-runs after a worker died produces the same files; the
client deletes a pass's inputs once the whole pass has returned (`seg*` after route, `r*`
after build), so the work dir holds about two passes' files at a time.
Memory per task: spill the decoded block (8 B per edge with 32-bit ids, 16 with 64-bit)
plus a reused buffer of 2^20 pairs (8 to 16 MB); route and build the csrbuild budget
(`--memory-limit`, per task); assemble one output chunk (about 32 MB).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lrgi_ooc.cluster import tasks as cluster
from lrgi_ooc.store import layout as st
from lrgi_ooc.csr.build import _PIECE, CSRResult, _Build, _kernels, _read_into, _return_freed_memory
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.base.progress import bar

SEGMENT_EDGES = 1 << 21
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class _Spec:
    """What every task needs: sizes and flags of the build, and where its files live."""
    workdir: str
    prefix: str
    num_nodes: int
    source: str
    undirected: bool
    drop_loops: bool
    dedup: bool
    memory_limit: int

    def build(self) -> _Build:
        b = _Build(None, self.num_nodes, self.source, self.undirected, self.drop_loops,
                   self.dedup, self.memory_limit, Path(self.workdir))
        b.prefix = self.prefix
        return b

    def file(self, name: str) -> Path:
        return Path(self.workdir) / f"{self.prefix}-{name}"


def _write_atomic(path: Path, *arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        for a in arrays:
            f.write(memoryview(np.ascontiguousarray(a).reshape(-1)))
    os.replace(tmp, path)


def _read_slice(path: Path, dtype: np.dtype, start: int, out: np.ndarray) -> None:
    """Items [start, start + len(out)) of a raw file into `out`."""
    with open(path, "rb") as f:
        f.seek(start * dtype.itemsize)
        _read_into(f, out)


# ------------------------------------------------------------------ tasks
def _spill_task(spec: _Spec, j: int, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Pass 1 on one segment: (histogram, self loops, edges)."""
    cluster.set_numba_threads()
    b = spec.build()
    pairs = np.empty((len(s), 2), b.id_dt)
    loops = _kernels()._scan(s, d, pairs, b.hist, b.shift, b.und, b.drop)
    _write_atomic(spec.file(f"seg{j}"), pairs)
    return b.hist, int(loops), len(s)


def _spill_part_task(spec: _Spec, j: int, part: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
                     ) -> tuple[np.ndarray, int, int]:
    """Pass 1 on one input part, read here: (histogram, self loops, edges)."""
    cluster.set_numba_threads()
    if getattr(part, "decoder", None) == "pyarrow":
        cluster.set_arrow_threads()
    b = spec.build()
    loops = edges = 0
    scan = _kernels()._scan
    path = spec.file(f"seg{j}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buf = np.empty((_PIECE, 2), b.id_dt)       # reused: fresh memory is slow to touch here
    with open(tmp, "wb") as f:
        for s, d in part():
            for a in range(0, len(s), _PIECE):
                pairs = buf[:min(_PIECE, len(s) - a)]
                loops += int(scan(s[a:a + len(pairs)], d[a:a + len(pairs)], pairs, b.hist,
                                  b.shift, b.und, b.drop))
                f.write(memoryview(pairs.reshape(-1)))
            edges += len(s)
    os.replace(tmp, path)
    return b.hist, loops, edges


def _route_task(spec: _Spec, j: int, bounds: np.ndarray) -> None:
    """Pass 2 on one segment: its pairs (and reverses) into one file per range."""
    cluster.set_numba_threads()
    b = spec.build()
    nr = len(bounds) - 1
    nb = -(-b.num_nodes // (1 << b.shift))
    block_bucket = (np.searchsorted(bounds, np.arange(nb, dtype=np.int64) << b.shift,
                                    side="right") - 1).astype(np.int32)
    seg = spec.file(f"seg{j}")
    m = seg.stat().st_size // (2 * b.id_dt.itemsize)
    rows = int(max(4096, min(_PIECE, b.budget // (8 * b.id_dt.itemsize))))
    buf = np.empty((rows, 2), b.id_dt)
    out = np.empty((rows * (2 if b.und else 1), 2), b.id_dt)
    bnd = np.zeros(nr + 1, np.int64)
    handles: dict[int, Any] = {}
    route = _kernels()._route
    try:
        with open(seg, "rb") as f:
            for start in range(0, m, rows):
                k = min(rows, m - start)
                route(_read_into(f, buf[:k]), b.shift, block_bucket, b.und, b.drop, bnd, out)
                for r in np.flatnonzero(np.diff(bnd)):
                    if r not in handles:
                        p = spec.file(f"r{r}-s{j}")
                        handles[r] = (open(p.with_name(f".{p.name}.tmp-{os.getpid()}"), "wb"), p)
                    handles[r][0].write(memoryview(out[bnd[r]:bnd[r + 1]].reshape(-1)))
    finally:
        for h, _ in handles.values():
            h.close()
    for h, p in handles.values():
        os.replace(h.name, p)


def _build_task(spec: _Spec, k: int, lo: int, hi: int, hist: np.ndarray, segments: int) -> int:
    """Pass 3 on one range: sorted (and deduplicated) rows into idx{k} / ptr{k}."""
    cluster.set_numba_threads()
    b = spec.build()
    b.hist = hist

    def pieces() -> Iterator[np.ndarray]:      # inputs stay: a re-run task needs them
        for j in range(segments):
            yield from b._file_pieces(spec.file(f"r{k}-s{j}"), unlink=False)

    class _NoBar:
        def update(self, n: int) -> None:
            pass
    out, rows = b._range(lo, hi, pieces(), False, _NoBar())
    _write_atomic(spec.file(f"idx{k}"), out)
    _write_atomic(spec.file(f"ptr{k}"), rows)
    return len(out)


def _assemble_task(spec: _Spec, store_path: str, key: str, i: int, bounds: np.ndarray,
                   offsets: np.ndarray) -> None:
    """Pass 4: chunk i of csr/indptr or csr/indices, cut from the ranges' files."""
    store = st.GraphStore(store_path)
    info = store.info(key)
    s, e = info.chunk_bounds(i)
    out = np.zeros(e - s, info.dtype)
    if key == st.INDICES:
        pos = s
        k = int(np.searchsorted(offsets, s, side="right")) - 1
        while pos < e:
            end = min(e, int(offsets[k + 1]))
            if end > pos:
                _read_slice(spec.file(f"idx{k}"), info.dtype, pos - int(offsets[k]),
                            out[pos - s:end - s])
                pos = end
            k += 1
    else:                       # indptr[g] = end of row g - 1: offset of its range + local end
        g = max(s, 1)
        while g < e:
            v = g - 1
            k = int(np.searchsorted(bounds, v, side="right")) - 1
            take = min(e, int(bounds[k + 1]) + 1) - g
            part = out[g - s:g - s + take]
            _read_slice(spec.file(f"ptr{k}"), np.dtype(np.int64), v - int(bounds[k]), part)
            part += offsets[k]
            g += take
    store.write_chunk(key, i, out)


# ------------------------------------------------------------------ the client's side
def build_csr_dask(client: Any, store: st.GraphStore,
                   chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
                   num_nodes: int, *, source: str, undirected: bool = False,
                   remove_self_loops: bool = True, remove_duplicates: bool = True,
                   memory_limit: int = 2 << 30, workdir: Path,
                   parts: list[Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]] | None = None
                   ) -> CSRResult:
    """`csrbuild.build_csr` on a Dask cluster: the same arrays, byte for byte.

    `chunks()` must yield validated int64 ids (`EdgeInput.chunks(n)`); `parts`, when given,
    are the same stream cut into pieces the workers read themselves (`EdgeInput.parts(n)`).
    `workdir`, the store and the inputs must be on a filesystem every worker sees."""
    _return_freed_memory()
    workdir = Path(workdir).resolve()
    b = _Build(store, num_nodes, source, undirected, remove_self_loops, remove_duplicates,
               memory_limit, workdir)
    b.threads = cluster.task_threads()        # the plan's budget is a worker's, not ours
    spec = _Spec(str(workdir), b.prefix, int(num_nodes), source, b.und, b.drop, b.dedup,
                 int(memory_limit))
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    try:
        segments = _spill(client, spec, b, chunks, 2 * workers, parts)
        bounds = b.plan(TASKS_PER_WORKER * workers)
        cluster.run_tasks(client, _route_task, [(spec, j, bounds) for j in range(segments)],
                          "split edges by range", unit="task")
        _remove(spec, "seg*")
        hist = client.scatter(b.hist, broadcast=True)
        ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        per = [int(b.hist[lo >> b.shift:-(-hi // (1 << b.shift))].sum()) for lo, hi in ranges]
        kept = cluster.run_tasks(client, _build_task,
                                 [(spec, k, lo, hi, hist, segments)
                                  for k, (lo, hi) in enumerate(ranges)],
                                 "build CSR", unit="edges", weights=per)
        _remove(spec, "r*-s*")
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        total = int(offsets[-1])
        store.create_array(st.INDPTR, (b.num_nodes + 1,), np.int64)
        store.create_array(st.INDICES, (total,), b.out_dt)
        path = str(store.path.resolve())
        tasks = [(spec, path, key, i, bounds, offsets) for key in (st.INDPTR, st.INDICES)
                 for i in range(store.info(key).num_chunks)]
        cluster.run_tasks(client, _assemble_task, tasks, "write CSR", unit="chunk")
    finally:
        _remove(spec, "*")
        b.cleanup()
    return CSRResult(b.num_nodes, total, b.m, b.loops if b.drop else 0, b.stored - total)


def _remove(spec: _Spec, pattern: str) -> None:
    """Delete a pass's input files (and stray temporaries) once every task of the pass has
    returned and its futures are released, so that Dask can no longer re-run one: freed early,
    their pages are dropped before the kernel writes them back, and the disk holds about two
    passes' files at a time rather than all of them."""
    wd = Path(spec.workdir)
    for p in [*wd.glob(f"{spec.prefix}-{pattern}"), *wd.glob(f".{spec.prefix}-{pattern}")]:
        p.unlink(missing_ok=True)


def _spill(client: Any, spec: _Spec, b: _Build,
           chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
           in_flight: int, parts: list | None = None) -> int:
    """Pass 1: spill tasks over the input's parts, or, for a stream, over segments the client
    ships (at most `in_flight` at once: bounded memory); their histograms are summed into `b`.
    Returns the number of segments."""
    from distributed import as_completed
    ac = as_completed(loop=client.loop)
    j = 0

    def collect(f) -> None:
        hist, loops, m = f.result()
        b.hist += hist
        b.loops += loops
        b.m += m
        pb.update(m)
    if parts is not None:
        for hist, loops, m in cluster.run_tasks(client, _spill_part_task,
                                                [(spec, j, p) for j, p in enumerate(parts)],
                                                "validate edges", unit="part"):
            b.hist += hist
            b.loops += loops
            b.m += m
        if b.m == 0:
            raise InputError(f"{spec.source}: the edge list is empty")
        return len(parts)
    with bar(None, "validate edges", unit="edges") as pb:
        for s, d in chunks():
            if len(s) != len(d):
                raise InputError(f"{spec.source}: source and destination columns differ "
                                 f"in length ({len(s)} vs {len(d)})")
            for a in range(0, len(s), SEGMENT_EDGES):
                ac.add(client.submit(_spill_task, spec, j, s[a:a + SEGMENT_EDGES],
                                     d[a:a + SEGMENT_EDGES], pure=False))
                j += 1
                while ac.count() >= in_flight:
                    collect(next(ac))
        for f in ac:
            collect(f)
    if b.m == 0:
        raise InputError(f"{spec.source}: the edge list is empty")
    return j
