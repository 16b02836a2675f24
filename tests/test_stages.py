"""train / embed / layer as stages: outputs, resume after SIGKILL, errors (exit 2)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from graphs import downgrade_to_v1, edge_index_of, make_store
from lrgi_ooc.cli.main import main
from lrgi_ooc.store.layout import GraphStore, embeddings_key, train_embeddings_key
from lrgi_ooc.nn.trained import load_weights

SMALL = ["--dim", "16", "--heads", "2", "--batch-size", "64", "--fanout", "4,3"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LRGI_OOC_QUIET="1")
    return subprocess.run([sys.executable, "-m", "lrgi_ooc", *args], capture_output=True,
                          text=True, env=env)


def start_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, LRGI_OOC_QUIET="1")
    return subprocess.Popen([sys.executable, "-m", "lrgi_ooc", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_layer_writes_table_equal_to_full_graph_forward(tmp_path):
    s = make_store(tmp_path / "g.zarr", n=400, feat=8)
    assert main(["layer", str(s.path), "--layer", "1", "--steps", "6", *SMALL]) == 0
    assert main(["layer", str(s.path), "--layer", "2", "--steps", "6", *SMALL]) == 0
    ei = torch.from_numpy(edge_index_of(s))
    x = torch.from_numpy(np.array(s.table(0)))
    for layer in (1, 2):
        block, _ = load_weights(s, layer)
        with torch.no_grad():
            x = block(x, ei)
        np.testing.assert_allclose(np.asarray(s.table(layer)), x.numpy(), rtol=1e-5, atol=1e-5)
    assert s.stage_complete("train/2") and s.stage_complete("embed/2")
    # a second run skips both stages and changes nothing
    before = np.array(s.table(2))
    assert main(["layer", str(s.path), "--layer", "2", "--steps", "6", *SMALL]) == 0
    np.testing.assert_array_equal(np.asarray(s.table(2)), before)


def test_changed_config_retrains_and_invalidates_downstream(tmp_path):
    s = make_store(tmp_path / "g.zarr", n=300, feat=8)
    for layer in (1, 2):
        assert main(["layer", str(s.path), "--layer", str(layer), "--steps", "4", *SMALL]) == 0
    first = np.array(s.table(1))
    assert main(["layer", str(s.path), "--layer", "1", "--steps", "4", "--seed", "7", *SMALL]) == 0
    assert not np.array_equal(first, np.asarray(s.table(1)))
    # layer 2 was trained on the old table: its record no longer matches its input
    assert main(["train", str(s.path), "--layer", "2", "--steps", "4", *SMALL]) == 0
    assert s.stage_complete("train/2") and not s.stage_complete("embed/2")


def _wait_for(path_fn, proc, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not path_fn():
        assert proc.poll() is None, "process ended before the kill point"
        if time.monotonic() > deadline:
            pytest.fail("the kill point was never reached: the run seems stuck")
        time.sleep(0.05)


def test_train_killed_then_resumed_matches_uninterrupted(tmp_path):
    # enough steps that the kill, right after the first checkpoint, lands mid-training
    args = ["--layer", "1", "--steps", "400", "--checkpoint-every", "5", *SMALL]
    ref = make_store(tmp_path / "ref.zarr", n=600, feat=8)
    assert run_cli("layer", str(ref.path), *args).returncode == 0
    s = make_store(tmp_path / "g.zarr", n=600, feat=8)
    ckpt = Path(str(s.path) + ".runs") / "train-1" / "checkpoint.pt"
    p = start_cli("train", str(s.path), *args)
    _wait_for(ckpt.exists, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not GraphStore(s.path).stage_complete("train/1")
    r = run_cli("layer", str(s.path), *args)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.asarray(GraphStore(s.path).table(1)),
                                  np.asarray(GraphStore(ref.path).table(1)))


def test_embed_recomputes_a_table_deleted_after_completion(tmp_path):
    # the stage record alone must not make `embed` skip when its table is gone
    s = make_store(tmp_path / "g.zarr", n=300, feat=8)
    assert main(["layer", str(s.path), "--layer", "1", "--steps", "2", *SMALL]) == 0
    ref = np.array(GraphStore(s.path).table(1))
    GraphStore(s.path).delete(embeddings_key(1))
    assert main(["embed", str(s.path), "--layer", "1"]) == 0
    np.testing.assert_array_equal(np.asarray(GraphStore(s.path).table(1)), ref)


def test_embed_runs_without_torch_and_from_a_checkpoint_only(tmp_path):
    # embed reads block.npz (numpy): torch stays out of the process and of Dask workers
    s = make_store(tmp_path / "g.zarr", n=300, feat=8)
    assert main(["train", str(s.path), "--layer", "1", "--steps", "2", *SMALL]) == 0
    code = ("import sys; from lrgi_ooc.stages.embed import embed_layer; "
            f"embed_layer({str(s.path)!r}, 1); print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, LRGI_OOC_QUIET="1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"
    ref = np.array(GraphStore(s.path).table(1))
    # a format-v1 store trained before block.npz existed (its weights only in the torch
    # checkpoint in .runs): refused with the command that upgrades it, then embeds the same
    downgrade_to_v1(s.path, [1], npz=False)
    GraphStore(s.path, _upgrading=True).delete(embeddings_key(1))
    assert main(["embed", str(s.path), "--layer", "1"]) == 2
    assert main(["upgrade", str(s.path)]) == 0
    assert main(["embed", str(s.path), "--layer", "1"]) == 0
    np.testing.assert_array_equal(np.asarray(GraphStore(s.path).table(1)), ref)


def test_embed_killed_then_resumed_matches_uninterrupted(tmp_path):
    # 5 output chunks of 4096 rows, small edge pieces: the kill lands mid-pass
    args = ["--layer", "1", "--steps", "3", *SMALL]
    s = make_store(tmp_path / "g.zarr", n=18000, feat=8, avg_deg=4)
    assert main(["train", str(s.path), *args]) == 0
    p = start_cli("embed", str(s.path), "--layer", "1", "--max-edges", "200",
                  "--chunk-rows", "4096")
    info = lambda: GraphStore(s.path).has(embeddings_key(1)) and \
        GraphStore(s.path).chunk_written(embeddings_key(1), 0)
    _wait_for(info, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = GraphStore(s.path)
    assert not s.stage_complete("embed/1")
    r = run_cli("embed", str(s.path), "--layer", "1")
    assert r.returncode == 0, r.stderr
    got = np.array(s.table(1))
    block, _ = load_weights(s, 1)
    with torch.no_grad():
        ref = block(torch.from_numpy(np.array(s.table(0))),
                    torch.from_numpy(edge_index_of(s))).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_errors_exit_2(tmp_path, capsys):
    s = make_store(tmp_path / "g.zarr", n=200, feat=8)
    cases = [
        (["train", str(s.path), "--layer", "2", *SMALL], "layer 1"),
        (["embed", str(s.path), "--layer", "1"], "not trained"),
        (["train", str(s.path), "--layer", "1", "--dim", "10", "--heads", "4"], "divisible"),
        (["train", str(s.path), "--layer", "1", "--fanout", "10"], "fanout"),
        (["train", str(tmp_path / "nope.zarr"), "--layer", "1"], "does not exist"),
    ]
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[train]\ndimm = 3\n")
    cases.append((["train", str(s.path), "--layer", "1", "--config", str(bad_cfg)], "dimm"))
    wrong_type = tmp_path / "wrong.toml"
    wrong_type.write_text("[train]\ndim = 'wide'\n")
    cases.append((["train", str(s.path), "--layer", "1", "--config", str(wrong_type)], "dim"))
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1, err
    # a store of another format version is refused
    s.update_meta(format_version=99)
    assert main(["train", str(s.path), "--layer", "1"]) == 2
    assert "format version" in capsys.readouterr().err


def test_inductive_layer_trains_on_training_subgraph(tmp_path):
    s = make_store(tmp_path / "g.zarr", n=400, feat=8)
    assert main(["layer", str(s.path), "--layer", "1", "--steps", "3", "--inductive", *SMALL]) == 0
    s = GraphStore(s.path)
    train = s.splits()[0]["train"]
    # the induced subgraph keeps exactly the edges between training nodes
    ei = edge_index_of(s)
    keep = np.isin(ei[0], train) & np.isin(ei[1], train)
    from lrgi_ooc.sample.subgraph import graph_for
    sub_ptr, sub_idx = graph_for(s, True)
    dst = np.repeat(np.arange(s.num_nodes), np.diff(sub_ptr))
    np.testing.assert_array_equal(np.stack([np.asarray(sub_idx), dst]), ei[:, keep])
    # train_embeddings = the block on that subgraph, rows in split/train order
    block, _ = load_weights(s, 1)
    x = torch.from_numpy(np.array(s.table(0)))
    with torch.no_grad():
        sub = block(x, torch.from_numpy(ei[:, keep])).numpy()
        full = block(x, torch.from_numpy(ei)).numpy()
    np.testing.assert_allclose(np.asarray(s.mmap(train_embeddings_key(1))), sub[train],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s.table(1)), full, rtol=1e-5, atol=1e-5)
    assert main(["evaluate", str(s.path), "--layer", "1", "--epochs", "5"]) == 0
