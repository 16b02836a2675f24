"""A full disk (ENOSPC): preprocess, train and embed on a small tmpfs exit 2 with one line
naming the path, keep the previous state (old store, last checkpoint, completed chunks) and
succeed once space is freed, with the result of a run that never failed.

The tmpfs needs root (mount); elsewhere these tests skip. Space is taken by a ballast file
of zeros sized from the run's own files, and "freed" by deleting it.
"""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from graphs import make_store, random_edges
from lrgi_ooc.cluster import tasks as cluster
from lrgi_ooc.nn.trained import ARRAYS, load_block
from lrgi_ooc.store.layout import (FEATURES, INDICES, INDPTR, GraphStore, embed_stage,
                                   embeddings_key, train_stage)

PAGE = 4096
TRAIN = ["--dim", "64", "--heads", "4", "--batch-size", "64", "--fanout", "4,3",
         "--steps", "6", "--checkpoint-every", "2"]
SMALL = ["--dim", "16", "--heads", "2", "--batch-size", "64", "--fanout", "4,3",
         "--steps", "2"]


@pytest.fixture
def tmpfs(tmp_path):
    """A 32 MiB tmpfs (unmounted afterwards); skips when not root or mount fails."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        cluster.clear_cache()           # in-process embed keeps maps of the store's chunks
        gc.collect()
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave: int) -> Path:
    """A ballast file of zeros that leaves about `leave` bytes free on the tmpfs."""
    need = (shutil.disk_usage(mnt).free - leave) // PAGE * PAGE
    assert need > 0, "the tmpfs is too small for this test"
    ballast = mnt / "ballast"
    with open(ballast, "wb") as f:
        block = bytes(1 << 20)
        while need:
            n = min(need, len(block))
            f.write(block[:n])
            need -= n
    assert abs(shutil.disk_usage(mnt).free - leave) <= PAGE
    return ballast


def used(path: Path) -> int:
    """Bytes a directory tree takes (allocated pages, as the tmpfs counts them)."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def leftovers(mnt: Path) -> list[str]:
    """Temporary, staging and scratch files: a rerun on a full disk must not meet them."""
    return [str(p) for p in mnt.rglob("*")
            if any(m in p.name for m in (".tmp", ".staging-", ".work-", ".old-"))]


def assert_disk_full(rc: int, err: str, path: Path) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "no space" in lines[0] and str(path) in lines[0], lines[0]
    assert "Traceback" not in err


# --------------------------------------------------------------------------- preprocess
def _npz(path: Path, n: int, seed: int) -> Path:
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    np.savez(path, edge_index=random_edges(n, 5, seed), x=x)
    return path


def _arrays(path: Path) -> dict[str, np.ndarray]:
    s = GraphStore(path)
    return {k: np.asarray(s.mmap(k)) for k in (INDPTR, INDICES, FEATURES)}


