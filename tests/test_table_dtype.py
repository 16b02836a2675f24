"""--table-dtype float16: the layer table and its projection stored as float16, arithmetic in
float32; layer 2 trains from it, evaluate / export / zarr-python read it, bad values are one
line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import lrgi_ooc
from graphs import copy_store, make_store, table
from lrgi_ooc.cli.main import main
from lrgi_ooc.nn import gatkernel
from lrgi_ooc.nn.trained import load_block
from lrgi_ooc.stages.embed import aggregate, embed_layer, project_rows
from lrgi_ooc.store.layout import (FEATURES, GraphStore, embed_stage, embeddings_key,
                                   train_embeddings_key, train_stage)

SMALL = ["--dim", "16", "--heads", "2", "--batch-size", "64", "--fanout", "4,3"]
N, CHUNK = 9000, 4096          # 3 output chunks, the last one partial
EMB = embeddings_key(1)
U = 2.0 ** -11                 # float16's unit roundoff (half an ulp, relative)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Layer 1 trained on a graph with hubs; its float32 table and its float16 table."""
    d = tmp_path_factory.mktemp("f16")
    s = make_store(d / "g.zarr", n=N, feat=8, avg_deg=4, hubs=2)
    assert main(["train", str(s.path), "--layer", "1", "--steps", "3", *SMALL]) == 0
    f32 = copy_store(s.path, d / "f32.zarr")
    f16 = copy_store(s.path, d / "f16.zarr")
    rec32 = embed_layer(f32, 1, chunk_rows=CHUNK)
    rec16 = embed_layer(f16, 1, chunk_rows=CHUNK, table_dtype="float16")
    return s.path, f32, f16, rec32, rec16


