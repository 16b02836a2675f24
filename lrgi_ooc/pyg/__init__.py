"""PyTorch / PyG adapters of a trained store: the layers as one PyG model (`encoder`) and the
store as PyG's read-only FeatureStore / GraphStore backend (`stores`).

May import `base`, `store`, `cluster`, `nn` and `sample`; must not import api or cli, nor
`stages` (the adapters read what the stages wrote, through `GraphStore` only).
"""
from __future__ import annotations

from lrgi_ooc.pyg.encoder import (LRGIEncoder, LRGIEncoderLayer, edge_index_from_store,
                                  load_encoder)
from lrgi_ooc.pyg.stores import StoreFeatureStore, StoreGraphStore

__all__ = ["LRGIEncoder", "LRGIEncoderLayer", "load_encoder", "edge_index_from_store",
           "StoreFeatureStore", "StoreGraphStore"]
