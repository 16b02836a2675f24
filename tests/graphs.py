"""Small stores for tests, built through the project's own store and CSR builder."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from lrgi_ooc.csr.build import build_csr
from lrgi_ooc.store.layout import FEATURES, LABELS, GraphStore, embeddings_key


def random_edges(n: int, avg_deg: float, seed: int, hubs: int = 0) -> np.ndarray:
    """[2, E] random directed edges; `hubs` nodes receive from a large share of the graph."""
    rng = np.random.default_rng(seed)
    e = int(n * avg_deg)
    src = rng.integers(0, n, e)
    dst = rng.integers(0, n, e)
    if hubs:
        k = max(1, e // 4)
        dst[:k] = rng.integers(0, hubs, k)
    return np.stack([src, dst])


def make_store(path: Path, n: int = 500, avg_deg: float = 6, feat: int = 16, seed: int = 0,
               classes: int = 3, hubs: int = 0, undirected: bool = True,
               features: np.ndarray | None = None) -> GraphStore:
    ei = random_edges(n, avg_deg, seed, hubs)
    s = GraphStore.create(path, {"num_nodes": n, "num_edges": 0})
    r = build_csr(s, lambda: iter([(ei[0], ei[1])]), n, source="test", undirected=undirected,
                  workdir=Path(str(path) + ".work"))
    s.update_meta(num_edges=r.num_edges)
    rng = np.random.default_rng(seed + 1)
    x = features if features is not None else rng.standard_normal((n, feat)).astype(np.float32)
    s.write_array(FEATURES, x)
    s.write_array(LABELS, rng.integers(0, classes, n).astype(np.int64))
    perm = rng.permutation(n)
    a, b = n // 10, n // 5
    s.write_split({"train": np.sort(perm[:a]), "val": np.sort(perm[a:b]),
                   "test": np.sort(perm[b:])})
    s.mark_stage("preprocess", {"test": seed})
    return s


def edge_index_of(store: GraphStore) -> np.ndarray:
    """[2, E] (src, dst) of the stored CSR: row i lists the sources of edges into i."""
    indptr, indices = store.indptr(), store.indices()
    dst = np.repeat(np.arange(store.num_nodes), np.diff(indptr))
    return np.stack([np.asarray(indices, dtype=np.int64), dst])


def downgrade_to_v1(path, layers, npz: bool = True) -> None:
    """Rewrite a store as format v1 left it: each trained layer's weights only in
    `<store>.runs/train-<l>/` (layer.pt, plus block.npz unless `npz` is False)."""
    import torch

    from lrgi_ooc.nn.blockweights import BLOCK_FILE
    from lrgi_ooc.nn.trained import WEIGHTS_FILE, load_blob, load_block
    from lrgi_ooc.store.layout import train_stage, weights_key
    s = GraphStore(path)
    for layer in layers:
        run = s.run_dir(train_stage(layer))
        w, meta = load_block(s, layer)
        blob = load_blob(s, layer)
        torch.save(blob, run / WEIGHTS_FILE)
        if npz:
            w.save(run / BLOCK_FILE, in_dim=meta["in_dim"], dim=meta["dim"],
                   inductive=bool(meta["inductive"]))
        s.delete(weights_key(layer))
    downgrade_to_v2(path)
    s.update_meta(format_version=1)


def downgrade_to_v2(path) -> None:
    """Rewrite a store as format v2 left it: every array's codecs `[bytes]`, every chunk file
    without its 4-byte CRC32C trailer."""
    import json
    import os

    from lrgi_ooc.store.layout import CRC_NBYTES
    s = GraphStore(path, _upgrading=True)
    for key in s.array_keys():
        a = s.info(key)
        if not a.checksummed:
            continue
        for i in range(a.num_chunks):
            if a.chunk_path(i).exists():
                os.truncate(a.chunk_path(i), a.file_nbytes - CRC_NBYTES)
        meta = s.path / key / "zarr.json"
        doc = json.loads(meta.read_text())
        doc["codecs"] = [c for c in doc["codecs"] if c["name"] != "crc32c"]
        meta.write_text(json.dumps(doc, indent=2))
    s.update_meta(format_version=2)


def copy_store(src: Path, dst: Path) -> Path:
    """A store and its `.runs` directory (stage progress, checkpoints), side by side."""
    shutil.copytree(src, dst)
    shutil.copytree(Path(str(src) + ".runs"), Path(str(dst) + ".runs"))
    return dst


def table(path: Path, key: str = embeddings_key(1)) -> np.ndarray:
    """A store array read whole (layer 1's table by default)."""
    return np.array(GraphStore(path).mmap(key))
