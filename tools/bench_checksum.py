"""What the chunk checksums (format v3, CRC32C trailer) cost: write and validate throughput of
one table with and without them.

    .venv/bin/python tools/bench_checksum.py --gb 1 --repeat 3 --out bench_checksum.json

The table is float32 [rows, 64] in chunks of 32 MiB (131,072 rows), written chunk by chunk
through `GraphStore.write_chunk` (what every stage does) into a fresh store directory. "without"
is the format-2 layout: the same array with its zarr.json codecs set back to `[bytes]` (so
`write_chunk` writes no trailer), which is how a v2 store was written. Validate is the
checksum pass of `lrgi-ooc validate` (`stages.inspect._check_chunks`: every chunk file read
once through one 8 MiB buffer, CRC32C over it); "without" is the same streamed read of the same
files, no CRC (what reading every chunk costs anyway). Both run on a warm page cache (the
files were just written; dropping the cache needs root): they measure the CPU cost the
checksum adds, not the disk. `crc32c_gbps` is google-crc32c alone over a 32 MiB buffer in
memory. Best of `--repeat` runs; these machines are shared, read ratios, not promises.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import google_crc32c
import numpy as np

from lrgi_ooc.stages import inspect as ins
from lrgi_ooc.store.layout import GraphStore

WIDTH = 64
CHUNK_ROWS = 1 << 17            # 32 MiB of float32 [., 64]


def _drop_checksums(store: GraphStore, key: str) -> None:
    """The format-2 layout of this array: codecs [bytes], no trailer on its chunks."""
    f = store.path / key / "zarr.json"
    doc = json.loads(f.read_text())
    doc["codecs"] = [c for c in doc["codecs"] if c["name"] != "crc32c"]
    f.write_text(json.dumps(doc, indent=2))
    store._infos.pop(key, None)


def _write(store: GraphStore, key: str, rows: int, block: np.ndarray, checksums: bool) -> float:
    a = store.create_array(key, (rows, WIDTH), np.float32, chunk_rows=CHUNK_ROWS)
    if not checksums:
        _drop_checksums(store, key)
    t = time.perf_counter()
    for i in range(a.num_chunks):
        s, e = a.chunk_bounds(i)
        store.write_chunk(key, i, block[:e - s])
    return time.perf_counter() - t


def _read_all(store: GraphStore, key: str, buf: np.ndarray) -> float:
    """The same streamed pass as validate's, without the CRC."""
    a = store.info(key)
    t = time.perf_counter()
    for i in range(a.num_chunks):
        with open(a.chunk_path(i), "rb") as f:
            while f.readinto(memoryview(buf)):
                pass
    return time.perf_counter() - t


def _validate(store: GraphStore) -> float:
    t = time.perf_counter()
    ins._check_chunks(store)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="table size in GiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    os.environ.setdefault("LRGI_OOC_QUIET", "1")
    rows = int(a.gb * 2**30) // (WIDTH * 4)
    nbytes = rows * WIDTH * 4
    block = np.random.default_rng(0).standard_normal((CHUNK_ROWS, WIDTH)).astype(np.float32)
    buf = np.empty(ins.READ_BYTES, np.uint8)
    buf[:] = 0                                   # touched once: reused by every pass
    crc_t = []
    for _ in range(5):
        t = time.perf_counter()
        google_crc32c.value(block.view(np.uint8).reshape(-1))
        crc_t.append(time.perf_counter() - t)
    root = Path(tempfile.mkdtemp(prefix="bench_checksum.", dir=a.dir))
    res: dict[str, list[float]] = {k: [] for k in ("write_with", "write_without",
                                                   "validate_with", "read_without")}
    try:
        for r in range(a.repeat):
            for checksums in ((True, False) if r % 2 == 0 else (False, True)):
                p = root / f"s{int(checksums)}.zarr"
                shutil.rmtree(p, ignore_errors=True)
                s = GraphStore.create(p, {"num_nodes": rows, "num_edges": 0})
                s.mark_stage("preprocess", {})
                w = _write(s, "t", rows, block, checksums)
                res["write_with" if checksums else "write_without"].append(w)
                if checksums:
                    res["validate_with"].append(_validate(GraphStore(p)))
                else:
                    res["read_without"].append(_read_all(GraphStore(p, _upgrading=True),
                                                         "t", buf))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mbs = {k: round(nbytes / min(v) / 2**20) for k, v in res.items()}
    out = {"gib": round(nbytes / 2**30, 2), "chunks": -(-rows // CHUNK_ROWS),
           "chunk_mib": CHUNK_ROWS * WIDTH * 4 / 2**20, "repeat": a.repeat,
           "mib_per_s": mbs,
           "crc32c_gbps": round(block.nbytes / min(crc_t) / 1e9, 2),
           "crc32c_implementation": google_crc32c.implementation}
    print(json.dumps(out, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
