"""The bad-input corpus (docs/reliability.md): every command, four families of bad input.

Each case must end with exit code 2 and exactly one line on stderr,
`lrgi-ooc CMD: error: ...`, naming the file or option at fault, with no traceback; and
nothing lost: every file in the case's working directory (the stores, the inputs, earlier
outputs) has the same names, sizes and bytes afterwards, and no staging directory or
half-written output is left beside them.

A case is `(argv, needle, *setup)`: `{w}` in a string is the case's working directory,
`{s}` a copy of a store with layer 1 trained and embedded, `{p}` a copy of a preprocessed
store without layers; `setup` callables write the bad inputs or break a store first.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from graphs import make_store
from lrgi_ooc.cli.main import main
from lrgi_ooc.store.layout import (FEATURES, INDICES, INDPTR, LABELS, GraphStore,
                                   embeddings_key, weights_key)

N = 200
SMALL = ["--dim", "8", "--heads", "2", "--batch-size", "32", "--fanout", "3,2", "--steps",
         "2", "--device", "cpu"]
Setup = Callable[[Path], Any]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """{"s": trained store (layer 1), "p": preprocessed store}, shared, never touched: each
    case works on copies."""
    root = tmp_path_factory.mktemp("bad_input_stores")
    p = make_store(root / "p.zarr", n=N, feat=8).path
    s = make_store(root / "s.zarr", n=N, feat=8).path
    assert main(["layer", str(s), "--layer", "1", *SMALL]) == 0
    shutil.rmtree(str(s) + ".work", ignore_errors=True)
    shutil.rmtree(str(p) + ".work", ignore_errors=True)
    return {"s": s, "p": p}


# --------------------------------------------------------------------------- helpers
def fill(text: str, w: Path) -> str:
    return (text.replace("{w}", str(w)).replace("{s}", str(w / "s.zarr"))
            .replace("{p}", str(w / "p.zarr")))


def npy(name: str, a: np.ndarray) -> Setup:
    def make(w: Path) -> None:
        with open(w / name, "wb") as f:
            np.save(f, a)
    return make


def text(name: str, body: str) -> Setup:
    def make(w: Path) -> None:
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_text(fill(body, w))
    return make


def parquet(name: str, **cols: np.ndarray) -> Setup:
    def make(w: Path) -> None:
        pq.write_table(pa.table(cols), w / name)
    return make


def truncate(name: str, keep: float = 0.5) -> Setup:
    """Cut a file (written by an earlier setup) to a fraction of its bytes."""
    def make(w: Path) -> None:
        p = w / name
        with open(p, "r+b") as f:
            f.truncate(int(p.stat().st_size * keep))
    return make


def csr_npz(name: str, rows: int, cols: int, shape: list[int] | None = None) -> Setup:
    """A scipy CSR .npz (the layout of `scipy.sparse.save_npz`) of `rows` x `cols`."""
    def make(w: Path) -> None:
        np.savez(w / name, format=np.array(b"csr"), shape=np.array(shape or [rows, cols]),
                 data=np.ones(rows, np.float32), indices=np.zeros(rows, np.int32),
                 indptr=np.arange(rows + 1, dtype=np.int32))
    return make


def mkdir(name: str, *files: str) -> Setup:
    def make(w: Path) -> None:
        (w / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            (w / name / f).write_text("kept\n")
    return make


def store_meta(name: str, **fields: Any) -> Setup:
    def make(w: Path) -> None:
        GraphStore(w / name, _check=False).update_meta(**fields)
    return make


def drop_array(name: str, key: str) -> Setup:
    def make(w: Path) -> None:
        shutil.rmtree(w / name / key)
    return make


def cut_chunk(name: str, key: str, chunk: int = 0) -> Setup:
    """Chunk `chunk` of array `key` cut to half its bytes (a torn copy)."""
    def make(w: Path) -> None:
        p = GraphStore(w / name).info(key).chunk_path(chunk)
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 2)
    return make


def fake_ogb(root: str, missing: str) -> Setup:
    """A tiny ogbn-arxiv in ogb's raw layout, without the file `missing` (relative path)."""
    def gz(p: Path, rows: np.ndarray, fmt: str) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(p, "wt") as f:
            np.savetxt(f, rows, fmt=fmt, delimiter=",")

    def make(w: Path) -> None:
        rng = np.random.default_rng(0)
        d = w / root / "ogbn_arxiv"
        n, e = 60, 300
        gz(d / "raw" / "edge.csv.gz", rng.integers(0, n, (e, 2)), "%d")
        gz(d / "raw" / "num-node-list.csv.gz", np.array([[n]]), "%d")
        gz(d / "raw" / "num-edge-list.csv.gz", np.array([[e]]), "%d")
        gz(d / "raw" / "node-feat.csv.gz", rng.normal(size=(n, 4)), "%.6g")
        gz(d / "raw" / "node-label.csv.gz", rng.integers(0, 40, (n, 1)), "%d")
        gz(d / "raw" / "node_year.csv.gz", rng.integers(2000, 2020, (n, 1)), "%d")
        perm = rng.permutation(n)
        for part, ids in (("train", perm[:30]), ("valid", perm[30:45]), ("test", perm[45:])):
            gz(d / "split" / "time" / f"{part}.csv.gz", ids[:, None], "%d")
        (d / "RELEASE_v1.txt").write_text("fake\n")
        (d / "processed").mkdir()        # ogb's own cache directory
        (d / missing).unlink()
    return make


