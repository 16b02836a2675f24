"""Dask runs: embed (and preprocess) on a LocalCluster and on a real `dask scheduler` with two
`dask worker` processes give the in-process results; killed workers and clients are survived."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, cli_popen, cli_run
from graphs import make_store
from lrgi_ooc.cli.main import main
from lrgi_ooc.store.layout import GraphStore

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

DASK = Path(sys.executable).parent / "dask"
SMALL = ["--dim", "16", "--heads", "2", "--batch-size", "64", "--fanout", "4,3"]
N = 40000                      # 10 output chunks of 4096 rows: 10 tasks
CHUNK = ["--chunk-rows", "4096"]
EMB = "layers/1/embeddings"


# ------------------------------------------------------------------ fixtures
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_worker(address: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(DASK), "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
         *extra], stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=cli_env(),
        start_new_session=True)


def _wait_workers(address: str, n: int, timeout: float = 120) -> None:
    from distributed import Client
    with Client(address, timeout="60s") as c:
        c.wait_for_workers(n, timeout=timeout)


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    logs = tmp_path_factory.mktemp("dask-logs")
    address = f"tcp://127.0.0.1:{_free_port()}"
    sched = subprocess.Popen(
        [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
         "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=open(logs / "scheduler.log", "w"),
        env=cli_env(), start_new_session=True)
    workers = [_start_worker(address, logs / f"worker{i}.log") for i in range(2)]
    try:
        _wait_workers(address, 2)
        yield address, workers
    finally:
        for p in workers + [sched]:
            _stop(p)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with layer 1 trained, and its in-process table (chunks of 4096 rows)."""
    d = tmp_path_factory.mktemp("trained")
    s = make_store(d / "g.zarr", n=N, feat=8, avg_deg=4)
    assert main(["train", str(s.path), "--layer", "1", "--steps", "3", *SMALL]) == 0
    ref = copy_store(s.path, d / "ref.zarr")
    assert main(["embed", str(ref.path), "--layer", "1", *CHUNK]) == 0
    assert ref.info(EMB).num_chunks == 10
    return s.path, np.array(ref.mmap(EMB))


def copy_store(src: Path, dst: Path) -> GraphStore:
    shutil.copytree(src, dst)
    shutil.copytree(Path(str(src) + ".runs"), Path(str(dst) + ".runs"))
    return GraphStore(dst)


def worker_children(workers: list[subprocess.Popen]) -> list[psutil.Process]:
    """The worker processes the nannies spawned (the ones that run tasks)."""
    out = []
    for w in workers:
        for c in psutil.Process(w.pid).children(recursive=True):
            if "spawn_main" in " ".join(c.cmdline()):
                out.append(c)
    return out


