#!/usr/bin/env python
"""Benchmark `train`'s input rows: steps/s by the memory map and by pread + row cache.

    python tools/bench_train_rows.py --work DIR [--nodes 1000000] [--avg-degree 20]
        [--feature-dim 128] [--feature-dtype float32] [--steps 60] [--readers mmap,pread]
        [--memory-limit 2GB] [--read-threads 32] [--dim 512] [--batch-size 256]
        [--balloon GB] [--drop-caches] [--json out.json]

Builds DIR/graph.zarr once (`lrgi-ooc synth`, `preprocess --undirected`), then trains layer 1
in this process: a 2-step warm-up (not counted), then by the memory map with nothing locked away (the in-memory figure),
then once per reader of `--readers`, beside `tools/balloon.py GB` when `--balloon` is given
(a machine with less memory than the table: state its MemAvailable, printed, with the
figures). The in-memory run reads the table once first (warm page cache); `--drop-caches`
(root) empties the page cache before every other run, so each starts cold. Each run retrains from scratch (the stage record and checkpoint are cleared);
steps/s is the optimisation loop's (`seconds` of the train record), the reader's counters
come from the record's `rows`. The weights are the same for every reader (tested in
tests/test_rowreader.py); only the time differs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))
os.environ.setdefault("LRGI_OOC_QUIET", "1")

from bench_embed import balloon, drop_caches  # tools/ on the path: the same balloon


def cli(*args: str) -> None:
    print("$ lrgi-ooc " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lrgi_ooc", *args], check=True)


def build(work: Path, args: argparse.Namespace) -> Path:
    store = work / "graph.zarr"
    if not (store / "zarr.json").exists():
        cli("synth", "--out", str(work / "input"), "--nodes", str(args.nodes), "--avg-degree",
            str(args.avg_degree), "--feature-dim", str(args.feature_dim), "--feature-dtype",
            args.feature_dtype, "--overwrite")
        cli("preprocess", "--edges", str(work / "input" / "edges"), "--features",
            str(work / "input" / "features.npy"), "--undirected", "--out", str(store),
            "--feature-dtype", args.feature_dtype, "--overwrite")
    return store


def one_run(store: Path, label: str, reader: str, args: argparse.Namespace,
            available: int | None, steps: int | None = None) -> dict:
    from lrgi_ooc.stages.config import TrainConfig
    from lrgi_ooc.stages.train import CHECKPOINT_FILE, train_layer
    from lrgi_ooc.store.layout import GraphStore, train_stage
    s = GraphStore(store)
    s.clear_stage(train_stage(1))
    (s.run_dir(train_stage(1)) / CHECKPOINT_FILE).unlink(missing_ok=True)
    if available is None and label == "in memory":
        for _ in s.iter_blocks(s.table_key(0)):     # the table in the page cache: warm
            pass
    elif args.drop_caches:
        drop_caches()
    cfg = TrainConfig(dim=args.dim, heads=args.heads, batch_size=args.batch_size,
                      steps=steps or args.steps, checkpoint_every=10 ** 9, row_reader=reader,
                      memory_limit=args.memory_limit, read_threads=args.read_threads)
    t = time.perf_counter()
    rec = train_layer(store, 1, cfg)
    wall = time.perf_counter() - t
    row = {"run": label, "reader": reader, "steps": rec["steps"], "train_s": rec["seconds"],
           "wall_s": round(wall, 2), "steps_per_s": rec["steps"] / max(rec["seconds"], 1e-9),
           "rows": rec.get("rows"), "mem_available_bytes": available,
           "table_bytes": int(s.table(0).nbytes), "peak_rss_mb": rec.get("peak_rss_mb")}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--avg-degree", type=float, default=20.0)
    ap.add_argument("--feature-dim", type=int, default=128)
    ap.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--readers", default="mmap,pread")
    ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--read-threads", type=int, default=32)
    ap.add_argument("--balloon", default=None, help="GB to lock with tools/balloon.py")
    ap.add_argument("--drop-caches", action="store_true")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the in-memory run (memory map, no balloon)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    readers = [r for r in args.readers.split(",") if r]
    if not set(readers) <= {"mmap", "pread", "auto"}:
        ap.error("--readers: a list of mmap, pread, auto")
    from lrgi_ooc.store.layout import GraphStore

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = build(work, args)
    g = GraphStore(store)
    print(f"load average {os.getloadavg()[0]:.2f}; graph {g.num_nodes:,} nodes, "
          f"{g.num_edges:,} stored edges, table {g.table(0).nbytes / 2**30:.2f} GB", flush=True)
    one_run(store, "warm-up (numba, torch; not counted)", "pread", args, None, steps=2)
    runs = []
    if not args.no_baseline:
        runs.append(one_run(store, "in memory", "mmap", args, None))
    with balloon(args.balloon, work) as available:
        for reader in readers:
            label = f"beside {args.balloon} GB balloon" if args.balloon else "no balloon"
            runs.append(one_run(store, label, reader, args, available))
    if available is not None:
        print(f"\nbeside a {args.balloon} GB balloon: MemAvailable {available / 2**30:.2f} GB")
    base = runs[0]["steps_per_s"] if not args.no_baseline else None
    print("\n| run | reader | steps/s | x in-memory | row cache rows | hit rate | reads |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        rows = r["rows"] or {}
        seen = rows.get("hits", 0) + rows.get("misses", 0)
        rate = f"{rows['hits'] / seen:.2f}" if seen else "-"
        ratio = f"{r['steps_per_s'] / base:.2f}" if base else "-"
        print(f"| {r['run']} | {r['reader']} | {r['steps_per_s']:.2f} | {ratio} | "
              f"{rows.get('cache_rows', '-')} | {rate} | {rows.get('reads', '-')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
