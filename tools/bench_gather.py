"""Random row gathers from a store's memory map vs a raw .npy memmap vs zarr-python.

    python tools/bench_gather.py [--rows 2000000] [--cols 128] [--batches 200] [--json out.json]

A rows x cols float32 table is written into a store through `GraphStore` (uncompressed,
65,536-row chunks, so `store.mmap` stitches many chunk files) and as a raw .npy. Then, with a
warm page cache and a reused output buffer (np.take(..., out=)), batches of 5,120 sorted
random rows are gathered through `store.mmap(key)`, `np.load(raw.npy, mmap_mode="r")` and
zarr-python (`oindex`, fewer batches: it is ~500x slower). Rounds alternate between the memory
maps; the median round is reported. Prints a markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lrgi_ooc import store as store_module  # noqa: E402
from lrgi_ooc.store.layout import GraphStore  # noqa: E402

BATCH = 5120
CHUNK_ROWS = 65536


def write_table(work: Path, rows: int, cols: int) -> tuple[GraphStore, Path]:
    store = GraphStore.create(work / "store", {"num_nodes": rows})
    store.create_array(store_module.FEATURES, (rows, cols), np.float32, chunk_rows=CHUNK_ROWS)
    raw = np.lib.format.open_memmap(work / "raw.npy", mode="w+", dtype=np.float32,
                                    shape=(rows, cols))
    w = store.stream_writer(store_module.FEATURES)
    rng = np.random.default_rng(0)
    for s in range(0, rows, CHUNK_ROWS):
        blk = rng.standard_normal((min(CHUNK_ROWS, rows - s), cols), dtype=np.float32)
        w.write(blk)
        raw[s:s + len(blk)] = blk
    w.close()
    raw.flush()
    del raw
    return store, work / "raw.npy"


def batches(rows: int, n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(rows, BATCH, replace=False)) for _ in range(n)]


def warm(a: np.ndarray) -> None:
    for s in range(0, len(a), CHUNK_ROWS):
        float(a[s:s + CHUNK_ROWS, 0].sum())
        np.asarray(a[s:s + CHUNK_ROWS]).max()


def gather_rate(a: np.ndarray, idx: list[np.ndarray], out: np.ndarray) -> float:
    t = time.perf_counter()
    for i in idx:
        np.take(a, i, axis=0, out=out)
    return len(idx) * BATCH / (time.perf_counter() - t)


def zarr_rate(z, idx: list[np.ndarray]) -> float:
    t = time.perf_counter()
    for i in idx:
        z.oindex[i, :]
    return len(idx) * BATCH / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--cols", type=int, default=128)
    p.add_argument("--batches", type=int, default=200, help="batches per memmap round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--zarr-batches", type=int, default=4)
    p.add_argument("--workdir", help="scratch directory (default: a temp dir)")
    p.add_argument("--json", default="bench_gather.json")
    a = p.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_gather_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        store, raw_path = write_table(work, a.rows, a.cols)
        mm = store.mmap(store_module.FEATURES)
        raw = np.load(raw_path, mmap_mode="r")
        assert np.array_equal(mm[::9973], raw[::9973])
        warm(mm)
        warm(raw)
        idx = batches(a.rows, a.batches)
        out = np.empty((BATCH, a.cols), np.float32)
        gather_rate(mm, idx[:5], out)
        gather_rate(raw, idx[:5], out)
        rates: dict[str, list[float]] = {"store.mmap": [], "raw .npy memmap": []}
        for _ in range(a.rounds):
            rates["store.mmap"].append(gather_rate(mm, idx, out))
            rates["raw .npy memmap"].append(gather_rate(raw, idx, out))
        z = store.zarr_array(store_module.FEATURES)
        zarr_rate(z, idx[:1])
        rates["zarr-python oindex"] = [zarr_rate(z, idx[:a.zarr_batches])]
        np.take(mm, idx[0], axis=0, out=out)
        assert np.array_equal(out, np.asarray(z.oindex[idx[0], :]))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    base = med["raw .npy memmap"]
    print(f"{a.rows:,} x {a.cols} float32, {BATCH:,} sorted random rows per batch, warm cache, "
          f"median of {a.rounds} rounds")
    print("| reader | rows/s | vs raw .npy memmap |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:,.0f} | {v / base:.3f}x |")
    Path(a.json).write_text(json.dumps({"rows": a.rows, "cols": a.cols, "batch": BATCH,
                                        "chunk_rows": CHUNK_ROWS, "rows_per_s": rates,
                                        "median_rows_per_s": med}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
