"""embed with the projection streamed in source blocks equals the in-memory embed; the plan;
a SIGKILL mid-stage resumes under another budget; tools/balloon.py locks what it says."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lrgi_ooc
from conftest import REPO, cli_env, cli_popen, cli_run
from graphs import copy_store, make_store, table
from lrgi_ooc.cli.main import main
from lrgi_ooc.stages.embed import embed_layer
from lrgi_ooc.stages.embed_stream import group_fixed_bytes, lean_row_bytes, plan_embed
from lrgi_ooc.store.layout import (GraphStore, chunk_rows_for, embeddings_key,
                                   train_embeddings_key)

SMALL = ["--dim", "16", "--heads", "2", "--batch-size", "64", "--fanout", "4,3"]
N = 20000                      # 5 output chunks of 4096 rows
CHUNK = 4096
EMB = embeddings_key(1)
TOL = dict(rtol=1e-5, atol=1e-5)   # float32 summation order: the streamed path adds a
                                   # hub's edges block by block, rescaled in other places
                                   # (1.6e-6 seen on one of 320,000 values; a wrong edge or
                                   # block moves values by 1e-3 and more)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Layer 1 trained on a graph with zero-degree nodes and three hubs, and its in-memory
    table (5 chunks) with that run's stage record."""
    d = tmp_path_factory.mktemp("streamed")
    s = make_store(d / "g.zarr", n=N, feat=8, avg_deg=4, hubs=3)
    deg = np.diff(np.asarray(s.indptr()))
    assert (deg == 0).sum() >= 5 and deg.max() > 500 * np.median(deg)   # what the tests claim
    assert main(["train", str(s.path), "--layer", "1", "--steps", "3", *SMALL]) == 0
    ref = copy_store(s.path, d / "ref.zarr")
    rec = embed_layer(ref, 1, chunk_rows=CHUNK)
    assert rec["plan"]["mode"] == "in-memory" and GraphStore(ref).info(EMB).num_chunks == 5
    return s.path, table(ref), rec


@pytest.mark.parametrize("blocks,max_edges,limit,groups", [
    (2, 1 << 21, "2GB", 1), (3, 3000, "4MB", 3), (7, 3000, "4MB", 2), (7, 3000, "1MB", 5)])
def test_streamed_equals_in_memory(trained, tmp_path, capsys, blocks, max_edges, limit,
                                   groups):
    # max_edges=3000: the hubs' rows span several pieces; the budget decides how many of the
    # 5 output chunks a task groups (each task reads the whole projection once)
    src, ref, ref_rec = trained
    s = copy_store(src, tmp_path / "g.zarr")
    rec = embed_layer(s, 1, chunk_rows=CHUNK, source_blocks=blocks, max_edges=max_edges,
                      memory_limit=limit)
    np.testing.assert_allclose(table(s), ref, **TOL)
    assert not np.array_equal(table(s), np.zeros_like(ref))
    plan = rec["plan"]
    assert (plan["mode"], plan["source_blocks"], plan["output_blocks"], plan["output_chunks"],
            plan["tasks_at_once"]) == ("streamed", blocks, groups, 5, 1)
    assert plan["bytes_read"] >= groups * plan["projection_bytes"] > 0
    tasks = f"{groups} output block{'s' if groups > 1 else ''}"
    assert f"embed layer 1: plan: {blocks} source blocks x {tasks} (5 chunks), " \
        in capsys.readouterr().out
    # the budget is not configuration: the same config hash as the in-memory run
    assert rec["config_hash"] == ref_rec["config_hash"]
    assert not GraphStore(s).has("layers/1/projection")


def test_memory_limit_streams_and_shrinks_the_output_blocks(trained, tmp_path):
    src, ref, _ = trained
    s = copy_store(src, tmp_path / "g.zarr")
    rec = lrgi_ooc.embed_layer(s, layer=1, memory_limit="1MB")   # projection alone: 1.4 MB
    assert rec["plan"]["mode"] == "streamed" and rec["plan"]["source_blocks"] > 1
    assert rec["plan"]["memory_limit"] == 1 << 20
    assert GraphStore(s).info(EMB).chunk_rows == 4096 < chunk_rows_for(N, 16 * 4)
    np.testing.assert_allclose(table(s), ref, **TOL)


