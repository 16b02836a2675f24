"""Chunk checksums (format v3): every chunk file is its padded bytes, then zarr's 4-byte
CRC32C trailer. zarr-python reads and verifies our chunks (and we read its), `validate` names
the array and chunk of a flipped byte, a truncated, over-long or missing chunk file, readers
fail with one line instead of reading garbage, and `upgrade` adds the trailers to a v2 store,
rerunnable after a kill."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import lrgi_ooc
from graphs import downgrade_to_v2, make_store
from lrgi_ooc.base.errors import InputError
from lrgi_ooc.nn.blockweights import GATWeights
from lrgi_ooc.nn.trained import load_block, write_weights
from lrgi_ooc.stages import inspect as ins
from lrgi_ooc.store import layout as st
from lrgi_ooc.store.layout import GraphStore

N = 9000                       # embeddings in chunks of 4096 rows: 3 chunks, the last padded
EMB = st.embeddings_key(1)
LIN = st.weights_key(1, "lin")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("checksums")
    s = make_store(d / "g.zarr", n=N, feat=8, avg_deg=3)
    rng = np.random.default_rng(0)              # a layer "trained" by hand: no torch needed

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)
    conf = {"dim": 8, "heads": 2}
    write_weights(s, 1, GATWeights(w(8, 8), w(2, 4), w(2, 4), w(8), w(8, 8), heads=2), conf,
                  in_dim=8)
    s.mark_stage(st.train_stage(1), conf)
    lrgi_ooc.embed_layer(s.path, layer=1, chunk_rows=4096, device="cpu")
    return s.path


@pytest.fixture
def copy(trained, tmp_path) -> GraphStore:
    shutil.copytree(trained, tmp_path / "c.zarr")
    return GraphStore(tmp_path / "c.zarr")


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def _files(root: Path) -> dict[str, bytes]:
    """Every file of a store (metadata and chunks) by path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_zarr_writes_the_same_chunk_files_and_each_side_reads_the_other(tmp_path):
    from zarr.codecs import BytesCodec, Crc32cCodec
    x = np.random.default_rng(0).standard_normal((10_000, 3)).astype(np.float32)
    ref = zarr.create_array(store=str(tmp_path / "ref"), name="t", shape=x.shape,
                            dtype=x.dtype, chunks=(4096, 3), serializer=BytesCodec(),
                            compressors=[Crc32cCodec()], filters=None, fill_value=0,
                            chunk_key_encoding={"name": "default", "separator": "/"})
    ref[...] = x
    s = GraphStore.create(tmp_path / "g.zarr", {"num_nodes": 10_000, "num_edges": 0})
    a = s.create_array("t", x.shape, x.dtype, chunk_rows=4096)
    for i in range(a.num_chunks):
        s.write_chunk("t", i, x[slice(*a.chunk_bounds(i))])
    assert a.checksummed and a.raw and a.file_nbytes == 4096 * 12 + 4
    for i in range(3):                          # byte for byte, the padded last one too
        ours = a.chunk_path(i).read_bytes()
        assert ours == (tmp_path / "ref" / "t" / "c" / str(i) / "0").read_bytes()
        assert len(ours) == a.file_nbytes
    np.testing.assert_array_equal(zarr.open_array(str(s.path / "t"), mode="r")[...], x)
    r = GraphStore.create(tmp_path / "r.zarr", {"num_nodes": 10_000, "num_edges": 0})
    shutil.copytree(tmp_path / "ref" / "t", r.path / "t")       # zarr's array, our reader
    np.testing.assert_array_equal(r.mmap("t"), x)
    assert [r.chunk_problem("t", i) for i in range(3)] == [None] * 3
    _flip(a.chunk_path(2), 5)
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(str(s.path / "t"), mode="r")[...]
    assert s.chunk_problem("t", 2).startswith("checksum mismatch")


def test_the_trained_store_is_sound_and_zarr_verifies_every_array(trained, run_cli):
    rc, out, err = run_cli("validate", trained)
    assert rc == 0 and out.strip().endswith(": OK"), (out, err)
    s = GraphStore(trained)
    keys = s.array_keys()
    assert {st.INDPTR, st.INDICES, st.FEATURES, st.LABELS, EMB, LIN} <= set(keys)
    assert s.info(EMB).num_chunks == 3
    for key in keys:
        a = s.info(key)
        assert a.checksummed
        np.testing.assert_array_equal(zarr.open_array(str(trained / key), mode="r")[...],
                                      s.read_rows(key, 0, a.num_rows))
        for i in range(a.num_chunks):
            assert os.path.getsize(a.chunk_path(i)) == a.chunk_nbytes + 4