@pytest.mark.parametrize("memory", ["2GB", "1MB"])     # 1MB: the CSR build spills to scratch
def test_preprocess_on_a_full_disk_keeps_the_old_store_then_succeeds(tmp_path, tmpfs, run_cli,
                                                                     memory):
    old_in, new_in = _npz(tmp_path / "old.npz", 8000, 1), _npz(tmp_path / "new.npz", 20000, 2)
    ref = tmp_path / "ref.zarr"
    assert run_cli("preprocess", "--npz", new_in, "--out", ref)[0] == 0
    out = tmpfs / "g.zarr"
    assert run_cli("preprocess", "--npz", old_in, "--out", out)[0] == 0
    old = snapshot(out)
    ballast = fill(tmpfs, used(ref) // 2)          # half the new store fits
    args = ["preprocess", "--npz", new_in, "--out", out, "--overwrite", "--memory-limit", memory]

    rc, _, err = run_cli(*args)
    assert_disk_full(rc, err, tmpfs)
    assert (".work-" if memory == "1MB" else ".staging-") in err    # the file that ran out
    assert snapshot(out) == old                     # --overwrite lost nothing
    assert leftovers(tmpfs) == []                   # the staging and work dirs are gone

    ballast.unlink()
    rc, _, err = run_cli(*args)
    assert rc == 0, err
    got, want = _arrays(out), _arrays(ref)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert GraphStore(out).stage_complete("preprocess")
    assert leftovers(tmpfs) == []


# --------------------------------------------------------------------------- train
def _weights(path: Path) -> dict[str, np.ndarray]:
    w = load_block(GraphStore(path), 1)[0]
    return {name: np.asarray(getattr(w, name)) for name in ARRAYS}


@pytest.fixture
def one_thread():
    """Torch on one thread: at this width, multi-threaded CPU training differs between two
    uninterrupted runs in the last bits, and the comparison below is exact."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_train_on_a_full_disk_keeps_the_last_checkpoint_then_resumes(tmp_path, tmpfs,
                                                                       run_cli, one_thread):
    import torch
    ref = make_store(tmp_path / "ref.zarr", n=600, feat=32)
    assert run_cli("train", ref.path, "--layer", "1", *TRAIN)[0] == 0
    ckpt_bytes = (Path(f"{ref.path}.runs") / "train-1" / "checkpoint.pt").stat().st_size
    assert ckpt_bytes > 64 * PAGE                   # so that 1.5 checkpoints is not 2

    s = make_store(tmpfs / "g.zarr", n=600, feat=32)
    ckpt = Path(f"{s.path}.runs") / "train-1" / "checkpoint.pt"
    # room for the first checkpoint, not for the second one's temporary beside it
    ballast = fill(tmpfs, ckpt_bytes * 3 // 2)
    rc, _, err = run_cli("train", s.path, "--layer", "1", *TRAIN)
    assert_disk_full(rc, err, ckpt)
    assert torch.load(ckpt, weights_only=False)["step"] == 2   # the last good one
    assert not GraphStore(s.path).stage_complete(train_stage(1))
    assert leftovers(tmpfs) == []

    ballast.unlink()
    rc, out, err = run_cli("train", s.path, "--layer", "1", *TRAIN)
    assert rc == 0, err
    assert "resuming from step 2/6" in out
    got, want = _weights(s.path), _weights(ref.path)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert GraphStore(s.path).stage_complete(train_stage(1))


# --------------------------------------------------------------------------- embed
def test_embed_on_a_full_disk_keeps_written_chunks_then_writes_the_rest(tmp_path, tmpfs,
                                                                         run_cli):
    s = make_store(tmpfs / "g.zarr", n=5 * 4096, feat=8)
    assert run_cli("train", s.path, "--layer", "1", *SMALL)[0] == 0
    ref = tmp_path / "ref.zarr"
    shutil.copytree(s.path, ref)
    assert run_cli("embed", ref, "--layer", "1", "--chunk-rows", "4096")[0] == 0
    r = GraphStore(ref)
    out_chunk = r.info(embeddings_key(1)).chunk_path(0).stat().st_blocks * 512
    # the transient projection (dropped at the end): per chunk [dim] and [heads] wide rows
    proj = 5 * (out_chunk + out_chunk * 2 // 16 + PAGE)
    # the whole projection and two and a half output chunks fit
    ballast = fill(tmpfs, proj + out_chunk * 5 // 2)

    rc, _, err = run_cli("embed", s.path, "--layer", "1", "--chunk-rows", "4096")
    g = GraphStore(s.path)
    info = g.info(embeddings_key(1))
    assert_disk_full(rc, err, info.dir)
    done = [i for i in range(info.num_chunks) if g.chunk_written(embeddings_key(1), i)]
    assert 0 < len(done) < info.num_chunks
    kept = {i: (st.st_ino, st.st_mtime_ns)
            for i in done for st in [info.chunk_path(i).stat()]}
    assert not g.stage_complete(embed_stage(1))
    assert leftovers(tmpfs) == []

    ballast.unlink()
    rc, _, err = run_cli("embed", s.path, "--layer", "1", "--chunk-rows", "4096")
    assert rc == 0, err
    g = GraphStore(s.path)
    assert {i: (st.st_ino, st.st_mtime_ns)          # the completed chunks were not rewritten
            for i in done for st in [info.chunk_path(i).stat()]} == kept
    np.testing.assert_array_equal(np.asarray(g.table(1)), np.asarray(r.table(1)))
    assert g.stage_complete(embed_stage(1))


# --------------------------------------------------------------------------- the fallback
@pytest.mark.parametrize("code", [28, 122])        # ENOSPC, EDQUOT
def test_an_unnamed_full_disk_anywhere_is_one_line_naming_the_output(tmp_path, monkeypatch,
                                                                    run_cli, code):
    # an f.write() that runs out of space carries no file name: the CLI names --out
    import functools

    from lrgi_ooc import api

    @functools.wraps(api.export)                    # the CLI reads its flags' defaults
    def full(*a, **kw):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(api, "export", full)
    out = tmp_path / "emb.npy"
    rc, _, err = run_cli("export", tmp_path / "g.zarr", "--layer", "1", "--out", out)
    assert_disk_full(rc, err, out)

    @functools.wraps(api.export)
    def other(*a, **kw):
        raise OSError(5, "Input/output error")      # not a full disk: not swallowed
    monkeypatch.setattr(api, "export", other)
    with pytest.raises(OSError):
        run_cli("export", tmp_path / "g.zarr", "--layer", "1", "--out", out)
