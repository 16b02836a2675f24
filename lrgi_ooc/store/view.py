"""A read-only view of a store for Python users: numpy arrays and memory maps, no writes.

The view is what `lrgi_ooc.open_store` returns. It names no Zarr key itself: every access goes
through `GraphStore`, so the layout stays in one module.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.store.layout import FEATURES, GraphStore


class StoreView:
    """Counts, the CSR, node tables, splits, each layer's table and the completed stages.

    Large arrays come back memory-mapped and read-only: fine for slicing a few rows or
    handing them to numpy/torch, but a random gather over a table larger than memory reads
    it page by page from disk."""

    def __init__(self, path: str | os.PathLike):
        self._store = GraphStore(path)

    def __repr__(self) -> str:
        return (f"StoreView({str(self.path)!r}: {self.num_nodes:,} nodes, "
                f"{self.num_edges:,} edges, layers {self.layers()})")

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def meta(self) -> dict[str, Any]:
        """The store's attributes (a copy: editing it changes nothing on disk)."""
        return self._store.meta

    @property
    def num_nodes(self) -> int:
        return self._store.num_nodes

    @property
    def num_edges(self) -> int:
        return self._store.num_edges

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(indptr [N + 1], indices [E]): row i holds the in-neighbours of node i."""
        return _readonly(self._store.indptr()), _readonly(self._store.indices())

    def features(self) -> np.ndarray | None:
        """[N, F] node features, or None for a store without them."""
        return _readonly(self._store.mmap(FEATURES)) if self._store.has(FEATURES) else None

    def labels(self) -> np.ndarray | None:
        """[N] class ids (-1 = unlabelled) or [N, C] 0/1 labels, or None."""
        return self._store.labels()

    def splits(self) -> list[dict[str, np.ndarray]]:
        """The stored splits, each {"train", "val", "test"} -> node ids; [] when none."""
        return self._store.splits()

    def layers(self) -> list[int]:
        """Layers whose table is written."""
        return self._store.layers()

    def embeddings(self, layer: int) -> np.ndarray:
        """Layer L's [N, D] output table (layer 0 = the node features)."""
        key = self._store.table_key(layer)
        if not self._store.has(key):
            raise InputError(f"{self.path}: store has no node features" if int(layer) == 0
                             else f"{self.path}: layer {layer} table is missing")
        return _readonly(self._store.table(layer))

    def stages(self) -> dict[str, dict[str, Any]]:
        """Completed stages: name -> record (config, config_hash, completed_at, ...)."""
        return self._store.stages()


def _readonly(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def open_store(path: str | os.PathLike) -> StoreView:
    """Open a store for reading (an unusable path is an InputError naming it)."""
    return StoreView(path)
