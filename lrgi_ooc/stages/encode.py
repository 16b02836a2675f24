"""`lrgi-ooc encode MODEL_STORE TARGET_STORE`: inductive transfer without retraining.

The trained layers of one store are applied, layer by layer, to another preprocessed graph
with the same feature width (a new graph, or the same graph after it grew): each layer is the
`embed` stage run on the target with the model store's weights, so it is resumable chunk by
chunk and runs in-process or on Dask exactly like `embed`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lrgi_ooc.base.errors import InputError
from lrgi_ooc.nn.trained import load_block
from lrgi_ooc.stages.embed import DEFAULT_MAX_EDGES, embed_layer
from lrgi_ooc.store.layout import GraphStore, train_stage
from lrgi_ooc.store.lock import writes_store


def trained_layers(store: GraphStore) -> list[int]:
    """Layers 1, 2, ... trained in `store`, up to the first gap."""
    out = []
    while store.stage_complete(train_stage(len(out) + 1)):
        out.append(len(out) + 1)
    return out


def parse_layers(text: str | None, available: list[int], model: Path) -> list[int]:
    """`--layers`: "1..L", "a..b", "a,b,c" or "a"; default every trained layer."""
    if text is None:                 # an empty --layers names no layer: an error, below
        want = list(available)
    else:
        t = str(text).strip()
        m = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", t)
        try:
            want = list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else \
                [int(v) for v in t.split(",")]
        except ValueError:
            raise InputError(f"--layers: expected a range like 1..3 or a list like 1,2, "
                             f"got '{text}'") from None
    if not want:
        raise InputError(f"--layers: '{text}' names no layer" if text else
                         f"{model}: no trained layer to encode with")
    if want != list(range(want[0], want[-1] + 1)) or want[0] < 1:
        raise InputError(f"--layers: layers must be consecutive and >= 1, got '{text}'")
    missing = [l for l in want if l not in available]
    if missing:
        raise InputError(f"{model}: layer {missing[0]} is not trained (trained: "
                         f"{', '.join(map(str, available)) or 'none'})")
    return want


@writes_store("target", "encode with {model}")
def encode_store(model: str | Path, target: str | Path, *, layers: str | None = None,
                 max_edges: int = DEFAULT_MAX_EDGES, device: str = "auto",
                 client: Any = None) -> list[dict[str, Any]]:
    """Write the target's `layers/<l>/embeddings` for the chosen layers, lowest first;
    returns the target's embed/<l> records. Nothing is written when the widths disagree."""
    src, dst = GraphStore(model), GraphStore(target)
    want = parse_layers(layers, trained_layers(src), src.path)
    first = want[0]
    if not dst.has(dst.table_key(first - 1)):
        raise InputError(f"{dst.path}: store has no node features to encode" if first == 1
                         else f"{dst.path}: layer {first - 1} table is missing: encode "
                              f"layers 1..{want[-1]} instead")
    in_dim = load_block(src, first)[1]["in_dim"]
    width = dst.info(dst.table_key(first - 1)).shape[1]
    if width != in_dim:
        what = "feature width" if first == 1 else f"layer {first - 1} width"
        raise InputError(f"{dst.path}: {what} {width} differs from {src.path}'s layer "
                         f"{first} input width {in_dim}")
    return [embed_layer(dst.path, l, max_edges=max_edges, device=device, client=client,
                        model=src.path) for l in want]
