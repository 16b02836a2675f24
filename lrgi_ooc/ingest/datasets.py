"""Whole datasets as one input: the ../shared/datasets `.npz` layout and OGB node datasets.

Built from ingest's readers (edges, tables, npz_stream), so every format is validated and
streamed the same way; only these two formats know how a dataset bundles its parts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.ingest.edges import EdgeInput, npy_edges
from lrgi_ooc.ingest.npz_stream import ZipNpyArray
from lrgi_ooc.ingest.tables import (ArrayTable, NpyTable, Table, column_numpy, csr_from_npz,
                                    first_line, npz_members, require_file)


@dataclass
class Dataset:
    edges: EdgeInput
    features: Table | None = None
    labels: Table | None = None
    splits: dict[str, Table] = field(default_factory=dict)
    num_nodes: int | None = None
    files: list[Path] = field(default_factory=list)


def open_npz(path: str | Path, chunk: int = 1 << 22) -> Dataset:
    """A dataset in the ../shared/datasets layout (docs/format.md, 'Inputs')."""
    p = require_file(path, "--npz")
    members = npz_members(p)
    if "edge_index" not in members:
        raise InputError(f"{p}: no 'edge_index' array (keys: {', '.join(sorted(members))})")
    ds = Dataset(edges=_zip_edges(ZipNpyArray(p, members["edge_index"]), chunk), files=[p])
    if "x" in members:
        ds.features = NpyTable(ZipNpyArray(p, members["x"]))
        if len(ds.features.shape) != 2:
            raise InputError(f"{p}:x must have shape [N, F], got {list(ds.features.shape)}")
    elif "x_data" in members:
        ds.features = csr_from_npz(p, members, "x_")
        ds.features.source = f"{p}:x"
    if "y" in members:
        ds.labels = NpyTable(ZipNpyArray(p, members["y"]))
    for part in ("train", "val", "test"):
        if f"{part}_mask" in members:
            ds.splits[part] = NpyTable(ZipNpyArray(p, members[f"{part}_mask"]))
    return ds


def _zip_edges(arr: ZipNpyArray, chunk: int) -> EdgeInput:
    """An edge array in an archive: parts only when stored (a compressed member read from
    item k inflates everything before k: parts would cost quadratic time)."""
    e = npy_edges(arr, chunk)
    if not arr.random_access:
        e.raw_parts = None
    return e


def _ogb_dataset_module():
    """ogb's NumPy dataset module, loaded without `ogb.nodeproppred/__init__`, which imports
    torch_geometric and the evaluators (seconds of imports this path never uses)."""
    import importlib.util
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = importlib.util.find_spec("ogb")
        path = Path(spec.origin).parent / "nodeproppred" / "dataset.py" if spec else None
        if path is None or not path.is_file():
            raise InputError("--ogb: the ogb package is not installed")
        mod_spec = importlib.util.spec_from_file_location("_lrgi_ooc_ogb_dataset", path)
        mod = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(mod)
    return mod


OGB_SPLIT_FILES = (("train", "train.csv.gz"), ("val", "valid.csv.gz"), ("test", "test.csv.gz"))


def _ogb_master() -> dict[str, dict[str, str]]:
    """ogb's table of node datasets (nodeproppred/master.csv), read without importing ogb."""
    import csv
    import importlib.util
    spec = importlib.util.find_spec("ogb")
    path = (Path(spec.origin).parent / "nodeproppred" / "master.csv"
            if spec is not None and spec.origin else None)
    if path is None or not path.is_file():
        raise InputError("--ogb: the ogb package is not installed")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return {n: {r[0]: r[i + 1] for r in rows[1:] if len(r) > i + 1}
            for i, n in enumerate(rows[0][1:])}