EDGES = np.random.default_rng(0).integers(0, N, (2, 1000))


def edges_npy(name: str = "e.npy") -> Setup:
    return npy(name, EDGES)


def case(id_: str, argv: list[str], needle: str, *setup: Setup):
    return pytest.param(argv, needle, setup, id=id_)


def digest(root: Path) -> dict[str, Any]:
    """Every entry under `root`: directories by name, files by name, size and bytes."""
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def check(tmp_path: Path, stores: dict[str, Path], capsys, argv: list[str], needle: str,
          setup: tuple[Setup, ...]) -> None:
    w = tmp_path / "w"
    w.mkdir()
    for name in ("s", "p"):
        src = stores[name]
        shutil.copytree(src, w / f"{name}.zarr")
        if Path(str(src) + ".runs").exists():
            shutil.copytree(str(src) + ".runs", str(w / f"{name}.zarr") + ".runs")
    for make in setup:
        make(w)
    args = [fill(str(a), w) for a in argv]
    before = digest(w)
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as e:        # argparse: should not escape main()
        rc = ("SystemExit", e.code)
    _, err = capsys.readouterr()
    cmd = args[0]
    lines = err.splitlines()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith(f"lrgi-ooc {cmd}: error: "), err
    assert fill(needle, w) in lines[0], (needle, err)
    assert digest(w) == before


