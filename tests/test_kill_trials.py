"""tools/kill_trials.py's comparison: what counts as the same final state after a kill."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

from conftest import REPO
from graphs import make_store
from lrgi_ooc.store.layout import (FEATURES, INDICES, GraphStore, embed_stage,
                                   embeddings_key, weights_key)

EMB = embeddings_key(1)

spec = importlib.util.spec_from_file_location("kill_trials", REPO / "tools" / "kill_trials.py")
kt = importlib.util.module_from_spec(spec)
sys.modules["kill_trials"] = kt
spec.loader.exec_module(kt)


@pytest.fixture
def pair(tmp_path):
    """A reference store with a trained layer's weights and a table, and a copy of it."""
    s = make_store(tmp_path / "ref.zarr", n=300, feat=4)
    rng = np.random.default_rng(0)
    s.write_small(weights_key(1, "lin"), rng.standard_normal((8, 4)).astype(np.float32))
    s.write_array(EMB, rng.standard_normal((300, 8)).astype(np.float32))
    s.mark_stage(embed_stage(1), {"layer": 1}, seconds=1.5, edges=1000,
                 plan={"mode": "in-memory", "output_blocks": 3, "bytes_read": 10})
    shutil.copytree(s.path, tmp_path / "got.zarr")
    return s.path, tmp_path / "got.zarr"


def diffs(ref, got) -> kt.Comparison:
    c = kt.Comparison()
    kt.compare_store(ref, got, c)
    return c


def test_copy_is_identical_and_volatile_fields_are_ignored(pair):
    ref, got = pair
    s = GraphStore(got)
    meta = s.meta
    rec = meta["stages"][embed_stage(1)]
    rec.update(seconds=9.0, completed_at="later", peak_rss_mb=1.0, edges=5)
    rec["plan"].update(output_blocks=1, bytes_read=3)
    s._write_meta(meta)
    c = diffs(ref, got)
    assert (c.diffs, c.tolerance) == ([], [])


def test_a_changed_record_field_is_a_difference(pair):
    ref, got = pair
    s = GraphStore(got)
    meta = s.meta
    meta["stages"][embed_stage(1)]["plan"]["mode"] = "streamed"
    e = meta["num_edges"]
    meta["num_edges"] = e + 1
    s._write_meta(meta)
    assert sorted(diffs(ref, got).diffs) == [
        f"store zarr.json.attributes.num_edges: reference {e} != trial {e + 1}",
        'store zarr.json.attributes.stages.embed/1.plan.mode: reference "in-memory" != '
        'trial "streamed"']


def test_exact_arrays_must_be_byte_identical(pair):
    ref, got = pair
    s = GraphStore(got)
    x = s.read_rows(FEATURES, 0, 300)
    x[7, 1] = np.nextafter(x[7, 1], np.float32(np.inf))     # one ulp
    s.write_chunk(FEATURES, 0, x[:s.info(FEATURES).chunk_rows])
    c = diffs(ref, got)
    assert len(c.diffs) == 1 and c.diffs[0].startswith("array node/features: 1 chunk file")


def test_layer_tables_and_weights_within_tolerance(pair):
    ref, got = pair
    s = GraphStore(got)
    w = s.read_small(weights_key(1, "lin"))
    s.write_small(weights_key(1, "lin"), w + np.float32(5e-7))
    c = diffs(ref, got)
    assert c.diffs == [] and [t.split()[0] for t in c.tolerance] == [weights_key(1, "lin")]
    e = s.read_rows(EMB, 0, 300)
    e[299, 0] += 1e-4
    s.write_array(EMB, e)
    c = diffs(ref, got)
    assert len(c.diffs) == 1 and c.diffs[0].startswith("array layers/1/embeddings: max abs")


def test_missing_and_leftover_files_are_differences(pair):
    ref, got = pair
    s = GraphStore(got)
    p = s.info(INDICES).chunk_path(0)
    (p.parent / f".{p.name}.tmp-123").write_bytes(b"x")
    s.delete(EMB)
    c = diffs(ref, got)
    assert any(d.startswith("store: extra file csr/indices/") and ".tmp-123" in d
               for d in c.diffs)
    assert any(d.startswith("store: layers/1/embeddings/") and d.endswith("missing")
               for d in c.diffs)


def test_evaluate_scores_compared_to_1e_9():
    out: list[str] = []
    a = {"test_mean": 0.5, "per_split": [{"test": 0.25}]}
    kt._json_diff(a, json.loads(json.dumps({"test_mean": 0.5 + 1e-12,
                                            "per_split": [{"test": 0.25}]})), "e", out,
                  kt.SCORE_TOLERANCE)
    assert out == []
    kt._json_diff(a, {"test_mean": 0.5 + 1e-6, "per_split": [{"test": 0.25}]}, "e", out,
                  kt.SCORE_TOLERANCE)
    assert len(out) == 1 and out[0].startswith("e.test_mean")
