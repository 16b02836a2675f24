"""The store layer: stitched memory maps, atomic chunks, publishing and stale leftovers."""
from __future__ import annotations

import os

import numpy as np
import zarr

from lrgi_ooc.store.layout import GraphStore
from lrgi_ooc.store.publish import clean_stale, publish, staging_path


def test_stitched_map_equals_zarr_and_missing_chunks_read_zero(tmp_path):
    s = GraphStore.create(tmp_path / "g.zarr", {"num_nodes": 10_000, "num_edges": 0})
    x = np.random.default_rng(0).standard_normal((10_000, 3)).astype(np.float16)
    s.create_array("t", x.shape, x.dtype, chunk_rows=4096)   # 3 chunks, the last one padded
    w = s.stream_writer("t")
    w.write(x[:5000])
    w.write(x[5000:])
    w.close()
    np.testing.assert_array_equal(s.mmap("t"), x)
    np.testing.assert_array_equal(zarr.open_array(str(s.path / "t"))[...], x)
    os.remove(s.info("t").chunk_path(1))
    m = np.asarray(s.mmap("t"))
    assert (m[4096:8192] == 0).all()
    np.testing.assert_array_equal(m[8192:], x[8192:])
    np.testing.assert_array_equal(s.read_rows("t", 4000, 4200)[:96], x[4000:4096])


def test_stale_partial_chunks_of_dead_writers_are_removed(tmp_path):
    s = GraphStore.create(tmp_path / "g.zarr", {"num_nodes": 10, "num_edges": 0})
    s.create_array("t", (10, 2), np.float32)
    c = s.info("t").chunk_path(0)
    c.parent.mkdir(parents=True, exist_ok=True)
    dead = c.with_name(f".{c.name}.tmp-999999999")
    live = c.with_name(f".{c.name}.tmp-{os.getpid()}")
    dead.write_bytes(b"x")
    live.write_bytes(b"x")
    assert s.remove_stale_partials("t") == 1
    assert not dead.exists() and live.exists()


def test_interrupted_overwrite_swap_restores_the_old_store(tmp_path):
    out = tmp_path / "g.zarr"
    GraphStore.create(out, {"num_nodes": 1, "num_edges": 0, "tag": "old"})
    # a run killed between moving the old store aside and moving the new one in
    os.rename(out, tmp_path / ".g.zarr.old-999999999")
    clean_stale(out)
    assert GraphStore(out).meta["tag"] == "old"
    new = staging_path(out)
    GraphStore.create(new, {"num_nodes": 1, "num_edges": 0, "tag": "new"})
    publish(new, out, overwrite=True)
    assert GraphStore(out).meta["tag"] == "new"
    assert not any(p.name.startswith(".g.zarr.") for p in tmp_path.iterdir())


def test_metadata_is_what_zarr_writes_and_zarr_reads_the_store(tmp_path):
    # the store writes zarr.json itself (no zarr import on the hot path): it must be the same
    # text zarr-python writes for an uncompressed, checksummed array, and zarr must open the
    # whole store and read (and verify) every value
    import json

    from zarr.codecs import BytesCodec, Crc32cCodec

    from lrgi_ooc.store.layout import _zarr_array_meta
    for dt in ("bool", "uint8", "int8", "float16", "float32", "int32", "int64"):
        for shape in ((5,), (5, 3), (0, 7)):
            zarr.create_array(store=str(tmp_path / "ref"), name="a", shape=shape,
                              dtype=np.dtype(dt), chunks=(4096,) + shape[1:],
                              serializer=BytesCodec(), compressors=[Crc32cCodec()],
                              filters=None, fill_value=0, zarr_format=3, overwrite=True,
                              chunk_key_encoding={"name": "default", "separator": "/"})
            ref = (tmp_path / "ref" / "a" / "zarr.json").read_text()
            assert json.dumps(_zarr_array_meta(shape, np.dtype(dt), 4096), indent=2) == ref
    s = GraphStore.create(tmp_path / "g.zarr", {"num_nodes": 9000, "num_edges": 0})
    x = np.arange(9000 * 2, dtype=np.int32).reshape(9000, 2)
    s.create_array("deep/er/t", x.shape, x.dtype, chunk_rows=4096)
    s.write_chunk("deep/er/t", 0, x[:4096])
    s.write_chunk("deep/er/t", 2, x[8192:])
    g = zarr.open_group(str(s.path), mode="r")
    assert g.attrs["lrgi_ooc"]["num_nodes"] == 9000
    got = g["deep/er/t"][...]
    np.testing.assert_array_equal(got[:4096], x[:4096])
    assert (got[4096:8192] == 0).all()
    np.testing.assert_array_equal(got[8192:], x[8192:])
    s.create_array("deep/er/t", (3,), np.float32)       # re-created: old chunks gone
    np.testing.assert_array_equal(zarr.open_array(str(s.path / "deep/er/t"))[...], np.zeros(3))


def test_mark_stage_writes_fields_and_record_in_one_durable_write(tmp_path, monkeypatch):
    import lrgi_ooc.store.layout as st
    s = GraphStore.create(tmp_path / "g", {"num_nodes": 3})
    writes = []
    real = st._write_json_atomic
    monkeypatch.setattr(st, "_write_json_atomic",
                        lambda path, obj, durable=True: (writes.append(durable),
                                                         real(path, obj, durable)))
    s.mark_stage("preprocess", {"a": 1}, fields={"num_edges": 7}, steps=3)
    assert writes == [True]
    meta = GraphStore(tmp_path / "g").meta
    assert meta["num_edges"] == 7 and meta["num_nodes"] == 3
    assert meta["stages"]["preprocess"]["config"] == {"a": 1}
    assert meta["stages"]["preprocess"]["steps"] == 3
