"""One writer per store: a second writer is refused at once (exit 2, one line naming the
holder), readers need no lock, a dead writer's lock is taken over, `layer` / `run` re-enter.

The holder is a real `lrgi-ooc` process paused right after it took the lock (the test-only
LRGI_OOC_TEST_HOLD_LOCK hook of store/lock.py), so nothing here depends on timing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_popen, cli_run
from graphs import make_store
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.cli.main import main
from lrgi_ooc.store.layout import GraphStore, embeddings_key, lock_path
from lrgi_ooc.store.lock import HOLD_ENV, writer_lock

SMALL = ["--dim", "16", "--heads", "2", "--batch-size", "64", "--fanout", "4,3"]
TRAIN = ["--layer", "1", "--steps", "3", *SMALL]


class Holder:
    """`lrgi-ooc ARGS` in a subprocess that pauses once it holds the store's lock."""

    def __init__(self, args: list[str], hold_dir: Path, monkeypatch):
        self.dir = hold_dir
        hold_dir.mkdir()
        monkeypatch.setenv(HOLD_ENV, str(hold_dir))
        self.proc = cli_popen(args)
        monkeypatch.delenv(HOLD_ENV)          # only the holder pauses
        deadline = time.monotonic() + 120
        while not (hold_dir / "held").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                out, err = self.proc.communicate()
                pytest.fail(f"holder never took the lock (rc {self.proc.returncode}): {err}")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def finish(self) -> tuple[int, str]:
        (self.dir / "release").touch()
        out, err = self.proc.communicate(timeout=300)
        return self.proc.returncode, err


def refused(r: subprocess.CompletedProcess, holder: Holder, command: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert "another writer holds this store" in line
    assert f"pid {holder.pid} on {socket.gethostname()}" in line
    assert f"`lrgi-ooc {command} " in line and "wait for it to finish" in line
    return line


def test_second_train_of_a_layer_is_refused_and_the_first_completes(tmp_path, monkeypatch):
    s = make_store(tmp_path / "g.zarr")
    h = Holder(["train", s.path, *TRAIN], tmp_path / "hold", monkeypatch)
    line = refused(cli_run(["train", s.path, *TRAIN]), h, "train")
    assert "(train layer 1, since " in line and str(s.path) in line
    assert GraphStore(s.path).stage_record("train/1") is None     # the refused one wrote none
    rc, err = h.finish()
    assert rc == 0, err
    assert GraphStore(s.path).stage_record("train/1")["steps"] == 3
    assert not lock_path(s.path).exists()


def test_embed_while_embed_runs_and_preprocess_overwrite_of_it(tmp_path, monkeypatch):
    s = make_store(tmp_path / "g.zarr", n=800)
    assert main(["train", str(s.path), *TRAIN]) == 0
    ref = tmp_path / "ref.zarr"
    shutil.copytree(s.path, ref)
    assert main(["embed", str(ref), "--layer", "1"]) == 0
    pre = GraphStore(s.path).stage_record("preprocess")
    np.save(tmp_path / "e.npy", np.array([[0, 1], [1, 2], [2, 0]], dtype=np.int64))
    np.save(tmp_path / "x.npy", np.ones((3, 16), dtype=np.float32))

    h = Holder(["embed", s.path, "--layer", "1"], tmp_path / "hold", monkeypatch)
    refused(cli_run(["embed", s.path, "--layer", "1"]), h, "embed")
    line = refused(cli_run(["preprocess", "--edges", tmp_path / "e.npy", "--features",
                            tmp_path / "x.npy", "--out", s.path, "--overwrite"]), h, "embed")
    assert "(embed layer 1, since " in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "e.npy", "g.zarr", "g.zarr.lock", "g.zarr.runs", "hold", "ref.zarr", "ref.zarr.runs",
        "x.npy"]                                      # no staging directory was started
    rc, err = h.finish()
    assert rc == 0, err
    got = GraphStore(s.path)
    assert got.stage_record("preprocess") == pre and got.num_nodes == 800
    assert got.stage_record("embed/1") is not None
    np.testing.assert_array_equal(got.table(1), GraphStore(ref).table(1))
    assert main(["validate", str(s.path)]) == 0


def test_readers_work_while_a_writer_holds_the_lock(tmp_path, monkeypatch, capsys):
    s = make_store(tmp_path / "g.zarr")
    h = Holder(["upgrade", s.path], tmp_path / "hold", monkeypatch)     # a writer, cheap
    assert main(["info", str(s.path)]) == 0
    assert main(["evaluate", str(s.path), "--layer", "0", "--num-splits", "1",
                 "--epochs", "5", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["layer"] == 0
    assert main(["export", str(s.path), "--layer", "0", "--out", str(tmp_path / "x.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), s.table(0))
    assert lock_path(s.path).exists()                  # still held: nobody took it over
    rc, err = h.finish()
    assert rc == 0, err


def test_a_dead_writers_lock_is_taken_over(tmp_path, monkeypatch):
    s = make_store(tmp_path / "g.zarr")
    h = Holder(["upgrade", s.path], tmp_path / "hold", monkeypatch)
    os.kill(h.pid, signal.SIGKILL)
    h.proc.wait()
    assert json.loads(lock_path(s.path).read_text())["pid"] == h.pid    # left behind
    assert main(["train", str(s.path), *TRAIN]) == 0
    assert not lock_path(s.path).exists()
    # a lock file naming a dead pid that no process holds (e.g. copied with the store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    lock_path(s.path).write_text(json.dumps({"pid": int(dead.stdout), "host": "elsewhere",
                                             "command": "lrgi-ooc embed"}))
    assert main(["embed", str(s.path), "--layer", "1"]) == 0
    assert GraphStore(s.path).has(embeddings_key(1))


def test_layer_and_run_take_the_lock_once_and_re_enter_it(tmp_path):
    s = make_store(tmp_path / "g.zarr")
    assert main(["layer", str(s.path), *TRAIN]) == 0
    assert GraphStore(s.path).stage_record("embed/1") is not None
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'store = "{s.path}"\nnum_layers = 2\n[train]\ndim = 16\nheads = 2\n'
                   'batch_size = 64\nfanout = "4,3"\nsteps = 3\n'
                   '[evaluate]\nlayers = [0, 2]\nnum_splits = 1\nepochs = 5\n')
    assert main(["run", str(cfg)]) == 0
    assert GraphStore(s.path).stage_record("embed/2") is not None
    assert not lock_path(s.path).exists()


def test_the_lock_re_enters_in_its_thread_only(tmp_path):
    store = tmp_path / "g.zarr"
    with pytest.raises(InputError, match="store does not exist"):
        with writer_lock(store, "train layer 1"):
            pass
    store.mkdir()
    errors: list[str] = []

    def other() -> None:
        try:
            with writer_lock(store, "embed layer 1"):
                pass
        except InputError as e:
            errors.append(str(e))

    with writer_lock(store, "run"):
        with writer_lock(store, "train layer 1"):           # re-entered
            rec = json.loads(lock_path(store).read_text())
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert lock_path(store).exists()                     # the inner block let go of nothing
    assert rec["pid"] == os.getpid() and rec["operation"] == "run"
    assert errors == [f"{store}: another thread of this process (pid {os.getpid()}) is "
                      "writing this store; one writer at a time"]
    assert not lock_path(store).exists()
    with writer_lock(store, "again"):                         # released: taken again
        pass