# =========================================================================== inputs
INPUTS = [
    case("preprocess-truncated-parquet-edges",
         ["preprocess", "--edges", "{w}/e.parquet", "--out", "{w}/g.zarr"], "{w}/e.parquet",
         parquet("e.parquet", src=EDGES[0], dst=EDGES[1]), truncate("e.parquet")),
    case("preprocess-truncated-parquet-features",
         ["preprocess", "--edges", "{w}/e.npy", "--features", "{w}/x.parquet", "--out",
          "{w}/g.zarr"], "{w}/x.parquet",
         edges_npy(), parquet("x.parquet", a=np.ones(N), b=np.zeros(N)),
         truncate("x.parquet", 0.6)),
    case("preprocess-csv-non-numeric-id",
         ["preprocess", "--edges", "{w}/e.csv", "--ids", "dense", "--out", "{w}/g.zarr"],
         "{w}/e.csv", text("e.csv", "src,dst\n0,1\n1,2\n2,x\n")),
    case("preprocess-csv-ids-mixing-kinds",
         ["preprocess", "--edges", "{w}/e.csv", "--out", "{w}/g.zarr"], "{w}/e.csv",
         text("e.csv", "src,dst\n0,1\n1,2\n2,bob\n")),
    case("preprocess-npy-edges-rank-3",
         ["preprocess", "--edges", "{w}/e.npy", "--out", "{w}/g.zarr"], "{w}/e.npy",
         npy("e.npy", np.zeros((2, 5, 2), np.int64))),
    case("preprocess-npy-edges-float",
         ["preprocess", "--edges", "{w}/e.npy", "--out", "{w}/g.zarr"], "{w}/e.npy",
         npy("e.npy", EDGES.astype(np.float64) + 0.5)),
    case("preprocess-npy-features-rank-1",
         ["preprocess", "--edges", "{w}/e.npy", "--features", "{w}/x.npy", "--out",
          "{w}/g.zarr"], "{w}/x.npy", edges_npy(), npy("x.npy", np.ones(N, np.float32))),
    case("preprocess-npy-features-strings",
         ["preprocess", "--edges", "{w}/e.npy", "--features", "{w}/x.npy", "--out",
          "{w}/g.zarr"], "{w}/x.npy", edges_npy(), npy("x.npy", np.full((N, 2), "a"))),
    case("preprocess-npy-labels-float",
         ["preprocess", "--edges", "{w}/e.npy", "--labels", "{w}/y.npy", "--out",
          "{w}/g.zarr"], "{w}/y.npy", edges_npy(), npy("y.npy", np.full(N, 0.5))),
    case("preprocess-npy-labels-rank-3",
         ["preprocess", "--edges", "{w}/e.npy", "--labels", "{w}/y.npy", "--out",
          "{w}/g.zarr"], "{w}/y.npy", edges_npy(), npy("y.npy", np.zeros((N, 2, 2), np.int64))),
    case("preprocess-npy-split-float",
         ["preprocess", "--edges", "{w}/e.npy", "--train", "{w}/tr.npy", "--val",
          "{w}/va.npy", "--test", "{w}/te.npy", "--out", "{w}/g.zarr"], "{w}/tr.npy",
         edges_npy(), npy("tr.npy", np.array([0.5, 1.5])), npy("va.npy", np.arange(2, 4)),
         npy("te.npy", np.arange(4, 8))),
    case("preprocess-truncated-npy-features",
         ["preprocess", "--edges", "{w}/e.npy", "--features", "{w}/x.npy", "--out",
          "{w}/g.zarr"], "{w}/x.npy",
         edges_npy(), npy("x.npy", np.ones((N, 4), np.float32)), truncate("x.npy")),
    case("preprocess-sparse-npz-rows-differ",
         ["preprocess", "--edges", "{w}/e.npy", "--features", "{w}/x.npz", "--labels",
          "{w}/y.npy", "--out", "{w}/g.zarr"], "{w}/x.npz",
         edges_npy(), csr_npz("x.npz", N + 3, 5), npy("y.npy", np.zeros(N, np.int64))),
    case("preprocess-sparse-npz-shape-3-d",
         ["preprocess", "--edges", "{w}/e.npy", "--features", "{w}/x.npz", "--out",
          "{w}/g.zarr"], "{w}/x.npz", edges_npy(), csr_npz("x.npz", N, 5, [N, 5, 1])),
    case("preprocess-sparse-npz-shape-short",
         ["preprocess", "--edges", "{w}/e.npy", "--features", "{w}/x.npz", "--out",
          "{w}/g.zarr"], "{w}/x.npz", edges_npy(), csr_npz("x.npz", N, 5, [N + 7, 5])),
    case("preprocess-npz-dataset-edge-index-rank-1",
         ["preprocess", "--npz", "{w}/d.npz", "--out", "{w}/g.zarr"], "{w}/d.npz",
         lambda w: np.savez(w / "d.npz", edge_index=np.arange(10),
                            x=np.ones((10, 2), np.float32))),
    case("preprocess-ogb-root-missing-node-count",
         ["preprocess", "--ogb", "ogbn-arxiv", "--ogb-root", "{w}/ogb", "--out", "{w}/g.zarr"],
         "num-node-list.csv.gz", fake_ogb("ogb", "raw/num-node-list.csv.gz")),
    case("preprocess-ogb-root-missing-split",
         ["preprocess", "--ogb", "ogbn-arxiv", "--ogb-root", "{w}/ogb", "--out", "{w}/g.zarr"],
         "train.csv.gz", fake_ogb("ogb", "split/time/train.csv.gz")),
    case("export-nodes-npy-rank-2",
         ["export", "{s}", "--layer", "1", "--nodes", "{w}/ids.npy", "--out", "{w}/o.npy"],
         "{w}/ids.npy", npy("ids.npy", np.zeros((2, 3), np.int64))),
    case("export-nodes-npy-float",
         ["export", "{s}", "--layer", "1", "--nodes", "{w}/ids.npy", "--out", "{w}/o.parquet"],
         "{w}/ids.npy", npy("ids.npy", np.array([0.0, 1.0]))),
    case("export-nodes-npy-truncated",
         ["export", "{s}", "--layer", "1", "--nodes", "{w}/ids.npy", "--out", "{w}/o.csv"],
         "{w}/ids.npy", npy("ids.npy", np.arange(100)), truncate("ids.npy")),
    case("run-truncated-parquet-edges",
         ["run", "{w}/c.toml"], "{w}/e.parquet",
         parquet("e.parquet", src=EDGES[0], dst=EDGES[1]), truncate("e.parquet"),
         text("c.toml", 'store = "{w}/g.zarr"\nnum_layers = 1\n'
                        '[preprocess]\nedges = "{w}/e.parquet"\n')),
]