def test_the_memory_maps_read_the_data_part_without_zarr(trained, monkeypatch):
    s = GraphStore(trained)
    monkeypatch.setattr(GraphStore, "zarr_array", lambda self, key: 1 / 0)
    for key in (st.INDPTR, st.INDICES, st.FEATURES, EMB):
        a = s.info(key)
        m = s.mmap(key)
        assert m.shape == a.shape and m.dtype == a.dtype
        np.testing.assert_array_equal(m, s.read_rows(key, 0, a.num_rows))
    emb = zarr.open_array(str(trained / EMB), mode="r")[...]
    np.testing.assert_array_equal(s.table(1), emb)
    rows = np.random.default_rng(1).integers(0, N, 500)
    np.testing.assert_array_equal(s.table(1)[rows], emb[rows])
    with pytest.raises(ValueError, match="checksums stale"):
        s.mmap(EMB, writable=True)


@pytest.mark.parametrize("key,chunk,where", [
    (st.INDPTR, 0, "middle"), (st.INDICES, 0, "first"), (st.FEATURES, 0, "middle"),
    (EMB, 1, "middle"), (EMB, 2, "padding"), (EMB, 0, "trailer"), (LIN, 0, "first")])
def test_a_flipped_byte_is_named_by_validate(copy, key, chunk, where, run_cli):
    a = copy.info(key)
    used = (a.chunk_bounds(chunk)[1] - a.chunk_bounds(chunk)[0]) * a.row_nbytes
    offset = {"first": 0, "middle": used // 2, "padding": used + 17,
              "trailer": a.file_nbytes - 1}[where]
    if where == "padding":
        assert used + 17 < a.chunk_nbytes        # the rows past N are covered too
    _flip(a.chunk_path(chunk), offset)
    rc, out, err = run_cli("validate", copy.path)
    assert rc == 1, (out, err)
    assert len(out.strip().splitlines()) == 1
    assert f"CORRUPT: {key}: chunk {chunk}: checksum mismatch" in out, out


def test_every_chunk_of_every_array_is_covered(copy):
    rng = np.random.default_rng(3)
    for key in copy.array_keys():
        a = copy.info(key)
        for i in range(a.num_chunks):
            off = int(rng.integers(0, a.file_nbytes))
            _flip(a.chunk_path(i), off)
            assert ins.validate(GraphStore(copy.path)) == \
                f"{key}: chunk {i}: " + copy.chunk_problem(key, i), (key, i, off)
            assert "checksum mismatch" in copy.chunk_problem(key, i)
            _flip(a.chunk_path(i), off)
    assert ins.validate(GraphStore(copy.path)) is None


@pytest.mark.parametrize("key,chunk", [(EMB, 1), (st.INDICES, 0), (LIN, 0)])
def test_a_truncated_or_overlong_chunk_is_named_and_readers_fail_in_one_line(copy, key,
                                                                             chunk, run_cli):
    a = copy.info(key)
    p = a.chunk_path(chunk)
    os.truncate(p, a.file_nbytes - 3)                # the trailer cut short
    rc, out, _ = run_cli("validate", copy.path)
    assert rc == 1 and f"{key}: chunk {chunk}: truncated chunk file ({a.file_nbytes - 3} " \
        f"bytes, expected {a.file_nbytes})" in out, out
    fresh = GraphStore(copy.path)
    msg = f"array '{key}' chunk {chunk}: truncated chunk file"
    with pytest.raises(InputError, match=msg):
        fresh.read_rows(key, 0, a.num_rows)
    if key == LIN:                         # weights are read whole, never mapped
        with pytest.raises(InputError, match=msg):
            load_block(fresh, 1)
    else:
        with pytest.raises(InputError, match=msg):
            fresh.mmap(key)
    with open(p, "ab") as f:
        f.write(b"\0" * 7)
    rc, out, _ = run_cli("validate", copy.path)
    assert rc == 1 and f"{key}: chunk {chunk}: chunk file too long" in out, out
    with pytest.raises(InputError, match=f"array '{key}' chunk {chunk}: chunk file too long"):
        r0 = a.chunk_bounds(chunk)[0]
        GraphStore(copy.path).read_rows(key, r0, r0 + 1)


