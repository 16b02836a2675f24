"""`lrgi-ooc upgrade STORE`: a store of format v1 (trained weights in `<store>.runs/`) or v2
(no chunk checksums) becomes format v3 in place. Every chunk file gets its CRC32C trailer
(each rewritten atomically, so a killed run is finished by the next: a chunk that already has
its trailer is skipped), a v1 store's weights move in, and the format version is written last,
in one durable write: a killed upgrade leaves a store of the old version to rerun on."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lrgi_ooc.base.progress import bar
from lrgi_ooc.nn.trained import upgrade_v1
from lrgi_ooc.store.layout import FORMAT_VERSION, GraphStore
from lrgi_ooc.store.lock import writes_store


def add_checksums(store: GraphStore) -> int:
    """The trailer on every chunk of every array still without one; returns the chunks
    rewritten (0 on a rerun after a complete pass)."""
    infos = [store.info(k) for k in store.array_keys()]
    todo = [a for a in infos if a.raw and not a.checksummed]
    done = 0
    with bar(sum(a.chunk_nbytes * a.num_chunks for a in todo), "upgrade: checksums",
             "B") as pb:
        for a in todo:
            done += store.add_checksums(a.key, pb.update)
    return done


@writes_store("path", "upgrade")
def upgrade_store(path: str | Path) -> dict[str, Any]:
    """Returns {"from", "to", "layers": layers whose weights moved, "lost": layers recorded
    as trained whose weights were not in .runs (their train record is cleared), "chunks":
    chunk files given a checksum}."""
    store = GraphStore(path, _upgrading=True)
    version = store.meta.get("format_version")
    if version == FORMAT_VERSION:
        return {"from": version, "to": version, "layers": [], "lost": [], "chunks": 0}
    chunks = add_checksums(store)
    moved, lost = upgrade_v1(store) if version == 1 else ([], [])
    store.update_meta(format_version=FORMAT_VERSION)
    return {"from": version, "to": FORMAT_VERSION, "layers": moved, "lost": lost,
            "chunks": chunks}
