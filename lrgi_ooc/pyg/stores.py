"""A store as PyG's remote backend: `(StoreFeatureStore(path), StoreGraphStore(path))`.

PyG's FeatureStore / GraphStore interfaces let its loaders and user code fetch node rows and
edges from any backend. These two serve a store read-only and without loading it: feature
rows come through the store's memory maps (only the requested rows are copied), and the
graph is served in its native CSC layout (the store's CSR lists the in-neighbours of each
node, i.e. the CSC of the (source, target) adjacency).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import FeatureStore
from torch_geometric.data import GraphStore as PyGGraphStore
from torch_geometric.data.feature_store import TensorAttr
from torch_geometric.data.graph_store import EdgeAttr, EdgeLayout

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.pyg.encoder import StoreLike, open_graph_store
from lrgi_ooc.store.layout import GraphStore

NODE = "node"                       # the one node type (group_name None means it too)
EDGE_TYPE = (NODE, "to", NODE)      # the one edge type (edge_type None means it too)
FEATURES_ATTR = "x"                 # node/features; layer l's table is f"layer_{l}"
LAYER_PREFIX = "layer_"


def _read_only(what: str) -> InputError:
    return InputError(f"{what}: the PyG adapters of an lrgi-ooc store are read-only "
                      f"(write through preprocess / layer)")


def _readonly_view(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


def _index_rows(index: Any, n: int) -> int:
    """How many rows `table[index]` has, without materialising anything of size N."""
    if isinstance(index, slice):
        return len(range(*index.indices(n)))
    idx = index.detach().cpu().numpy() if isinstance(index, Tensor) else np.asarray(index)
    if idx.dtype == np.bool_:
        return int(idx.sum())
    return int(idx.size)


class StoreFeatureStore(FeatureStore):
    """Node tables of a store as a read-only PyG `FeatureStore`.

    Attributes (group_name "node" or None): "x" = the node features, "layer_<l>" = layer l's
    table. `get_tensor(index=...)` copies only the requested rows out of the memory map
    (an index or boolean tensor, a slice or an int; PyG's `TensorAttr` cannot hold a numpy
    array of several ids); `index=None` returns the whole table as a
    read-only numpy memory map (zero copy: torch has no read-only tensors, and a tensor
    over the read-only pages would crash the process on an in-place write)."""

    def __init__(self, store: StoreLike):
        super().__init__()
        self.store: GraphStore = open_graph_store(store)
        self._maps: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({str(self.store.path)!r})"

    # ------------------------------------------------------------------ lookup
    def _key(self, attr: TensorAttr) -> str | None:
        """The store array behind `attr`, or None when the store has no such table."""
        s = self.store
        if attr.group_name not in (NODE, None) or not isinstance(attr.attr_name, str):
            return None
        name = attr.attr_name
        if name == FEATURES_ATTR:
            layer = 0
        elif name.startswith(LAYER_PREFIX) and name[len(LAYER_PREFIX):].isdigit():
            layer = int(name[len(LAYER_PREFIX):])
            if layer < 1:
                return None
        else:
            return None
        key = s.table_key(layer)
        return key if s.has(key) else None

    def _map(self, key: str) -> np.ndarray:
        if key not in self._maps:
            self._maps[key] = _readonly_view(self.store.mmap(key))
        return self._maps[key]

    def _require(self, attr: TensorAttr) -> str:
        key = self._key(attr)
        if key is None:
            names = [a.attr_name for a in self.get_all_tensor_attrs()]
            raise KeyError(f"{self.store.path}: no node table ({attr.group_name!r}, "
                           f"{attr.attr_name!r}); available: {names}")
        return key

    # ------------------------------------------------------------------ PyG interface
    def _get_tensor(self, attr: TensorAttr) -> Tensor | np.ndarray:
        key = self._require(attr)
        index = attr.index
        if index is None:
            return self._map(key)
        if isinstance(index, slice) and index.step in (None, 1):
            a, b, _ = index.indices(self.store.info(key).num_rows)
            return torch.from_numpy(self.store.read_rows(key, a, max(a, b)))
        if isinstance(index, Tensor):
            index = index.detach().cpu().numpy()
        rows = self._map(key)[index]   # a gather (new array) or a view of the read-only map
        return torch.from_numpy(rows if rows.flags.writeable else rows.copy())

    def _get_tensor_size(self, attr: TensorAttr) -> tuple[int, ...] | None:
        key = self._key(attr)
        if key is None:
            return None
        shape = self.store.info(key).shape
        index = attr.index if attr.is_set("index") else None
        if index is None:
            return tuple(shape)
        if isinstance(index, (int, np.integer)) or (isinstance(index, Tensor)
                                                     and index.dim() == 0):
            return tuple(shape[1:])
        return (_index_rows(index, shape[0]), *shape[1:])

    def get_all_tensor_attrs(self) -> list[TensorAttr]:
        """"x" (when the store has features) and "layer_<l>" for each written table."""
        out = [TensorAttr(NODE, FEATURES_ATTR)] if self.store.has(self.store.table_key(0)) \
            else []
        return out + [TensorAttr(NODE, f"{LAYER_PREFIX}{layer}")
                      for layer in self.store.layers()]

    def _put_tensor(self, tensor: Any, attr: TensorAttr) -> bool:
        raise _read_only(f"put_tensor({attr.group_name!r}, {attr.attr_name!r})")

    def _remove_tensor(self, attr: TensorAttr) -> bool:
        raise _read_only(f"remove_tensor({attr.group_name!r}, {attr.attr_name!r})")


def csc_to_csr(indptr: np.ndarray, indices: np.ndarray, num_nodes: int
               ) -> tuple[Tensor, Tensor]:
    """(rowptr [N + 1], col [E]) int64 of the graph whose CSC is (indptr, indices).

    Within each source row the targets come out ascending (a stable sort of the edges by
    source, from target order). Memory: the result (8 (N + 1 + E) bytes) plus, while it is
    built, the sort's permutation (8 E bytes) and buffer (up to 4 E): about 20 E at peak."""
    indices = np.asarray(indices)
    rowptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices, minlength=num_nodes), out=rowptr[1:])
    perm = np.argsort(indices, kind="stable")            # edge positions by source
    col = np.searchsorted(np.asarray(indptr)[1:], perm, side="right")  # their targets
    del perm
    return torch.from_numpy(rowptr), torch.from_numpy(np.asarray(col, dtype=np.int64))