def open_ogb(name: str, root: str | Path, chunk: int = 1 << 22) -> Dataset:
    """An ogbn-* dataset from a local ogb root (never downloaded).

    The binary raw layout (`raw/data.npz`, as ogbn-papers100M ships) is streamed by
    `open_ogb_raw` in bounded memory; the CSV one (`raw/edge.csv.gz`) and a root holding
    only ogb's processed cache go through ogb's NumPy loader. Checks first that the dataset
    directory, its RELEASE file and its raw files are present.
    """
    r = require_file(root, "--ogb-root")
    master = _ogb_master()
    if name not in master:
        raise InputError(f"--ogb: unknown dataset '{name}' (ogb knows: {', '.join(master)})")
    meta = master[name]
    if meta.get("is hetero") == "True":
        raise InputError(f"--ogb {name}: heterogeneous graphs are not supported")
    d = r / "_".join(name.split("-"))
    binary = meta.get("binary") == "True"
    raw = d / "raw" / ("data.npz" if binary else "edge.csv.gz")
    processed = d / "processed" / "data_processed"
    if not (raw.is_file() or processed.is_file()):
        raise InputError(f"--ogb-root {r}: {raw} is missing (downloads are not attempted)")
    release = d / f"RELEASE_v{meta.get('version', '1')}.txt"
    if not release.is_file():
        raise InputError(f"--ogb-root {r}: {release} is missing (outdated or incomplete copy)")
    if binary and raw.is_file():
        return open_ogb_raw(name, d, meta.get("split", ""), chunk, f"--ogb-root {r}")
    # what ogb's loader reads, checked here so that the message names the missing file
    need = [d / "split" / meta.get("split", "") / f for _, f in OGB_SPLIT_FILES]
    if not processed.is_file():
        extra = [f for k in ("additional node files", "additional edge files")
                 for f in meta.get(k, "None").split(",") if f not in ("", "None")]
        need += [d / "raw" / f"{f}.csv.gz"
                 for f in ("num-node-list", "num-edge-list", "node-label", *extra)]
    for f in need:
        if not f.is_file():
            raise InputError(f"--ogb-root {r}: {f} is missing (outdated or incomplete copy)")
    return _open_ogb_loader(name, r, d, chunk)


def open_ogb_raw(name: str, d: Path, split: str, chunk: int = 1 << 22,
                 where: str = "--ogb-root") -> Dataset:
    """ogb's binary raw layout read directly, streamed (never `np.load`):
    `raw/data.npz` (`edge_index` [2, E], `num_nodes_list`, `num_edges_list`, optional
    `node_feat` [N, F]), `raw/node-label.npz` (`node_label` [N] or [N, 1]; NaN = unlabelled,
    which preprocess stores as -1) and `split/<split>/{train,valid,test}.csv.gz`, with ogb's
    semantics: one graph, edges as stored (directed; no inverse edges added)."""
    data, lab = d / "raw" / "data.npz", d / "raw" / "node-label.npz"
    parts = [(ours, d / "split" / split / f) for ours, f in OGB_SPLIT_FILES]
    for f in [lab] + [f for _, f in parts]:
        if not f.is_file():
            raise InputError(f"{where}: {f} is missing")
    members = npz_members(data)

    def arr(path: Path, members: dict[str, str], key: str) -> ZipNpyArray:
        if key not in members:
            raise InputError(f"{path}: no '{key}' array (keys: {', '.join(sorted(members))})")
        return ZipNpyArray(path, members[key])
    nn, ne = (arr(data, members, k).read_all().reshape(-1)
              for k in ("num_nodes_list", "num_edges_list"))
    if len(nn) != 1 or len(ne) != 1:
        raise InputError(f"{data}: holds {len(nn)} graphs; --ogb reads single-graph datasets")
    ei = arr(data, members, "edge_index")
    if len(ei.shape) != 2 or ei.shape[0] != 2:
        raise InputError(f"{ei.source}: must have shape [2, E], got {list(ei.shape)}")
    edges = _zip_edges(ei, chunk)
    if edges.num_edges != int(ne[0]):
        raise InputError(f"{data}: num_edges_list says {int(ne[0])} edges, edge_index holds "
                         f"{edges.num_edges}")
    ds = Dataset(edges=edges, num_nodes=int(nn[0]), files=[d])
    if "node_feat" in members:
        ds.features = NpyTable(arr(data, members, "node_feat"))
    ds.labels = NpyTable(arr(lab, npz_members(lab), "node_label"))
    for ours, f in parts:
        ds.splits[ours] = IdCsvTable(f)
    return ds


