"""Whole datasets as one input: the ../shared/datasets `.npz` layout and OGB node datasets.

Built from ingest's readers (edges, tables), so every format is validated and streamed the
same way; only these two formats know how a dataset bundles its parts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.ingest.edges import EdgeInput, npy_edges
from lrgi_ooc.ingest.tables import (ArrayTable, NpyArray, NpyTable, Table, csr_from_npz, first_line,
                     npz_members, require_file)


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
    ds = Dataset(edges=npy_edges(NpyArray(p, members["edge_index"]), chunk), files=[p])
    if "x" in members:
        ds.features = NpyTable(NpyArray(p, members["x"]))
        if len(ds.features.shape) != 2:
            raise InputError(f"{p}:x must have shape [N, F], got {list(ds.features.shape)}")
    elif "x_data" in members:
        ds.features = csr_from_npz(p, members, "x_")
        ds.features.source = f"{p}:x"
    if "y" in members:
        ds.labels = NpyTable(NpyArray(p, members["y"]))
    for part in ("train", "val", "test"):
        if f"{part}_mask" in members:
            ds.splits[part] = NpyTable(NpyArray(p, members[f"{part}_mask"]))
    return ds


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


def open_ogb(name: str, root: str | Path, chunk: int = 1 << 22) -> Dataset:
    """An ogbn-* dataset from a local ogb root, through ogb's NumPy loader (no download).

    ogb reads everything into memory (its own limit, not ours) and imports torch; this is the
    only path of `preprocess` that does. Checks first that loading will not try to download or
    prompt: the dataset directory, its RELEASE file and its raw files must be present.
    """
    import contextlib
    import os
    import sys
    import warnings
    import pandas as pd
    onp = _ogb_dataset_module()
    r = require_file(root, "--ogb-root")
    master = pd.read_csv(Path(onp.__file__).with_name("master.csv"), index_col=0,
                         keep_default_na=False)
    if name not in master:
        raise InputError(f"--ogb: unknown dataset '{name}' (ogb knows: {', '.join(master.keys())})")
    meta = master[name]
    if meta["is hetero"] == "True":
        raise InputError(f"--ogb {name}: heterogeneous graphs are not supported")
    d = r / "_".join(name.split("-"))
    raw = d / "raw" / ("data.npz" if meta["binary"] == "True" else "edge.csv.gz")
    processed = d / "processed" / "data_processed"
    if not (raw.is_file() or processed.is_file()):
        raise InputError(f"--ogb-root {r}: {raw} is missing (downloads are not attempted)")
    release = d / f"RELEASE_v{meta['version']}.txt"
    if not release.is_file():
        raise InputError(f"--ogb-root {r}: {release} is missing (outdated or incomplete copy)")
    (d / "processed").mkdir(exist_ok=True)
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    # ogb caches numpy arrays with torch.save and reloads them with torch.load, which current
    # torch refuses by default (weights_only): allow it for ogb's own cache file only.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
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