@pytest.mark.parametrize("argv,needle,setup", INPUTS)
def test_bad_inputs(argv, needle, setup, tmp_path, stores, capsys):
    check(tmp_path, stores, capsys, argv, needle, setup)


# =========================================================================== configs
def toml(body: str) -> Setup:
    return text("c.toml", body)


RUN = 'store = "{s}"\nnum_layers = 1\n'      # a run over the trained store, no inputs

CONFIGS = [
    case("train-config-wrong-type", ["train", "{p}", "--layer", "1", "--config", "{w}/c.toml"],
         "heads", toml("[train]\nheads = 1.5\n")),
    case("train-config-unknown-key",
         ["train", "{p}", "--layer", "1", "--config", "{w}/c.toml"], "learning_rate",
         toml("[train]\nlearning_rate = 0.1\n")),
    case("train-config-unknown-table",
         ["train", "{p}", "--layer", "1", "--config", "{w}/c.toml"], "trian",
         toml("[trian]\ndim = 8\n")),
    case("train-config-warmup-out-of-range",
         ["train", "{p}", "--layer", "1", "--config", "{w}/c.toml"], "warmup",
         toml("warmup = 1.5\n")),
    case("layer-config-not-toml", ["layer", "{p}", "--layer", "1", "--config", "{w}/c.toml"],
         "{w}/c.toml", toml("dim = = 3\n")),
    case("layer-config-missing", ["layer", "{p}", "--layer", "1", "--config", "{w}/none.toml"],
         "{w}/none.toml"),
    case("layer-config-negative-lambda",
         ["layer", "{p}", "--layer", "1", "--config", "{w}/c.toml"], "lambdas",
         toml("[train]\nlambdas = [25, -1, 1]\n")),
    case("train-e2e-config-bool-wrong-type",
         ["train-e2e", "{p}", "--num-layers", "1", "--config", "{w}/c.toml"], "inductive",
         toml("[train]\ninductive = \"yes\"\n")),
    case("train-e2e-config-fanout-three",
         ["train-e2e", "{p}", "--num-layers", "1", "--config", "{w}/c.toml"], "fanout",
         toml("[train]\nfanout = [1, 2, 3]\n")),
    case("run-config-missing", ["run", "{w}/none.toml"], "{w}/none.toml"),
    case("run-config-not-toml", ["run", "{w}/c.toml"], "{w}/c.toml", toml("[train\n")),
    case("run-unknown-table", ["run", "{w}/c.toml"], "trainn", toml(RUN + "[trainn]\ndim = 8\n")),
    case("run-layer-table-beyond-num-layers", ["run", "{w}/c.toml"], "[layer]",
         toml(RUN + "[layer.5]\ndim = 8\n")),
    case("run-num-layers-zero", ["run", "{w}/c.toml"], "num_layers",
         toml('store = "{s}"\nnum_layers = 0\n')),
    case("run-num-layers-string", ["run", "{w}/c.toml"], "num_layers",
         toml('store = "{s}"\nnum_layers = "two"\n')),
    case("run-store-wrong-type", ["run", "{w}/c.toml"], "store", toml("store = 5\n")),
    case("run-train-not-a-table", ["run", "{w}/c.toml"], "[train]", toml(RUN + "train = 3\n")),
    case("run-train-wrong-type", ["run", "{w}/c.toml"], "dim",
         toml(RUN + "[train]\ndim = \"wide\"\n")),
    case("run-layer-out-of-range-value", ["run", "{w}/c.toml"], "batch_size",
         toml(RUN + "[layer.1]\nbatch_size = 0\n")),
    case("run-embed-max-edges-wrong-type", ["run", "{w}/c.toml"], "max_edges",
         toml(RUN + "[embed]\nmax_edges = \"many\"\n")),
    case("run-embed-max-edges-zero", ["run", "{w}/c.toml"], "max_edges",
         toml(RUN + "[embed]\nmax_edges = 0\n")),
    case("run-embed-unknown-key", ["run", "{w}/c.toml"], "chunks",
         toml(RUN + "[embed]\nchunks = 4\n")),
    case("run-evaluate-unknown-key", ["run", "{w}/c.toml"], "splits",
         toml(RUN + "[evaluate]\nsplits = 3\n")),
    case("run-evaluate-num-splits-wrong-type", ["run", "{w}/c.toml"], "num_splits",
         toml(RUN + "[evaluate]\nnum_splits = \"five\"\n")),
    case("run-evaluate-layer-beyond-num-layers", ["run", "{w}/c.toml"], "layers",
         toml(RUN + "[evaluate]\nlayers = [0, 5]\n")),
    case("run-evaluate-memory-limit-bad", ["run", "{w}/c.toml"], "memory_limit",
         toml(RUN + "[evaluate]\nmemory_limit = \"lots\"\n")),
    case("run-evaluate-epochs-zero", ["run", "{w}/c.toml"], "epochs",
         toml(RUN + "[evaluate]\nepochs = 0\n")),
    case("run-evaluate-weight-decays-wrong-type", ["run", "{w}/c.toml"], "weight_decays",
         toml(RUN + "[evaluate]\nprobe = \"l2\"\nweight_decays = [\"x\"]\n")),
    case("run-dask-gpu-task-wrong-type", ["run", "{w}/c.toml"], "gpu_task",
         toml(RUN + "[dask]\ngpu_task = \"yes\"\n")),
    case("run-dask-workers-zero", ["run", "{w}/c.toml"], "workers",
         toml(RUN + "[dask]\nworkers = 0\n")),
    case("run-preprocess-unknown-key", ["run", "{w}/c.toml"], "edgez",
         edges_npy(), toml('store = "{w}/g.zarr"\n[preprocess]\nedgez = "{w}/e.npy"\n')),
    case("run-preprocess-wrong-type", ["run", "{w}/c.toml"], "[preprocess] undirected",
         edges_npy(), toml('store = "{w}/g.zarr"\n[preprocess]\nedges = "{w}/e.npy"\n'
                           'undirected = "yes"\n')),
    case("run-synth-unknown-key", ["run", "{w}/c.toml"], "nodez",
         toml('store = "{w}/g.zarr"\n[synth]\nout = "{w}/syn"\nnodez = 100\n')),
    case("run-synth-wrong-type", ["run", "{w}/c.toml"], "nodes",
         toml('store = "{w}/g.zarr"\n[synth]\nout = "{w}/syn"\nnodes = "many"\n')),
]