def _reference(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(float32 projection h, a_src, and each rounded to float16 then widened), chunk by
    chunk as the stage computes them."""
    s = GraphStore(path)
    w = load_block(s, 1)[0]
    x = np.asarray(s.table(0))
    parts = [project_rows(w, x[a:a + CHUNK]) for a in range(0, N, CHUNK)]
    h, a_src = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
    return h, a_src, h.astype(np.float16).astype(np.float32), \
        a_src.astype(np.float16).astype(np.float32)


def test_kernel_widening_is_exact_on_every_float16_value():
    bits = np.arange(1 << 16, dtype=np.uint16)
    want = bits.view(np.float16).astype(np.float32)
    got = np.empty_like(want)
    if not gatkernel.HARDWARE_HALF:
        pytest.skip("no hardware float16 conversion: the integer fallback is in use")
    gatkernel._widen_hw(bits, got)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan], want[~nan]) and np.isnan(got[nan]).all()
    assert gatkernel.kernel_array(want.astype(np.float16)).dtype == np.uint16
    assert gatkernel.kernel_array(want) is want


def test_float16_table_is_the_float32_arithmetic_on_rounded_projections(trained):
    # exact: the float16 run = float32 arithmetic on the projection rounded to float16, its
    # output rounded once more; the kernels only widen what they load
    _, _, f16, _, _ = trained
    s = GraphStore(f16)
    assert s.info(EMB).dtype == np.float16
    w = load_block(s, 1)[0]
    _, _, h16, a16 = _reference(f16)
    x = np.asarray(s.table(0))
    ip, ind = s.indptr(), s.indices()
    want = np.concatenate([aggregate(w, (h16, a16), ip, ind, np.arange(a, min(a + CHUNK, N)),
                                     x[a:a + CHUNK]) for a in range(0, N, CHUNK)])
    got = table(f16)
    assert np.array_equal(got.view(np.uint16), want.astype(np.float16).view(np.uint16))


def _over_neighbourhoods(v: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per target, the max of v over its in-neighbours and itself (its self loop)."""
    out = v.copy()
    nz = np.diff(indptr) > 0
    out[nz] = np.maximum(out[nz], np.maximum.reduceat(v[np.asarray(indices)],
                                                      indptr[:-1][nz], axis=0))
    return out


def _error_bound(path: Path, t32: np.ndarray) -> np.ndarray:
    """|t16 - t32| per value, from u = 2^-11 (float16's relative rounding error), per target
    t and head k, with M = max |h_jk| and A = max |a_src_jk| over t's neighbourhood:
    - the output is rounded once: u |t32|;
    - each source row h_j is rounded: the attention-weighted mean moves by <= u M;
    - each logit moves by <= u (A + sum_c |att_dst_kc h_tkc|) (a_src and the destination
      logit from the rounded own row; LeakyReLU is 1-Lipschitz), which moves the softmax
      weights by sum_j |d alpha_j| <= 2 max |d logit|, hence the mean by that times M;
    - bias and skip are not rounded, ELU is 1-Lipschitz.
    Plus 5% for second-order terms and 1e-6 for float32 noise."""
    s = GraphStore(path)
    h, a_src, _, _ = _reference(path)
    w = load_block(s, 1)[0]
    H, C = w.att_dst.shape
    hk = np.abs(h.reshape(-1, H, C))
    m = _over_neighbourhoods(hk.max(axis=2), s.indptr(), s.indices())
    a = _over_neighbourhoods(np.abs(a_src), s.indptr(), s.indices())
    dst = np.einsum("nhc,hc->nh", hk, np.abs(w.att_dst))
    head = U * m + 2 * U * (a + dst) * m
    return 1.05 * (U * np.abs(t32) + np.repeat(head, C, axis=1)) + 1e-6


@pytest.mark.parametrize("blocks", [None, 3])
def test_float16_table_within_its_error_bound_of_float32(trained, tmp_path, blocks):
    src, f32, f16, rec32, rec16 = trained
    t32 = table(f32)
    if blocks is None:
        path, rec = f16, rec16
    else:                                   # the streamed path reads float16 source blocks
        path = copy_store(src, tmp_path / "s.zarr")
        rec = embed_layer(path, 1, chunk_rows=CHUNK, table_dtype="float16", source_blocks=3)
        assert (rec["plan"]["mode"], rec["plan"]["source_blocks"]) == ("streamed", 3)
        # the float32 results differ by summation order (1e-6, test_embed_streamed), so the
        # rounded ones by at most one float16 ulp, or that 1e-6 where the ulp is smaller
        mem = table(f16).astype(np.float32)
        got = table(path).astype(np.float32)
        ulp = np.spacing(np.maximum(np.abs(got), np.abs(mem)).astype(np.float16))
        assert (np.abs(got - mem) <= ulp.astype(np.float32) + 1e-6).all()
    t16 = table(path).astype(np.float32)
    bound = _error_bound(path, t32)
    assert np.median(bound) < 0.01 * np.abs(t32).max()      # the bound says something
    assert (np.abs(t16 - t32) <= bound).all()
    assert not np.array_equal(t16, t32)                      # rounded: really float16
    # the projection is float16 too: half the bytes, and gone afterwards
    assert rec["plan"]["projection_bytes"] * 2 == rec32["plan"]["projection_bytes"]
    assert not GraphStore(path).has("layers/1/projection")


def test_table_dtype_is_configuration(trained, tmp_path, capsys):
    _, f32, f16, rec32, rec16 = trained
    assert rec32["config"] == {"layer": 1, "train": rec32["config"]["train"]}   # unchanged
    assert rec16["config"]["table_dtype"] == "float16"
    assert rec16["config_hash"] != rec32["config_hash"]
    s = copy_store(f16, tmp_path / "g.zarr")
    embed_layer(s, 1, table_dtype="float16")
    assert "already written with this configuration" in capsys.readouterr().out
    rec = embed_layer(s, 1)                       # another dtype: recomputed, float32 again
    assert rec["config_hash"] == rec32["config_hash"]
    assert np.array_equal(table(s), table(f32))


def _widened_copy(f16: Path, dst: Path) -> Path:
    """A copy of the float16 store whose layer-1 table holds the same values as float32."""
    s = GraphStore(copy_store(f16, dst))
    t = table(f16).astype(np.float32)
    s.delete(EMB)
    s.write_array(EMB, t)
    return dst


def test_layer_2_trains_from_a_float16_table(trained, tmp_path):
    from lrgi_ooc.sample.loader import BatchLoader
    from lrgi_ooc.sample.onehop import OneHopSampler
    _, _, f16, _, _ = trained
    a = copy_store(f16, tmp_path / "a.zarr")
    b = _widened_copy(f16, tmp_path / "b.zarr")
    # the loader widens float16 rows while gathering: the batches of the float32 copy
    s = GraphStore(a)
    sampler = OneHopSampler(s.indptr(), s.indices(), (4, 3))
    seeds = np.arange(N)
    got = list(BatchLoader(sampler, s.table(1), seeds, 512, prefetch=0))
    want = list(BatchLoader(sampler, GraphStore(b).table(1), seeds, 512, prefetch=0))
    assert len(got) == len(want) > 3
    for x, y in zip(got, want):
        assert x.x.dtype == y.x.dtype and np.array_equal(x.x.numpy(), y.x.numpy())
    # so layer 2 trained on either is the same layer
    for p in (a, b):
        assert main(["train", str(p), "--layer", "2", "--steps", "3", *SMALL]) == 0
    wa, wb = load_block(GraphStore(a), 2)[0], load_block(GraphStore(b), 2)[0]
    for name in ("lin", "att_src", "att_dst", "bias", "skip"):
        assert np.array_equal(getattr(wa, name), getattr(wb, name)), name
    # and embedding layer 2 reads the float16 layer-1 table as its input
    embed_layer(a, 2, table_dtype="float16")
    embed_layer(b, 2, table_dtype="float16")
    assert np.array_equal(table(a, embeddings_key(2)).view(np.uint16),
                          table(b, embeddings_key(2)).view(np.uint16))


def test_evaluate_reads_a_float16_table(trained, tmp_path):
    _, _, f16, _, _ = trained
    b = _widened_copy(f16, tmp_path / "b.zarr")
    kw = dict(layer=1, num_splits=2, epochs=20)
    r16, r32 = lrgi_ooc.evaluate(f16, **kw), lrgi_ooc.evaluate(b, **kw)
    for k in ("test_mean", "val_mean", "test_std", "per_split"):
        assert r16[k] == r32[k], k
    rc = lrgi_ooc.evaluate(f16, layer=1, num_splits=1, epochs=5, concat_raw=True)
    assert rc["test_mean"] > 0       # float32 features beside a float16 table


def test_export_round_trips_a_float16_table(trained, tmp_path):
    _, _, f16, _, _ = trained
    t = table(f16)
    lrgi_ooc.export(f16, layer=1, out=tmp_path / "t.npy", dtype="float16")
    got = np.load(tmp_path / "t.npy")
    assert got.dtype == np.float16 and np.array_equal(got.view(np.uint16), t.view(np.uint16))
    lrgi_ooc.export(f16, layer=1, out=tmp_path / "t.parquet", dtype="float16")
    pt = pq.read_table(tmp_path / "t.parquet")
    emb = np.stack(pt.column("embedding").to_numpy(zero_copy_only=False))
    assert np.array_equal(pt.column("node").to_numpy(), np.arange(N))
    assert emb.dtype == np.float16 and np.array_equal(emb.view(np.uint16), t.view(np.uint16))
    lrgi_ooc.export(f16, layer=1, out=tmp_path / "w.npy")            # default float32: exact
    assert np.array_equal(np.load(tmp_path / "w.npy"), t.astype(np.float32))


def test_zarr_python_reads_the_float16_table(trained):
    import zarr
    _, _, f16, _, _ = trained
    z = zarr.open_array(str(Path(f16) / EMB), mode="r")
    assert z.dtype == np.float16 and z.shape == (N, 16)
    assert np.array_equal(z[:].view(np.uint16), table(f16).view(np.uint16))


def test_inductive_table_is_float16_too(tmp_path):
    s = make_store(tmp_path / "g.zarr", n=1500, feat=8, avg_deg=4)
    lrgi_ooc.layer(s.path, layer=1, steps=2, dim=8, heads=2, batch_size=64, fanout="4,3",
                   inductive=True, table_dtype="float16", device="cpu")
    g = GraphStore(s.path)
    assert g.info(EMB).dtype == g.info(train_embeddings_key(1)).dtype == np.float16
    assert g.stage_record(embed_stage(1))["config"]["table_dtype"] == "float16"


def test_values_beyond_float16_are_refused(trained, tmp_path):
    src, _, _, _, _ = trained
    p = copy_store(src, tmp_path / "g.zarr")
    s = GraphStore(p)
    x = table(p, FEATURES) * np.float32(1e6)       # the projection leaves float16's range
    s.delete(FEATURES)
    s.write_array(FEATURES, x)
    with pytest.raises(lrgi_ooc.InputError, match=r"--table-dtype float16: layer 1 has values "
                       r"beyond float16's range \(\|x\| > 65504\) at row \d+ .*--table-dtype "
                       r"float32"):
        lrgi_ooc.embed_layer(p, layer=1, table_dtype="float16")
    assert not GraphStore(p).stage_complete(embed_stage(1))
    lrgi_ooc.embed_layer(p, layer=1)                 # float32 holds them
    assert np.isfinite(table(p)).all()


def test_bad_table_dtype_is_one_line(trained, tmp_path, run_cli):
    src, _, _, _, _ = trained
    p = copy_store(src, tmp_path / "g.zarr")
    rc, _, err = run_cli("embed", p, "--layer", "1", "--table-dtype", "float64")
    assert rc == 2 and err == ("lrgi-ooc embed: error: --table-dtype: must be float32 or "
                               "float16, got 'float64'\n")
    before = GraphStore(p).stage_record(train_stage(1))
    rc, _, err = run_cli("layer", p, "--layer", "1", "--table-dtype", "bf16", "--steps", "2",
                         *SMALL)
    assert rc == 2 and err == ("lrgi-ooc layer: error: --table-dtype: must be float32 or "
                               "float16, got 'bf16'\n")
    assert GraphStore(p).stage_record(train_stage(1)) == before      # checked before training
    with pytest.raises(lrgi_ooc.InputError, match=r"config \[embed\] table_dtype: must be "
                       r"float32 or float16, got 16"):
        lrgi_ooc.run({"store": str(p), "embed": {"table_dtype": 16}})
    assert not GraphStore(p).has(EMB)


def test_run_takes_table_dtype_from_its_embed_table(trained, tmp_path):
    src, _, _, _, _ = trained
    p = copy_store(src, tmp_path / "g.zarr")
    res = lrgi_ooc.run({"store": str(p), "num_layers": 1,
                        "train": {"dim": 16, "heads": 2, "batch_size": 64, "fanout": "4,3",
                                  "steps": 3},
                        "embed": {"table_dtype": "float16"},
                        "evaluate": {"layers": [1], "num_splits": 1, "epochs": 5}})
    assert [r["layer"] for r in res] == [1]
    s = GraphStore(p)
    assert s.info(EMB).dtype == np.float16
    assert s.stage_record(embed_stage(1))["config"]["table_dtype"] == "float16"
    assert lrgi_ooc.validate(p) is None
