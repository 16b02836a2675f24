"""The training row reader (pread + row cache): the memory map's exact rows, whatever the cache
size or thread count, and the same trained weights as the memory-map path."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from graphs import make_store
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.cli.main import main
from lrgi_ooc.nn.trained import load_weights
from lrgi_ooc.sample.loader import BatchLoader, gather_rows
from lrgi_ooc.sample.onehop import OneHopSampler
from lrgi_ooc.sample.rowreader import RowReader, cache_rows_for, choose_reader
from lrgi_ooc.stages.config import TrainConfig
from lrgi_ooc.stages.train import stage_config, train_layer
from lrgi_ooc.store.layout import MIN_CHUNK_ROWS, GraphStore

CR = MIN_CHUNK_ROWS                     # rows per chunk of the test tables
N = 2 * CR + 777                        # three chunks, the last one partial
W = 5
CACHES = {"none": 0, "small": 3000, "large": 10 << 20}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """A store with a float32 and a float16 [N, W] table in chunks of CR rows; a third,
    'holes', whose middle chunk was never written (reads as zeros)."""
    s = GraphStore.create(tmp_path_factory.mktemp("rows") / "t.zarr",
                          {"num_nodes": N, "num_edges": 0})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, W)).astype(np.float32)
    for key, dt in (("f32", np.float32), ("f16", np.float16), ("holes", np.float32)):
        s.create_array(key, (N, W), dt, chunk_rows=CR)
        for i in range(3):
            if key == "holes" and i == 1:
                continue
            s.write_chunk(key, i, x[i * CR:(i + 1) * CR].astype(dt))
    return s


def batches(seed: int = 0) -> list[np.ndarray]:
    """Node lists in local (unsorted) order: random, across chunk boundaries, the last
    rows, one row, empty."""
    rng = np.random.default_rng(seed)
    edge = np.array([CR - 2, CR - 1, CR, CR + 1, 2 * CR - 1, 2 * CR, N - 1, N - 2, 0])
    return [rng.choice(N, 1500, replace=False), rng.permutation(edge),
            rng.permutation(np.arange(N - 300, N)), np.array([N - 1]),
            np.zeros(0, np.int64), rng.choice(N, 1500, replace=False)]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("key", ["f32", "f16", "holes"])
@pytest.mark.parametrize("cache", sorted(CACHES))
@pytest.mark.parametrize("threads", [1, 4])
def test_reader_returns_the_memory_maps_rows(tables, key, cache, threads):
    table = tables.mmap(key)
    r = RowReader(tables.row_file(key, threads), table.dtype, W, CACHES[cache])
    outs = [np.float32] + ([np.float16] if table.dtype == np.float16 else [])
    for rep in range(2):                                   # second pass: from the cache
        for nodes in batches():
            for dt in outs:
                got = np.full((1600, W), np.nan, dt)
                want = np.full((1600, W), np.nan, dt)
                gather_rows(table, nodes, want)
                assert r.gather(nodes, got).shape == (nodes.size, W)
                assert np.array_equal(bits(got), bits(want)), (key, cache, threads, rep)
    if key == "holes":                                      # the absent chunk: zeros
        assert not np.any(np.asarray(table[CR:2 * CR]))
    r.close()


def test_file_reads_coalesce_runs_and_allow_repeats(tables):
    table = tables.mmap("f32")
    f = tables.row_file("f32", threads=2)
    rows = np.array([3, 4, 5, 5, CR - 1, CR, CR + 1, N - 1])   # one chunk boundary inside
    out = np.empty((rows.size, W), np.float32)
    f.read(rows, out)
    assert np.array_equal(out, np.asarray(table)[rows])
    # runs: 3-5 | 5 | CR-1 | CR..CR+1 | N-1  (adjacent rows in one chunk are one read)
    assert f.reads == 5 and f.bytes_read == rows.size * W * 4
    with pytest.raises(ValueError, match="ascending"):
        f.read(np.array([5, 3]), out)
    with pytest.raises(ValueError, match="ascending"):
        f.read(np.array([N]), out)
    f.close()


def test_cache_counts_hits_and_stays_within_its_rows(tables):
    table = tables.mmap("f32")
    nodes = np.random.default_rng(1).choice(N, 400, replace=False)
    out = np.empty((400, W), np.float32)
    big = RowReader(tables.row_file("f32", 2), np.float32, W, CACHES["large"])
    big.gather(nodes, out)
    first = dict(big.stats())
    assert first["hits"] == 0 and first["misses"] == 400
    big.gather(nodes, out)                                  # the same batch again: all hits
    again = big.stats()
    assert again["hits"] == 400 and again["misses"] == 400 and again["reads"] == first["reads"]
    assert np.array_equal(out, np.asarray(table)[nodes])
    none = RowReader(tables.row_file("f32", 2), np.float32, W, 0)
    none.gather(nodes, out)
    none.gather(nodes, out)
    assert none.stats()["hits"] == 0 and none.stats()["misses"] == 800
    assert none.cache_rows == 0 and cache_rows_for(0, 20) == 0
    small = RowReader(tables.row_file("f32", 2), np.float32, W, CACHES["small"])
    assert 0 < small.cache_rows == cache_rows_for(CACHES["small"], W * 4) < 400
    small.gather(nodes, out)
    small.gather(nodes, out)
    s = small.stats()
    assert 0 < s["hits"] <= small.cache_rows and s["hits"] + s["misses"] == 800
    # the whole table at most 1.25 N rows, however large the budget
    assert big.cache_rows <= N * 5 // 4 + 8 and big.cache_nbytes < CACHES["large"]
    for r in (big, none, small):
        r.close()


def test_wrong_size_chunk_is_one_line_naming_the_array(tmp_path):
    s = GraphStore.create(tmp_path / "t.zarr", {"num_nodes": CR, "num_edges": 0})
    s.write_array("x", np.ones((CR, 4), np.float32))
    path = next(p for p in (s.path / "x").rglob("*") if p.is_file() and p.name != "zarr.json")
    with open(path, "r+b") as fh:
        fh.truncate(100)
    f = s.row_file("x")
    with pytest.raises(InputError, match=r"array 'x' chunk 0"):
        f.read(np.array([1]), np.empty((1, 4), np.float32))
    f.close()


def test_auto_keeps_the_memory_map_while_the_table_fits():
    gb = 1 << 30
    assert choose_reader("auto", gb, 2 * gb, available=8 * gb) == "mmap"
    assert choose_reader("auto", 3 * gb, 2 * gb, available=64 * gb) == "pread"   # budget
    assert choose_reader("auto", gb, 8 * gb, available=gb) == "pread"           # MemAvailable
    assert choose_reader("mmap", 9 * gb, gb, available=gb) == "mmap"
    assert choose_reader("pread", 1, 8 * gb, available=8 * gb) == "pread"
    with pytest.raises(ValueError):
        choose_reader("uring", 1, 1)


def test_loader_batches_do_not_depend_on_reader_cache_or_threads(tmp_path):
    s = make_store(tmp_path / "g.zarr", n=900, feat=6, hubs=20)
    sampler = OneHopSampler(s.indptr(), s.indices(), (4, 3), seed=3)
    table = s.table(0)
    seeds = np.arange(s.num_nodes)

    def epoch(rows) -> list[np.ndarray]:
        loader = BatchLoader(sampler, table, seeds, 64, rows=rows)
        xs = [tb.x.numpy().copy() for tb in loader.iter_epoch(1)]
        loader.close()
        return xs

    ref = epoch(None)
    assert len(ref) > 5
    for cache in (0, 2000, 1 << 20):
        for threads in (1, 4):
            r = RowReader(s.row_file("node/features", threads), table.dtype, 6, cache)
            got = epoch(r)
            assert len(got) == len(ref)
            assert all(np.array_equal(bits(a), bits(b)) for a, b in zip(got, ref))
            if cache >= 1 << 20:
                assert r.stats()["hits"] > 0                 # hubs recur across batches
            r.close()


SMALL = dict(dim=16, heads=2, batch_size=64, fanout=(4, 3), steps=4, checkpoint_every=2)


def _weights(store: GraphStore) -> dict[str, torch.Tensor]:
    block, _ = load_weights(store, 1)
    return block.state_dict()


@pytest.fixture
def one_thread():
    """Multi-threaded torch training differs by ~1e-8 between runs: compare at one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_training_weights_are_identical_for_any_reader(tmp_path, one_thread, dtype):
    x = np.random.default_rng(5).standard_normal((500, 12)).astype(dtype)
    ref_store = make_store(tmp_path / "ref.zarr", n=500, features=x, hubs=10)
    rec = train_layer(ref_store.path, 1, TrainConfig(**SMALL, row_reader="mmap"))
    assert rec["rows"] == {"reader": "mmap"}
    ref = _weights(ref_store)
    # (memory limit, threads, reader): auto reads a table larger than the limit by pread
    runs = [("1KB", 1, "auto"), (None, 4, "pread"), ("1GB", 4, "pread")] \
        if dtype == np.float32 else [("1GB", 2, "pread")]
    caches = []
    for i, (limit, threads, reader) in enumerate(runs):
        s = make_store(tmp_path / f"p{i}.zarr", n=500, features=x, hubs=10)
        cfg = TrainConfig(**SMALL, row_reader=reader, read_threads=threads,
                          memory_limit=limit or _small_limit(s, SMALL))
        rec = train_layer(s.path, 1, cfg)
        rows = rec["rows"]
        assert rows["reader"] == "pread" and rows["threads"] == threads
        assert rows["hits"] + rows["misses"] > 0
        caches.append(rows["cache_rows"])
        got = _weights(s)
        assert set(got) == set(ref)
        for k in ref:
            assert torch.equal(got[k], ref[k]), (limit, threads, k)
        # where rows come from is not part of the configuration: nothing to retrain
        assert stage_config(s, 1, cfg) == stage_config(ref_store, 1, TrainConfig(**SMALL))
    if dtype == np.float32:
        assert caches[0] == 0 and 0 < caches[1] < 500 <= caches[2]