class StoreGraphStore(PyGGraphStore):
    """The graph of a store as a read-only PyG `GraphStore`: one edge type
    ("node", "to", "node"), edges (source, target), size (N, N).

    Layouts, each returned as new int64 tensors (PyG's index dtype; the store may hold
    int32):
      - "csc" (native): (row, colptr) = (indices, indptr), 8 (N + 1 + E) bytes;
      - "coo": (row, col) = (source, target), sorted by target, 16 E bytes;
      - "csr": (rowptr, col). On a store built with `undirected` (meta `symmetrized`) the
        graph is symmetric and its CSR is the CSC arrays themselves; otherwise the edges are
        transposed (`csc_to_csr`: a sort of all E edges, about 20 E bytes at peak)."""

    def __init__(self, store: StoreLike):
        super().__init__()
        self.store: GraphStore = open_graph_store(store)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({str(self.store.path)!r})"

    @property
    def num_nodes(self) -> int:
        return self.store.num_nodes

    @property
    def symmetrized(self) -> bool:
        """Whether every edge's reverse is stored too (the CSR equals the CSC)."""
        return bool(self.store.meta.get("symmetrized"))

    def _csc(self) -> tuple[np.ndarray, np.ndarray]:
        return self.store.indptr(), self.store.indices()

    def _get_edge_index(self, edge_attr: EdgeAttr) -> tuple[Tensor, Tensor] | None:
        n = self.num_nodes
        if edge_attr.edge_type not in (EDGE_TYPE, None):
            return None
        if edge_attr.size is not None and tuple(edge_attr.size) != (n, n):
            return None
        indptr, indices = self._csc()
        layout = EdgeLayout(edge_attr.layout)
        if layout == EdgeLayout.CSC or (layout == EdgeLayout.CSR and self.symmetrized):
            # CSC: (row, colptr); for a symmetric graph the same arrays are (rowptr, col)
            row = torch.from_numpy(np.array(indices, dtype=np.int64))
            ptr = torch.from_numpy(np.array(indptr, dtype=np.int64))
            return (row, ptr) if layout == EdgeLayout.CSC else (ptr, row)
        if layout == EdgeLayout.COO:
            src = torch.from_numpy(np.array(indices, dtype=np.int64))
            dst = torch.repeat_interleave(torch.arange(n, dtype=torch.int64),
                                          torch.from_numpy(np.diff(indptr)))
            return src, dst
        return csc_to_csr(indptr, indices, n)

    def get_all_edge_attrs(self) -> list[EdgeAttr]:
        """The one edge type in each layout `get_edge_index` serves, CSC (native) first."""
        size = (self.num_nodes, self.num_nodes)
        return [EdgeAttr(EDGE_TYPE, EdgeLayout.CSC, is_sorted=True, size=size),
                EdgeAttr(EDGE_TYPE, EdgeLayout.COO, is_sorted=True, size=size),
                EdgeAttr(EDGE_TYPE, EdgeLayout.CSR, is_sorted=False, size=size)]

    def _put_edge_index(self, edge_index: Any, edge_attr: EdgeAttr) -> bool:
        raise _read_only(f"put_edge_index({edge_attr.edge_type!r}, {edge_attr.layout.value!r})")

    def _remove_edge_index(self, edge_attr: EdgeAttr) -> bool:
        raise _read_only(f"remove_edge_index({edge_attr.edge_type!r}, "
                         f"{edge_attr.layout.value!r})")
