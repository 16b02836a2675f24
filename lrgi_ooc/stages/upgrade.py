"""`lrgi-ooc upgrade STORE`: a store of format v1 (trained weights in `<store>.runs/`) becomes
format v2 (weights inside the store) in place. The weights are written first and the format
version last, in one durable write, so a killed upgrade leaves a valid v1 store to rerun on."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lrgi_ooc.nn.trained import upgrade_v1
from lrgi_ooc.store.layout import FORMAT_VERSION, GraphStore


def upgrade_store(path: str | Path) -> dict[str, Any]:
    """Returns {"from", "to", "layers": layers whose weights moved, "lost": layers recorded
    as trained whose weights were not in .runs (their train record is cleared)}."""
    store = GraphStore(path, _upgrading=True)
    version = store.meta.get("format_version")
    if version == FORMAT_VERSION:
        return {"from": version, "to": version, "layers": [], "lost": []}
    moved, lost = upgrade_v1(store)
    store.update_meta(format_version=FORMAT_VERSION)
    return {"from": version, "to": FORMAT_VERSION, "layers": moved, "lost": lost}