def test_a_flipped_weight_byte_stops_the_model_from_loading(copy, run_cli):
    _flip(copy.info(LIN).chunk_path(0), 40)
    with pytest.raises(InputError, match=f"array '{LIN}' chunk 0: checksum mismatch"):
        load_block(copy, 1)
    copy.delete(EMB)
    rc, _, err = run_cli("embed", copy.path, "--layer", "1", "--device", "cpu")
    assert rc == 2 and "checksum mismatch" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("key,chunk", [(EMB, 1), (st.INDPTR, 0), (st.FEATURES, 0),
                                       (LIN, 0)])
def test_a_missing_chunk_is_named(copy, key, chunk, run_cli):
    copy.info(key).chunk_path(chunk).unlink()
    rc, out, _ = run_cli("validate", copy.path)
    assert rc == 1 and f"CORRUPT: {key}: chunk {chunk} is missing" in out, out


def test_chunks_of_arrays_still_being_written_may_be_missing(copy, run_cli):
    copy.info(EMB).chunk_path(1).unlink()               # embed killed mid-pass ...
    copy.clear_stage(st.embed_stage(1))                 # ... so its stage is not complete
    for key in st.projection_keys(1):                   # and its transient projection
        copy.create_array(key, (N, 4), np.float32, chunk_rows=4096)
    rc, out, err = run_cli("validate", copy.path)
    assert rc == 0 and out.strip().endswith(": OK"), (out, err)


def test_a_v2_store_gets_the_upgrade_command(copy, run_cli):
    downgrade_to_v2(copy.path)
    for cmd in (("info", copy.path), ("validate", copy.path),
                ("embed", copy.path, "--layer", "1")):
        rc, _, err = run_cli(*cmd)
        assert rc == 2, err
        assert err.strip().endswith(f"store format version 2 has no chunk checksums; run "
                                    f"`lrgi-ooc upgrade {copy.path}` once (adds them in "
                                    "place, rerunnable)"), err
        assert len(err.strip().splitlines()) == 1


def _chunk_count(store: GraphStore) -> int:
    return sum(store.chunk_written(k, i) for k in store.array_keys()
               for i in range(store.info(k).num_chunks))


def test_upgrade_v2_to_v3_restores_the_store_byte_for_byte(trained, copy, run_cli):
    before = _files(trained)
    downgrade_to_v2(copy.path)
    assert all(not GraphStore(copy.path, _upgrading=True).info(k).checksummed
               for k in copy.array_keys())
    rc, out, err = run_cli("upgrade", copy.path)
    assert rc == 0, err
    assert f"format v2 -> v3; checksums added to {_chunk_count(copy)} chunk files" in out
    assert _files(copy.path) == before
    assert GraphStore(copy.path).meta == GraphStore(trained).meta
    rc, out, _ = run_cli("upgrade", copy.path)
    assert rc == 0 and "already format v3" in out
    assert ins.validate(GraphStore(copy.path)) is None


@pytest.mark.parametrize("kill_after", [1, 6, 9])
def test_an_upgrade_killed_midway_is_finished_by_a_rerun(trained, copy, monkeypatch, kill_after):
    downgrade_to_v2(copy.path)
    real, calls = os.replace, []

    def replace(a, b):                       # the kill lands right after a file's rename
        real(a, b)
        if Path(b).is_relative_to(copy.path):
            calls.append(b)
            if len(calls) == kill_after:
                raise KeyboardInterrupt
    monkeypatch.setattr(st.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        lrgi_ooc.upgrade(copy.path)
    monkeypatch.setattr(st.os, "replace", real)
    partial = GraphStore(copy.path, _upgrading=True)
    assert partial.meta["format_version"] == 2          # the version is written last
    with pytest.raises(InputError, match="format version 2"):
        GraphStore(copy.path)
    r = lrgi_ooc.upgrade(copy.path)
    assert (r["from"], r["to"], r["layers"]) == (2, 3, [])
    assert r["chunks"] == _chunk_count(copy) - (kill_after - sum(
        Path(c).name == "zarr.json" for c in calls))
    assert _files(copy.path) == _files(trained)
    assert ins.validate(GraphStore(copy.path)) is None


def test_upgrade_refuses_a_damaged_chunk_without_touching_it(copy):
    downgrade_to_v2(copy.path)
    a = GraphStore(copy.path, _upgrading=True).info(EMB)
    os.truncate(a.chunk_path(1), 100)
    with pytest.raises(InputError, match=f"array '{EMB}' chunk 1: truncated chunk file"):
        lrgi_ooc.upgrade(copy.path)
    assert os.path.getsize(a.chunk_path(1)) == 100
    assert GraphStore(copy.path, _upgrading=True).meta["format_version"] == 2