def test_planner_fits_each_task_within_its_share():
    chunks = [(65536, 2_000_000)] * 150
    common = dict(num_nodes=10_000_000, dim=64, heads=4, feat=64, feat_itemsize=4,
                  index_itemsize=4, runs=[chunks[:100], chunks[100:]], chunk_rows=65536,
                  max_edges=1 << 21)
    proj = 10_000_000 * 68 * 4
    fits = plan_embed(**common, limit=8 << 30, tasks=1)
    assert fits.mode == "in-memory" and fits.source_blocks == 1 and fits.projection_bytes == proj
    assert fits.output_blocks == 150
    fixed = group_fixed_bytes(64, 4, 64, 65536, 2_000_000)   # a piece: the largest chunk's edges
    chunk = 65536 * lean_row_bytes(64, 4) + 2_000_000 * 4     # its state and edge ids
    for limit, tasks in [(2 << 30, 1), (2 << 30, 2), (1 << 30, 3)]:
        p = plan_embed(**common, limit=limit, tasks=tasks)
        share = limit // tasks
        assert p.mode == "streamed" and p.bounds[0] == 0 and p.bounds[-1] == 10_000_000
        assert len(p.bounds) == p.source_blocks + 1 and p.output_chunks == 150
        block = max(np.diff(p.bounds)) * 68 * 4
        assert block <= (share - fixed) // 4 < block * (p.source_blocks + 1) / p.source_blocks
        # groups: consecutive chunks of one run each, covering every chunk once, in order;
        # each fits the share and the next chunk would not
        assert [(r, f) for r, f, _ in p.groups][:1] == [(0, 0)]
        covered = [(r, f + k) for r, f, c in p.groups for k in range(c)]
        assert covered == [(0, i) for i in range(100)] + [(1, i) for i in range(50)]
        for r, f, c in p.groups:
            assert fixed + block + c * chunk <= share
            if f + c < (100 if r == 0 else 50):
                assert fixed + block + (c + 1) * chunk > share
        assert p.output_blocks == len(p.groups)
        assert p.bytes_read >= len(p.groups) * proj
    assert plan_embed(**common, limit=2 << 30, tasks=2).output_blocks > \
        plan_embed(**common, limit=2 << 30, tasks=1).output_blocks
    forced = plan_embed(**common, limit=64 << 30, tasks=1, source_blocks=3)
    assert forced.mode == "streamed" and forced.source_blocks == 3
    assert [c for _, _, c in forced.groups] == [100, 50]      # all of a run in one task


def test_streamed_on_local_cluster(trained, tmp_path):
    src, ref, _ = trained
    s = copy_store(src, tmp_path / "g.zarr")
    r = cli_run(["embed", s, "--layer", "1", "--workers", "2", "--chunk-rows", CHUNK,
                 "--source-blocks", "3", "--memory-limit", "8MB", "--max-edges", "3000"])
    assert r.returncode == 0, r.stderr
    assert "dask: 2 worker(s)" in r.stdout
    # two tasks at once share 8 MB: 4 MB each, as in the in-process case with 3 groups
    assert "embed layer 1: plan: 3 source blocks x 3 output blocks (5 chunks)" in r.stdout
    plan = GraphStore(s).stage_record("embed/1")["plan"]
    assert (plan["mode"], plan["tasks_at_once"], plan["output_blocks"]) == ("streamed", 2, 3)
    np.testing.assert_allclose(table(s), ref, **TOL)