def wait_chunks(store: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s = GraphStore(store)
        if s.has(EMB) and sum(s.chunk_written(EMB, i) for i in range(10)) >= count:
            return
        assert proc.poll() is None, "the run ended before the kill point"
        if time.monotonic() > deadline:
            pytest.fail("no chunk written: the run seems stuck")
        time.sleep(0.02)


def start_slow_embed(trained, address: str, tmp_path: Path, chunks: int):
    """A client process embedding a copy of the store; returns once `chunks` are written.
    Small edge pieces make each of the 10 tasks slow enough for a kill to land mid-pass."""
    src, ref = trained
    s = copy_store(src, tmp_path / "g.zarr")
    p = cli_popen(["embed", s.path, "--layer", "1", "--scheduler", address, *CHUNK,
                   "--max-edges", "64"])
    wait_chunks(s.path, chunks, p)
    return s, ref, p


# ------------------------------------------------------------------ embed
def test_embed_on_local_cluster_equals_in_process(trained, tmp_path):
    src, ref = trained
    s = copy_store(src, tmp_path / "g.zarr")
    r = cli_run(["embed", s.path, "--layer", "1", "--workers", "2", *CHUNK])
    assert r.returncode == 0, r.stderr
    assert "dask: 2 worker(s)" in r.stdout
    assert s.stage_complete("embed/1")
    np.testing.assert_allclose(np.asarray(s.mmap(EMB)), ref, rtol=0, atol=1e-6)


def test_embed_on_scheduler_equals_in_process_weights_cached_per_worker(trained, scheduler,
                                                                       tmp_path):
    from distributed import Client
    address, _ = scheduler
    src, ref = trained
    s = copy_store(src, tmp_path / "g.zarr")
    assert main(["embed", str(s.path), "--layer", "1", "--scheduler", address, *CHUNK]) == 0
    np.testing.assert_allclose(np.asarray(s.mmap(EMB)), ref, rtol=0, atol=1e-6)

    def cached_layers():
        import sys

        from lrgi_ooc.cluster import tasks as cluster
        return [k[1].layer for k in cluster._CACHE if k[0] == "embed"], "torch" in sys.modules
    with Client(address) as c:
        seen = c.run(cached_layers)
    # every worker that ran tasks loaded the layer once (one cache entry) and never imported
    # torch (embed reads block.npz)
    assert all(v == ([1], False) or v[0] == [] for v in seen.values()), seen
    assert sum(v[0] == [1] for v in seen.values()) >= 1


def test_worker_limits_pyarrow_threads_for_parquet_parts(monkeypatch, tmp_path):
    import pyarrow
    import pyarrow.parquet as pq

    from lrgi_ooc.cluster import tasks as cluster
    from lrgi_ooc.ingest.edges import open_edges
    pq.write_table(pyarrow.table({"src": np.arange(10), "dst": np.arange(10)[::-1]}),
                   tmp_path / "e.parquet")
    assert [p.decoder for p in open_edges(tmp_path / "e.parquet").parts(None)] == ["pyarrow"]
    before = pyarrow.cpu_count()
    monkeypatch.setattr(cluster, "worker_threads", lambda: 1)
    monkeypatch.setattr(cluster, "_THREADS_SET", set())
    monkeypatch.setenv("LRGI_OOC_TASK_THREADS", "1")
    try:
        cluster.set_arrow_threads()
        assert pyarrow.cpu_count() == 1
    finally:
        pyarrow.set_cpu_count(before)


def test_worker_killed_mid_embed_gives_identical_table(trained, scheduler, tmp_path):
    address, workers = scheduler
    s, ref, p = start_slow_embed(trained, address, tmp_path, 1)
    victims = worker_children(workers)
    assert victims, "no worker process found"
    victims[0].send_signal(signal.SIGKILL)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert GraphStore(s.path).stage_complete("embed/1")
    np.testing.assert_allclose(np.asarray(GraphStore(s.path).mmap(EMB)), ref, rtol=0, atol=1e-6)
    _wait_workers(address, 2)          # the nanny restarted it: later tests see two workers


def test_client_killed_then_rerun_resumes_with_missing_chunks(trained, scheduler, tmp_path):
    address, _ = scheduler
    s, ref, p = start_slow_embed(trained, address, tmp_path, 2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = GraphStore(s.path)
    assert not s.stage_complete("embed/1")
    before = {i: os.stat(s.info(EMB).chunk_path(i)).st_ino
              for i in range(10) if s.chunk_written(EMB, i)}
    assert main(["embed", str(s.path), "--layer", "1", "--scheduler", address, *CHUNK]) == 0
    # the chunks written before the kill were kept, not recomputed
    assert {i: os.stat(s.info(EMB).chunk_path(i)).st_ino for i in before} == before
    np.testing.assert_allclose(np.asarray(s.mmap(EMB)), ref, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ preprocess
@pytest.fixture(scope="module")
def edge_inputs(tmp_path_factory):
    """Random edges with duplicates and self loops, and float32 features, as .npy files."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(3)
    n, e = 30000, 250000
    ei = rng.integers(0, n, (2, e))
    ei[:, :2000] = ei[:, 2000:4000]          # duplicates
    ei[1, 10:60] = ei[0, 10:60]              # self loops
    np.save(d / "e.npy", ei)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"src": ei[0], "dst": ei[1]}), d / "e.parquet",
                   row_group_size=20000)
    np.savetxt(d / "e.csv", ei.T, fmt="%d", delimiter=",", header="src,dst", comments="")
    np.save(d / "x.npy", rng.standard_normal((n, 5)).astype(np.float32))
    return {fmt: ["--edges", str(d / f"e.{fmt}"), "--features", str(d / "x.npy"),
                  "--undirected", "--memory-limit", "1MB"] for fmt in ("npy", "parquet", "csv")}


def _small_chunks(monkeypatch) -> None:
    # chunks of 4096 rows everywhere: many output chunks (tasks), the grid read by workers
    import lrgi_ooc.store.layout as st
    monkeypatch.setattr(st, "TARGET_CHUNK_BYTES", 1)


def assert_same_store(a: Path, b: Path) -> None:
    sa, sb = GraphStore(a), GraphStore(b)
    for key in ("csr/indptr", "csr/indices", "node/features"):
        ia, ib = sa.info(key), sb.info(key)
        assert (ia.shape, ia.dtype, ia.chunk_rows) == (ib.shape, ib.dtype, ib.chunk_rows)
        for i in range(ia.num_chunks):
            assert ia.chunk_path(i).read_bytes() == ib.chunk_path(i).read_bytes(), (key, i)
    for k in ("num_edges", "self_loops_removed", "duplicates_removed"):
        assert sa.meta[k] == sb.meta[k]


@pytest.mark.parametrize("where,fmt", [("local", "npy"), ("local", "parquet"),
                                       ("local", "csv"), ("scheduler", "npy")])
def test_preprocess_on_dask_is_byte_identical(where, fmt, edge_inputs, tmp_path, monkeypatch,
                                              request):
    # npy and parquet are read by the workers in parts (several here: 60000 edges per part,
    # parquet row groups of 20000); csv is streamed by the client in segments
    import lrgi_ooc.ingest.edges as edges_mod
    _small_chunks(monkeypatch)
    monkeypatch.setattr(edges_mod, "PART_EDGES", 60000)
    edge_inputs = edge_inputs[fmt]
    if fmt != "csv":
        from lrgi_ooc.ingest.edges import open_edges
        assert len(open_edges(edge_inputs[1]).parts(None)) == 5
    assert main(["preprocess", *edge_inputs, "--out", str(tmp_path / "ref.zarr")]) == 0
    opts = (["--workers", "2"] if where == "local"
            else ["--scheduler", request.getfixturevalue("scheduler")[0]])
    assert main(["preprocess", *edge_inputs, "--out", str(tmp_path / "d.zarr"), *opts]) == 0
    s = GraphStore(tmp_path / "d.zarr")
    assert s.info("csr/indices").num_chunks > 50 and s.info("csr/indptr").num_chunks > 5
    assert s.meta["duplicates_removed"] > 0 and s.meta["self_loops_removed"] > 0
    assert_same_store(tmp_path / "ref.zarr", tmp_path / "d.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr", "ref.zarr"]   # no scratch


def test_preprocess_failing_on_dask_leaves_nothing(edge_inputs, tmp_path, monkeypatch,
                                                  scheduler):
    # feature tasks are submitted before the edge passes; an edge error found by a worker's
    # validate task (an id >= N, N = the feature rows) must still end with exit 2, the old
    # store intact and no staging or work directory left behind
    _small_chunks(monkeypatch)
    args = edge_inputs["npy"]
    out = tmp_path / "g.zarr"
    assert main(["preprocess", *args, "--out", str(out)]) == 0
    before = GraphStore(out).meta["num_edges"]
    bad = np.load(args[1])
    bad[1, -1] = 10 ** 6
    np.save(tmp_path / "bad.npy", bad)
    r = subprocess.run([sys.executable, "-m", "lrgi_ooc", "preprocess", "--edges",
                        str(tmp_path / "bad.npy"), *args[2:], "--out", str(out), "--overwrite",
                        "--scheduler", scheduler[0]],
                       capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "bad.npy" in r.stderr and "1000000" in r.stderr, r.stderr
    assert GraphStore(out).meta["num_edges"] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "g.zarr"]


def test_feature_chunk_task_reports_a_non_finite_value(edge_inputs, tmp_path, monkeypatch,
                                                       scheduler, capsys):
    # the workers read feature chunks through a memory map of the .npy: a NaN deep in a later
    # chunk is still a one-line error naming the file, row and column (exit 2)
    _small_chunks(monkeypatch)
    args = list(edge_inputs["npy"])
    x = np.load(args[3])
    x[20000, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    args[3] = str(tmp_path / "x.npy")
    assert main(["preprocess", *args, "--out", str(tmp_path / "g.zarr"),
                 "--scheduler", scheduler[0]]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'x.npy'}: value at row 20000, column 3 is not finite" in err, err
    assert not (tmp_path / "g.zarr").exists()


def test_submit_tasks_sends_a_pass_as_one_graph_update():
    # one client.map call per pass (one scheduler graph update), arguments column-wise,
    # futures in task order; a pass of argument-less tasks falls back to submit
    from lrgi_ooc.cluster import tasks as cluster
    calls = []

    class Client:
        def map(self, fn, *cols, **kw):
            calls.append(("map", fn, cols, kw))
            return [f"f{i}" for i in range(len(cols[0]))]

        def submit(self, fn, *args, **kw):
            calls.append(("submit", fn, args, kw))
            return "s"
    assert cluster.submit_tasks(Client(), max, [(1, 2), (3, 4), (5, 6)], priority=-1) == \
        ["f0", "f1", "f2"]
    assert calls == [("map", max, ([1, 3, 5], [2, 4, 6]), {"pure": False, "priority": -1})]
    calls.clear()
    assert cluster.submit_tasks(Client(), list, [()]) == ["s"] and calls[0][0] == "submit"
    assert cluster.submit_tasks(Client(), max, []) == []


def test_dask_build_deletes_each_pass_inputs_once_the_pass_returned(edge_inputs, tmp_path,
                                                                    monkeypatch, scheduler):
    # the work dir at the start of each pass holds only what that pass reads: spill segments
    # are gone once every route task returned, range files once every build task returned
    import re

    from lrgi_ooc.cluster import tasks as cluster
    from lrgi_ooc.csr import tasks as csrdask
    _small_chunks(monkeypatch)
    seen: dict[str, list[str]] = {}
    real = cluster.run_tasks

    def spy(client, fn, tasks, desc, **kw):
        if tasks and isinstance(tasks[0][0], csrdask._Spec):
            spec = tasks[0][0]
            names = [p.name[len(spec.prefix) + 1:]
                     for p in Path(spec.workdir).glob(f"{spec.prefix}-*")]
            seen[desc] = sorted({re.sub(r"\d+", "", n) for n in names})
        return real(client, fn, tasks, desc, **kw)
    monkeypatch.setattr(cluster, "run_tasks", spy)
    assert main(["preprocess", *edge_inputs["npy"], "--out", str(tmp_path / "g.zarr"),
                 "--scheduler", scheduler[0]]) == 0
    assert seen == {"validate edges": [], "split edges by range": ["seg"],
                    "build CSR": ["r-s"], "write CSR": ["idx", "ptr"]}


# ------------------------------------------------------------------ train on a GPU worker
def test_gpu_task_without_gpu_worker_exits_2_then_runs_on_one(trained, scheduler, tmp_path):
    address, _ = scheduler
    src, _ = trained
    s = copy_store(src, tmp_path / "g.zarr")
    args = ["train", str(s.path), "--layer", "1", "--steps", "3", "--seed", "5", *SMALL]
    # a silent wait for a GPU worker would hit the timeout (subprocess.TimeoutExpired)
    r = cli_run([*args, "--scheduler", address, "--gpu-task"], timeout=120)
    assert r.returncode == 2
    assert "no worker of the cluster advertises the resource GPU" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli_run([*args, "--gpu-task"])
    assert r.returncode == 2 and "needs a cluster" in r.stderr
    # a worker that advertises GPU=1 takes the stage (here on its CPU)
    gpu = _start_worker(address, tmp_path / "gpu-worker.log", "--resources", "GPU=1")
    try:
        _wait_workers(address, 3)
        r = cli_run([*args, "--scheduler", address, "--gpu-task"])
        assert r.returncode == 0, r.stderr
    finally:
        _stop(gpu)
    import torch

    from lrgi_ooc.nn.trained import load_blob
    got = load_blob(GraphStore(s.path), 1)
    ref = copy_store(src, tmp_path / "ref.zarr")
    assert main([args[0], str(ref.path), *args[2:]]) == 0
    want = load_blob(GraphStore(ref.path), 1)
    for k, v in want["block"].items():
        torch.testing.assert_close(got["block"][k], v, rtol=1e-4, atol=1e-5)


def test_run_config_dask_table_uses_the_cluster(scheduler, tmp_path, run_cli):
    s = make_store(tmp_path / "g.zarr", n=1500, feat=8)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""store = '{s.path}'
num_layers = 1
[train]
dim = 16
heads = 2
batch_size = 64
fanout = [4, 3]
steps = 3
[evaluate]
epochs = 5
num_splits = 1
[dask]
scheduler = '{scheduler[0]}'
""")
    rc, out, err = run_cli("run", cfg)
    assert rc == 0, err
    assert "dask: 2 worker(s)" in out
    assert GraphStore(s.path).stage_complete("embed/1")


# ------------------------------------------------------------------ options and config
def test_dask_options_and_config_table(tmp_path, run_cli):
    from lrgi_ooc.stages.pipeline import _dask_settings
    assert _dask_settings({"dask": {"workers": 2}}, "c.toml", None) == {"workers": 2}
    assert _dask_settings({"dask": {"workers": 2}}, "c.toml",
                          {"scheduler": "tcp://h:1", "workers": None}) == {"scheduler": "tcp://h:1"}
    cfg = tmp_path / "c.toml"
    for table, needle in [("workers = 2\nscheduler = 'tcp://h:1'", "not both"),
                          ("workers = 0", "--workers"), ("nodes = 3", "nodes")]:
        cfg.write_text(f"store = '{tmp_path / 'none.zarr'}'\n[dask]\n{table}\n")
        rc, _, err = run_cli("run", cfg)
        assert rc == 2 and needle in err, err
    store = make_store(tmp_path / "x.zarr", n=300)
    rc, _, err = run_cli("embed", store.path, "--layer", "1", "--workers", "-1")
    assert rc == 2 and "--workers" in err


def test_unreachable_scheduler_exits_2_even_when_no_task_is_needed(trained, tmp_path):
    # the connection is made in the background while the command works; its failure must
    # still end the command with the one-line error, also when every chunk was already done
    src, _ = trained
    s = copy_store(src, tmp_path / "g.zarr")
    assert main(["embed", str(s.path), "--layer", "1", *CHUNK]) == 0
    address = f"tcp://127.0.0.1:{_free_port()}"          # nothing listens there
    for args, needle in ((["embed", str(s.path)], "cannot connect"),
                         (["embed", str(tmp_path / "missing.zarr")], "missing.zarr")):
        r = subprocess.run([sys.executable, "-m", "lrgi_ooc", *args, "--layer", "1",
                            "--scheduler", address], capture_output=True, text=True,
                           env=cli_env(), timeout=120)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
