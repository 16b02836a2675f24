"""A Dask worker SIGKILLed in the middle of `preprocess --workers 2` (while it writes one of the
CSR build's work files, or a feature chunk of the store) still ends with the store an
in-process run builds, byte for byte, and nothing else: not the killed writer's partial file."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_popen
from lrgi_ooc.cli.main import main
from lrgi_ooc.store.layout import FEATURES

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

N, E = 100_000, 1_000_000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(5)
    np.save(d / "e.npy", rng.integers(0, N, (2, E)))
    # 25.6 MB of features: one chunk, written by one task long enough to be caught
    np.save(d / "x.npy", rng.standard_normal((N, 64)).astype(np.float32))
    np.save(d / "y.npy", rng.integers(0, 4, N))
    # a small budget: several ranges, so every pass has tasks on both workers
    return ["--edges", str(d / "e.npy"), "--features", str(d / "x.npy"), "--labels",
            str(d / "y.npy"), "--undirected", "--memory-limit", "2MB"]


def _worker_pids(proc) -> set[int]:
    """The Dask worker processes (spawned by the nannies of the local cluster)."""
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    out = set()
    for c in kids:
        try:
            if "spawn_main" in " ".join(c.cmdline()):
                out.add(c.pid)
        except psutil.Error:
            continue
    return out


def _writer_being_written(tmp: Path, workers: set[int], pattern: str) -> int | None:
    """The pid of a worker caught writing a file (`.NAME.tmp-PID`, renamed when whole)."""
    for f in tmp.glob(pattern):
        pid = f.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) in workers:
            return int(pid)
    return None


def _tree(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p != store / "zarr.json"}


def _attrs(store: Path) -> dict:
    meta = json.loads((store / "zarr.json").read_text())["attributes"]["lrgi_ooc"]
    meta.pop("provenance")                  # names the command line (--out, --workers)
    rec = meta["stages"]["preprocess"]
    for k in ("completed_at", "seconds", "peak_rss_mb"):
        rec.pop(k)
    return meta


# the task that is killed: a spill (copy of an input part) or a route task (split by range) of
# the CSR build, in the work directory (the build pass writes its small files too quickly to
# be caught reliably), or the feature copy, writing into the staging store
@pytest.mark.parametrize("writing", [".g.zarr.work-*/.*-seg*.tmp-*",
                                     ".g.zarr.work-*/.*-r*-s*.tmp-*",
                                     f".g.zarr.staging-*/{FEATURES}/c/*/.*.tmp-*"],
                         ids=["spill", "route", "feature-chunk"])
def test_worker_killed_mid_preprocess_gives_identical_store(writing, inputs, tmp_path):
    ref = tmp_path / "ref" / "g.zarr"
    assert main(["preprocess", *inputs, "--out", str(ref)]) == 0

    out = tmp_path / "g.zarr"
    p = cli_popen(["preprocess", *inputs, "--out", out, "--workers", "2"])
    victim, deadline = None, time.monotonic() + 120
    try:
        while victim is None:
            assert p.poll() is None, "preprocess ended before a worker was caught writing"
            assert time.monotonic() < deadline, "no worker seen writing a work file"
            victim = _writer_being_written(tmp_path, _worker_pids(p), writing)
            time.sleep(0.002)
        psutil.Process(victim).send_signal(signal.SIGKILL)
        _, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert not psutil.pid_exists(victim) or \
        psutil.Process(victim).status() == psutil.STATUS_ZOMBIE

    # the same files, every one byte-identical (the killed writer's partial file is gone), and
    # the same attributes and stage record
    got, want = _tree(out), _tree(ref)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    assert _attrs(out) == _attrs(ref)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["g.zarr", "ref"]   # no scratch left


def test_embed_removes_the_partial_chunks_of_writers_killed_mid_write(tmp_path, monkeypatch):
    # what a Dask worker SIGKILLed inside `write_chunk` leaves: `.I.tmp-PID` beside chunk I,
    # whose task then ran again elsewhere; once every task returned, such files are the dead
    # writers', whatever the pid (one here is alive: a worker on another host looks like that)
    import subprocess

    import lrgi_ooc.stages.embed as embed_mod
    from graphs import make_store
    from lrgi_ooc.store.layout import GraphStore, embeddings_key
    s = make_store(tmp_path / "g.zarr", n=9000, feat=8)
    assert main(["train", str(s.path), "--layer", "1", "--steps", "2", "--dim", "8",
                 "--heads", "2", "--batch-size", "64", "--fanout", "4,3"]) == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    real, key = embed_mod.embed_task, embeddings_key(1)
    left = []

    def killed_writer_then_task(spec, k, i):
        p = GraphStore(spec.store).info(k).chunk_path(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        for pid in (dead.pid, 1):
            part = p.with_name(f".{p.name}.tmp-{pid}")
            part.write_bytes(b"\0" * 100)
            left.append(part)
        return real(spec, k, i)
    monkeypatch.setattr(embed_mod, "embed_task", killed_writer_then_task)
    assert main(["embed", str(s.path), "--layer", "1", "--chunk-rows", "4096"]) == 0
    assert len(left) == 6                                    # 3 chunks of 4096 rows
    assert not any(p.exists() for p in left)
    assert not list(s.path.rglob("*.tmp-*"))
    assert GraphStore(s.path).stage_complete("embed/1")
    assert all(GraphStore(s.path).chunk_written(key, i) for i in range(3))