def test_killed_mid_stage_resumes_under_another_budget(trained, tmp_path):
    src, ref, ref_rec = trained
    s = copy_store(src, tmp_path / "g.zarr")
    # 1MB: one chunk a task, so chunks are written one task after another
    p = cli_popen(["embed", s, "--layer", "1", "--chunk-rows", CHUNK, "--source-blocks", "7",
                   "--max-edges", "512", "--memory-limit", "1MB"])
    deadline = time.monotonic() + 120
    while not (GraphStore(s).has(EMB) and GraphStore(s).chunk_written(EMB, 0)):
        assert p.poll() is None, "the run ended before the kill point: " + p.stderr.read()
        assert time.monotonic() < deadline, "no chunk written: the run seems stuck"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    st = GraphStore(s)
    assert not st.stage_complete("embed/1")
    kept = {i: os.stat(st.info(EMB).chunk_path(i)).st_ino for i in range(5)
            if st.chunk_written(EMB, i)}
    assert 0 in kept and len(kept) < 5, kept
    # rerun with the default budget: the in-memory path computes only the missing chunks
    rec = embed_layer(s, 1)
    assert rec["plan"]["mode"] == "in-memory" and rec["plan"]["output_blocks"] == 5 - len(kept)
    assert {i: os.stat(st.info(EMB).chunk_path(i)).st_ino for i in kept} == kept
    assert rec["config_hash"] == ref_rec["config_hash"]
    np.testing.assert_allclose(table(s), ref, **TOL)


def test_inductive_training_table_streams(tmp_path):
    # the training table's targets are not contiguous: their own rows are gathered by reads
    s = make_store(tmp_path / "g.zarr", n=9000, feat=8, avg_deg=4, hubs=2)
    assert main(["train", str(s.path), "--layer", "1", "--steps", "2", "--inductive",
                 *SMALL]) == 0
    ref = copy_store(s.path, tmp_path / "ref.zarr")
    assert embed_layer(ref, 1, chunk_rows=CHUNK)["plan"]["mode"] == "in-memory"
    rec = embed_layer(s.path, 1, chunk_rows=CHUNK, source_blocks=3, max_edges=2000)
    # one task for the table's 3 chunks, one for the training table's chunk
    assert (rec["plan"]["output_blocks"], rec["plan"]["output_chunks"]) == (2, 3 + 1)
    for key in (EMB, train_embeddings_key(1)):
        np.testing.assert_allclose(table(s.path, key), table(ref, key), **TOL)


def test_budget_options_are_checked(trained, tmp_path):
    src, _, _ = trained
    s = copy_store(src, tmp_path / "g.zarr")
    with pytest.raises(lrgi_ooc.InputError, match="--source-blocks: must be positive"):
        lrgi_ooc.embed_layer(s, layer=1, source_blocks=0)
    with pytest.raises(lrgi_ooc.InputError, match="--memory-limit: cannot read 'lots'"):
        lrgi_ooc.embed_layer(s, layer=1, memory_limit="lots")
    for bad, needle in [({"source_blocks": 0}, "source_blocks"),
                        ({"memory_limit": "lots"}, "memory_limit")]:
        with pytest.raises(lrgi_ooc.InputError, match=needle):
            lrgi_ooc.run({"store": str(s), "embed": bad})
    assert not GraphStore(s).has(EMB)


# ------------------------------------------------------------------ the balloon
def _can_lock(size: int) -> bool:
    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    return os.geteuid() == 0 or soft == resource.RLIM_INFINITY or soft >= size


@pytest.mark.skipif(not _can_lock(64 << 20), reason="mlock of 64 MB not permitted here")
def test_balloon_locks_until_terminated(tmp_path):
    balloon = [sys.executable, str(REPO / "tools" / "balloon.py")]
    r = subprocess.run([*balloon, "0.0625", "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "balloon: locked 0.06 GB; MemAvailable" in r.stdout
    ready = tmp_path / "ready.json"
    p = subprocess.Popen([*balloon, "64MB", "--ready", str(ready)], env=cli_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        rep = json.loads(ready.read_text())
        status = Path(f"/proc/{p.pid}/status").read_text()
        vmlck = int(next(l for l in status.splitlines() if l.startswith("VmLck")).split()[1])
        assert rep["locked_bytes"] == 64 << 20 and vmlck * 1024 >= 64 << 20
        assert rep["mem_available_bytes"] > 0
        assert p.poll() is None                      # it holds until killed
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == 0
