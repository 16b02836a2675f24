"""A Dask worker SIGKILLed in the middle of `preprocess --workers 2` (while it writes one of the
CSR build's work files) still ends with the store an in-process run builds, byte for byte."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_popen
from lrgi_ooc.cli.main import main

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

N, E = 100_000, 1_000_000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(5)
    np.save(d / "e.npy", rng.integers(0, N, (2, E)))
    np.save(d / "x.npy", rng.standard_normal((N, 8)).astype(np.float32))
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


def _writer_being_written(tmp: Path, workers: set[int], name: str) -> int | None:
    """The pid of a worker caught writing a work file of one pass (`.PREFIX-NAME.tmp-PID`,
    renamed when whole)."""
    for f in tmp.glob(f".g.zarr.work-*/.*-{name}.tmp-*"):
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


# the pass whose task is killed: spill (copy of an input part) or route (split by range; the
# build pass writes its small files too quickly to be caught reliably)
@pytest.mark.parametrize("work_file", ["seg*", "r*-s*"])
def test_worker_killed_mid_preprocess_gives_identical_store(work_file, inputs, tmp_path):
    ref = tmp_path / "ref" / "g.zarr"
    assert main(["preprocess", *inputs, "--out", str(ref)]) == 0

    out = tmp_path / "g.zarr"
    p = cli_popen(["preprocess", *inputs, "--out", out, "--workers", "2"])
    victim, deadline = None, time.monotonic() + 120
    try:
        while victim is None:
            assert p.poll() is None, "preprocess ended before a worker was caught writing"
            assert time.monotonic() < deadline, "no worker seen writing a work file"
            victim = _writer_being_written(tmp_path, _worker_pids(p), work_file)
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