class IdCsvTable(Table):
    """A headerless CSV (optionally compressed) of one integer per line, as ogb's split
    files, streamed; one validating pass at construction counts the rows."""

    def __init__(self, path: Path):
        self.path, self.source, self.dtype = Path(path), str(path), np.dtype(np.int64)
        self.shape = (sum(len(b) for b in self._batches()),)

    def _batches(self) -> Iterator[np.ndarray]:
        import pyarrow as pa
        from pyarrow import csv as pcsv
        try:
            reader = pcsv.open_csv(
                pa.input_stream(str(self.path), compression="detect"),
                read_options=pcsv.ReadOptions(autogenerate_column_names=True,
                                              block_size=1 << 20),
                convert_options=pcsv.ConvertOptions(column_types={"f0": pa.int64()}))
            for b in reader:
                if b.num_columns != 1:
                    raise InputError(f"{self.source}: expected one node id per line, found "
                                     f"{b.num_columns} columns")
                yield column_numpy(b.column(0), "node id", self.source)
        except InputError:
            raise
        except Exception as e:    # pyarrow: ArrowInvalid (bad value, empty file), OSError
            raise InputError(f"{self.source}: not a list of node ids ({first_line(e)})") from None

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        rows = max(1, rows)
        for b in self._batches():
            for s in range(0, len(b), rows):
                yield b[s:s + rows]


def _open_ogb_loader(name: str, r: Path, d: Path, chunk: int) -> Dataset:
    """Through ogb's NumPy loader, which reads everything into memory (its own limit, not
    ours) and imports torch; only for the CSV raw layout, or ogb's processed cache alone."""
    import contextlib
    import io
    import os
    import sys
    import warnings
    onp = _ogb_dataset_module()
    (d / "processed").mkdir(exist_ok=True)
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    # ogb caches numpy arrays with torch.save and reloads them with torch.load, which current
    # torch refuses by default (weights_only): allow it for ogb's own cache file only.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    chatter = io.StringIO()         # ogb's prints and bars: shown after a load, not before
    try:                             # the one-line error of a failed one
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = onp.NodePropPredDataset(name=name, root=str(r))
            split = ds.get_idx_split()
    except (Exception, SystemExit) as e:
        raise InputError(f"--ogb {name}: cannot load from {r} ({first_line(e)})") from None
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old
    sys.stderr.write(chatter.getvalue())
    graph, labels = ds[0]
    src = f"--ogb {name}"
    ei = np.asarray(graph["edge_index"])

    def gen() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, ei.shape[1], chunk):
            yield ei[0, s:s + chunk], ei[1, s:s + chunk]
    out = Dataset(edges=EdgeInput(src, gen, num_edges=int(ei.shape[1])),
                  num_nodes=int(graph["num_nodes"]), files=[d])
    if graph.get("node_feat") is not None:
        out.features = ArrayTable(np.asarray(graph["node_feat"]), f"{src} node_feat")
    if labels is not None:
        y = np.asarray(labels)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dtype.kind == "f":     # ogbn-papers100M: NaN marks unlabelled nodes
            y = np.where(np.isnan(y), -1, y).astype(np.int64)
        out.labels = ArrayTable(y, f"{src} labels")
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        out.splits[ours] = ArrayTable(np.asarray(split[theirs], dtype=np.int64),
                                      f"{src} split {theirs}")
    return out