def _small_limit(s: GraphStore, cfg: dict) -> str:
    """A --memory-limit leaving a row cache of about 100 rows after the reserved bytes."""
    sampler = OneHopSampler(s.indptr(), s.indices(), cfg["fanout"])
    loader = BatchLoader(sampler, s.table(0), np.arange(s.num_nodes), cfg["batch_size"],
                         prefetch=3)
    cap, width = sampler.max_rows(cfg["batch_size"]), s.table(0).shape[1]
    row = width * s.table(0).dtype.itemsize
    reserved = loader.host_nbytes() + cap * row + 4 * cap * (width + 8 * cfg["dim"])
    return str(reserved + 100 * (row + 9))


def test_pipeline_train_table_takes_the_reader_keys():
    from lrgi_ooc.stages.pipeline import _layer_configs
    doc = {"train": {"row_reader": "pread", "memory_limit": "64MB", "read_threads": 2},
           "layer": {"2": {"row_reader": "mmap"}}}
    one, two = _layer_configs(doc, 2, "c.toml")
    assert (one.row_reader, one.memory_limit, one.read_threads) == ("pread", "64MB", 2)
    assert (two.row_reader, two.read_threads) == ("mmap", 2)
    assert one.result_fields() == two.result_fields() == TrainConfig().result_fields()
    with pytest.raises(InputError, match=r"c.toml \[train\]: row_reader must be auto"):
        _layer_configs({"train": {"row_reader": "disk"}}, 1, "c.toml")


def test_flags_reach_the_reader_and_bad_values_are_one_line(tmp_path, capsys):
    s = make_store(tmp_path / "g.zarr", n=300, feat=8)
    args = ["train", str(s.path), "--layer", "1", "--steps", "2", "--dim", "16", "--heads",
            "2", "--batch-size", "64", "--fanout", "4,3"]
    assert main([*args, "--row-reader", "pread", "--read-threads", "3",
                 "--memory-limit", "64MB"]) == 0
    rec = GraphStore(s.path).stage_record("train/1")["rows"]
    assert rec["reader"] == "pread" and rec["threads"] == 3 and rec["cache_rows"] >= 300
    # the same configuration by the memory map: already trained, not retrained
    assert main([*args, "--row-reader", "mmap"]) == 0
    assert "already trained" in capsys.readouterr().out
    assert main([*args, "--row-reader", "uring"]) == 2
    assert "--row-reader: invalid choice" in capsys.readouterr().err
    assert main([*args, "--memory-limit", "lots"]) == 2
    assert "--memory-limit" in capsys.readouterr().err
    assert main([*args, "--read-threads", "0"]) == 2
    assert "--read-threads must be positive" in capsys.readouterr().err
    assert os.path.isdir(s.path)
