"""lrgi-ooc: out-of-core layer-wise self-supervised node embeddings (LRGI).

The public API (docs/api.md) is loaded on first use, so `import lrgi_ooc` costs nothing and
loads neither torch nor PyG:

    import lrgi_ooc
    lrgi_ooc.preprocess(edges="edges.parquet", features="x.npy", out="graph.zarr")
    lrgi_ooc.layer("graph.zarr", layer=1)
    lrgi_ooc.evaluate("graph.zarr", layer=1)
"""
from __future__ import annotations

import os
from typing import Any

# OpenMP threads (torch's and numba's pools) that wait for work sleep instead of spinning:
# with two pools in one process, a prefetch thread and other jobs on a 2-core machine,
# spinning threads took the cores from the working ones (a Coauthor CS training step: 2.0 s
# spinning, 0.73 s passive; docs/benchmarks.md "Time to embeddings"). Read when torch loads;
# the same threads and the same results either way. A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
