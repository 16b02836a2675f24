"""lrgi-ooc: out-of-core layer-wise self-supervised node embeddings (LRGI).

The public API (docs/api.md) is loaded on first use, so `import lrgi_ooc` costs nothing and
loads neither torch nor PyG:

    import lrgi_ooc
    lrgi_ooc.preprocess(edges="edges.parquet", features="x.npy", out="graph.zarr")
    lrgi_ooc.layer("graph.zarr", layer=1)
    lrgi_ooc.evaluate("graph.zarr", layer=1)
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["InputError", "StoreView", "open_store", "preprocess", "synth", "train_layer",
           "embed_layer", "layer", "train_e2e", "evaluate", "run", "info", "validate",
           "export", "encode", "report", "load_encoder", "upgrade"]

def __getattr__(name: str) -> Any:
    if name in __all__:
        from lrgi_ooc import api
        return getattr(api, name)
    raise AttributeError(f"module 'lrgi_ooc' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