@pytest.mark.parametrize("argv,needle,setup", CONFIGS)
def test_bad_configs(argv, needle, setup, tmp_path, stores, capsys):
    check(tmp_path, stores, capsys, argv, needle, setup)


# =========================================================================== stores
STORES = [
    case("info-not-a-store", ["info", "{w}/d"], "{w}/d", mkdir("d", "notes.txt")),
    case("report-not-a-store", ["report", "{w}/d", "--out", "{w}/r"], "{w}/d",
         mkdir("d", "notes.txt")),
    case("export-other-zarr-group", ["export", "{w}/d", "--layer", "0", "--out", "{w}/o.npy"],
         "{w}/d", mkdir("d"), text("d/zarr.json", '{"zarr_format": 3, "node_type": "group"}')),
    case("evaluate-store-metadata-truncated", ["evaluate", "{s}", "--layer", "0"], "{s}",
         truncate("s.zarr/zarr.json", 0.3)),
    case("encode-target-not-a-store", ["encode", "{s}", "{w}/d"], "{w}/d", mkdir("d", "x")),
    case("run-store-not-a-store", ["run", "{w}/c.toml"], "{w}/d", mkdir("d", "notes.txt"),
         toml('store = "{w}/d"\nnum_layers = 1\n')),
    case("upgrade-not-a-store", ["upgrade", "{w}/d"], "{w}/d", mkdir("d", "notes.txt")),
    case("validate-format-version-99", ["validate", "{s}"], "format version 99",
         store_meta("s.zarr", format_version=99)),
    case("upgrade-format-version-99", ["upgrade", "{s}"], "format version 99",
         store_meta("s.zarr", format_version=99)),
    case("encode-model-format-version-99", ["encode", "{s}", "{p}"], "format version 99",
         store_meta("s.zarr", format_version=99)),
    case("embed-format-version-1", ["embed", "{s}", "--layer", "1"], "lrgi-ooc upgrade {s}",
         store_meta("s.zarr", format_version=1)),
    case("report-format-version-string", ["report", "{s}", "--out", "{w}/r"],
         "format version two", store_meta("s.zarr", format_version="two")),
    case("train-missing-features", ["train", "{p}", "--layer", "1", *SMALL], "{p}",
         drop_array("p.zarr", FEATURES)),
    case("embed-missing-indices", ["embed", "{s}", "--layer", "1", "--device", "cpu"],
         INDICES, drop_array("s.zarr", INDICES), drop_array("s.zarr", embeddings_key(1))),
    case("layer-missing-indptr", ["layer", "{p}", "--layer", "1", *SMALL], INDPTR,
         drop_array("p.zarr", INDPTR)),
    case("train-missing-indices-keeps-records",
         ["train", "{s}", "--layer", "1", *SMALL, "--seed", "5"], INDICES,
         drop_array("s.zarr", INDICES)),
    case("run-missing-indices", ["run", "{w}/c.toml"], INDICES, drop_array("s.zarr", INDICES),
         toml(RUN + "[train]\ndim = 8\nheads = 2\nsteps = 2\nbatch_size = 32\n")),
    case("export-missing-embeddings", ["export", "{s}", "--layer", "1", "--out", "{w}/o.npy"],
         "layer 1", drop_array("s.zarr", embeddings_key(1))),
    case("encode-model-missing-weight-array", ["encode", "{s}", "{p}"], weights_key(1, "lin"),
         drop_array("s.zarr", weights_key(1, "lin"))),
    case("train-e2e-missing-features", ["train-e2e", "{p}", "--num-layers", "1", *SMALL],
         "{p}", drop_array("p.zarr", FEATURES)),
    case("evaluate-missing-labels-array", ["evaluate", "{s}", "--layer", "1"], "labels",
         drop_array("s.zarr", LABELS)),
    case("info-truncated-indptr-chunk", ["info", "{s}"], INDPTR, cut_chunk("s.zarr", INDPTR)),
    case("export-truncated-embeddings-chunk",
         ["export", "{s}", "--layer", "1", "--out", "{w}/o.parquet"], embeddings_key(1),
         cut_chunk("s.zarr", embeddings_key(1))),
    case("train-truncated-features-chunk", ["train", "{p}", "--layer", "1", *SMALL], FEATURES,
         cut_chunk("p.zarr", FEATURES)),
    case("evaluate-truncated-features-chunk", ["evaluate", "{s}", "--layer", "0"], FEATURES,
         cut_chunk("s.zarr", FEATURES)),
    case("embed-truncated-indices-chunk", ["embed", "{s}", "--layer", "1", "--device", "cpu"],
         INDICES, cut_chunk("s.zarr", INDICES), drop_array("s.zarr", embeddings_key(1))),
    case("encode-truncated-weight-chunk", ["encode", "{s}", "{p}"], weights_key(1, "lin"),
         cut_chunk("s.zarr", weights_key(1, "lin"))),
    case("preprocess-overwrite-foreign-directory",
         ["preprocess", "--edges", "{w}/e.npy", "--out", "{w}/d", "--overwrite"], "{w}/d",
         edges_npy(), mkdir("d", "notes.txt")),
    case("synth-overwrite-a-store", ["synth", "--out", "{s}", "--nodes", "100", "--overwrite"],
         "{s}"),
    case("report-out-is-a-store", ["report", "{s}", "--out", "{p}"], "{p}"),
]


@pytest.mark.parametrize("argv,needle,setup", STORES)
def test_bad_stores(argv, needle, setup, tmp_path, stores, capsys):
    check(tmp_path, stores, capsys, argv, needle, setup)


# =========================================================================== options
OPTIONS = [
    case("train-layer-0", ["train", "{p}", "--layer", "0", *SMALL], "--layer"),
    case("layer-layer-0", ["layer", "{p}", "--layer", "0", *SMALL], "--layer"),
    case("train-layer-beyond-last-trained", ["train", "{s}", "--layer", "3", *SMALL],
         "--layer 2"),
    case("layer-layer-negative", ["layer", "{s}", "--layer", "-1", *SMALL], "--layer"),
    case("embed-layer-beyond-last-trained", ["embed", "{s}", "--layer", "4"], "layer 4"),
    case("embed-layer-0", ["embed", "{s}", "--layer", "0"], "--layer"),
    case("evaluate-layer-beyond-last-trained", ["evaluate", "{s}", "--layer", "7"], "layer 7"),
    case("evaluate-layer-negative", ["evaluate", "{s}", "--layer", "-1"], "--layer"),
    case("export-layer-negative", ["export", "{s}", "--layer", "-2", "--out", "{w}/o.npy"],
         "--layer"),
    case("encode-layers-beyond-last-trained", ["encode", "{s}", "{p}", "--layers", "1..3"],
         "layer 2"),
    case("encode-layers-empty", ["encode", "{s}", "{p}", "--layers", ""], "--layers"),
    case("encode-layers-zero", ["encode", "{s}", "{p}", "--layers", "0"], "--layers"),
    case("encode-max-edges-zero", ["encode", "{s}", "{p}", "--max-edges", "0"], "max-edges"),
    case("train-dim-zero", ["train", "{p}", "--layer", "1", "--dim", "0"], "--dim"),
    case("train-batch-size-negative", ["train", "{p}", "--layer", "1", "--batch-size", "-4"],
         "--batch-size"),
    case("train-steps-zero", ["train", "{p}", "--layer", "1", "--steps", "0"], "--steps"),
    case("layer-fanout-empty", ["layer", "{p}", "--layer", "1", "--fanout", ""], "--fanout"),
    case("layer-lambdas-empty", ["layer", "{p}", "--layer", "1", "--lambdas", ","], "--lambdas"),
    case("train-e2e-num-layers-zero", ["train-e2e", "{p}", "--num-layers", "0", *SMALL],
         "--num-layers"),
    case("train-e2e-epochs-negative",
         ["train-e2e", "{p}", "--num-layers", "1", "--epochs", "-1"], "--epochs"),
    case("embed-max-edges-zero", ["embed", "{s}", "--layer", "1", "--max-edges", "0"],
         "--max-edges"),
    case("embed-chunk-rows-zero", ["embed", "{s}", "--layer", "1", "--chunk-rows", "0"],
         "--chunk-rows"),
    case("embed-workers-zero", ["embed", "{s}", "--layer", "1", "--workers", "0"],
         "--workers"),
    case("preprocess-memory-limit-zero",
         ["preprocess", "--edges", "{w}/e.npy", "--memory-limit", "0", "--out", "{w}/g.zarr"],
         "--memory-limit", edges_npy()),
    case("preprocess-num-nodes-negative",
         ["preprocess", "--edges", "{w}/e.npy", "--num-nodes", "-5", "--out", "{w}/g.zarr"],
         "--num-nodes", edges_npy()),
    case("preprocess-num-nodes-zero",
         ["preprocess", "--edges", "{w}/e.npy", "--num-nodes", "0", "--out", "{w}/g.zarr"],
         "--num-nodes", edges_npy()),
    case("preprocess-feature-dtype-float64",
         ["preprocess", "--edges", "{w}/e.npy", "--feature-dtype", "float64", "--out",
          "{w}/g.zarr"], "--feature-dtype", edges_npy()),
    case("preprocess-ids-choice",
         ["preprocess", "--edges", "{w}/e.npy", "--ids", "sparse", "--out", "{w}/g.zarr"],
         "--ids", edges_npy()),
    case("synth-nodes-zero", ["synth", "--out", "{w}/syn", "--nodes", "0"], "--nodes"),
    case("synth-nodes-negative", ["synth", "--out", "{w}/syn", "--nodes", "-10"], "--nodes"),
    case("synth-classes-zero", ["synth", "--out", "{w}/syn", "--nodes", "100", "--classes", "0"],
         "--classes"),
    case("evaluate-epochs-zero", ["evaluate", "{s}", "--layer", "0", "--epochs", "0"],
         "--epochs"),
    case("evaluate-weight-decays-not-a-number",
         ["evaluate", "{s}", "--layer", "0", "--probe", "l2", "--weight-decays", "1e-3,x"],
         "--weight-decays"),
    case("evaluate-weight-decays-without-l2",
         ["evaluate", "{s}", "--layer", "0", "--weight-decays", "1e-3"], "--weight-decays"),
    case("evaluate-num-splits-zero", ["evaluate", "{s}", "--layer", "0", "--num-splits", "0"],
         "--num-splits"),
    case("evaluate-batch-rows-zero", ["evaluate", "{s}", "--layer", "0", "--batch-rows", "0"],
         "--batch-rows"),
    case("evaluate-memory-limit-zero",
         ["evaluate", "{s}", "--layer", "0", "--memory-limit", "0"], "--memory-limit"),
    case("evaluate-json-in-missing-directory",
         ["evaluate", "{s}", "--layer", "0", "--json", "{w}/no/r.json"], "--json"),
    case("evaluate-device-choice", ["evaluate", "{s}", "--layer", "0", "--device", "tpu"],
         "--device"),
    case("run-num-layers-zero", ["run", "{w}/c.toml", "--num-layers", "0"], "num_layers",
         toml(RUN)),
    case("run-workers-negative", ["run", "{w}/c.toml", "--workers", "-1"], "--workers",
         toml(RUN)),
    case("info-missing-store-argument", ["info"], "store"),
    case("upgrade-missing-store-argument", ["upgrade"], "store"),
    case("export-dtype-choice",
         ["export", "{s}", "--layer", "1", "--out", "{w}/o.npy", "--dtype", "float64"],
         "--dtype"),
    case("export-layer-not-an-integer",
         ["export", "{s}", "--layer", "one", "--out", "{w}/o.npy"], "--layer"),
    case("train-norm-choice", ["train", "{p}", "--layer", "1", "--norm", "l2"], "--norm"),
    case("train-dim-not-an-integer", ["train", "{p}", "--layer", "1", "--dim", "wide"],
         "--dim"),
    case("train-missing-layer", ["train", "{p}"], "--layer"),
    case("report-out-inside-the-store", ["report", "{s}", "--out", "{s}/report"],
         "{s}/report"),
    case("report-out-foreign-directory", ["report", "{s}", "--out", "{w}/d"], "{w}/d",
         mkdir("d", "notes.txt")),
    case("validate-extra-argument", ["validate", "{s}", "{p}"], "{p}"),
]


@pytest.mark.parametrize("argv,needle,setup", OPTIONS)
def test_bad_options(argv, needle, setup, tmp_path, stores, capsys):
    check(tmp_path, stores, capsys, argv, needle, setup)


def test_help_still_prints_the_full_usage(capsys):
    """The one-line usage errors above leave `--help` alone: full help, exit 0."""
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("usage: lrgi-ooc train") and "--fanout" in out
