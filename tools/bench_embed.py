#!/usr/bin/env python
"""Benchmark `embed` in-process: stage seconds, edges/s and where the time goes.

    python tools/bench_embed.py --work DIR [--nodes 1000000] [--avg-degree 20] [--dim 64]
                                [--heads 4] [--repeat 3] [--json out.json]
                                [--memory-limit SIZE] [--source-blocks S]
                                [--balloon GB] [--drop-caches] [--table-dtype float16]

Builds DIR/graph.zarr once (`lrgi-ooc synth`, `preprocess --undirected`, `train --layer 1
--steps 5`), then runs `embed_layer` `--repeat` times in this process (the first run also
loads numba's cached kernels; later runs are warm). Each run is profiled with cProfile: the
breakdown gives the seconds in the projection pass (`project_rows`), the aggregation kernel
(`gatkernel.accumulate`), its set-up and finish (`init_state`, `finish`), and reading / writing.

`--memory-limit` / `--source-blocks` are embed's (the streamed path; each row records the
plan). `--balloon GB` runs every repeat beside `tools/balloon.py GB` (a smaller machine) and
records the MemAvailable it left; `--drop-caches` (root) empties the page cache before each
run, so every run starts cold. A figure claimed for "larger than memory" states that
MemAvailable (docs/benchmarks.md, "Balloon").
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("LRGI_OOC_QUIET", "1")

PARTS = {"project (phase 1)": "project_rows", "accumulate kernel": "accumulate",
         "init_state": "init_state", "finish": "finish", "file reads": "readinto",
         "file writes": "write"}


def cli(*args: str) -> None:
    print("$ lrgi-ooc " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lrgi_ooc", *args], check=True)


def build(work: Path, nodes: int, degree: float, dim: int, heads: int) -> Path:
    store = work / "graph.zarr"
    if not (store / "zarr.json").exists():
        cli("synth", "--out", str(work / "input"), "--nodes", str(nodes), "--avg-degree",
            str(degree), "--feature-dim", "64", "--overwrite")
        cli("preprocess", "--edges", str(work / "input" / "edges"), "--features",
            str(work / "input" / "features.npy"), "--undirected", "--out", str(store),
            "--overwrite")
    cli("train", str(store), "--layer", "1", "--steps", "5", "--dim", str(dim), "--heads",
        str(heads))
    return store


@contextlib.contextmanager
def balloon(gb: str | None, work: Path) -> Iterator[int | None]:
    """tools/balloon.py GB in the background for the body (MemAvailable once locked), or
    nothing when `gb` is None; the balloon is stopped however the body ends."""
    if gb is None:
        yield None
        return
    ready = work / "balloon.ready.json"
    ready.unlink(missing_ok=True)
    p = subprocess.Popen([sys.executable, str(REPO / "tools" / "balloon.py"), gb, "--ready",
                          str(ready)])
    try:
        while not ready.exists():
            if p.poll() is not None:
                raise SystemExit(f"balloon exited with {p.returncode}")
            time.sleep(0.1)
        yield int(json.loads(ready.read_text())["mem_available_bytes"])
    finally:
        p.terminate()
        p.wait()


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def seconds_in(stats: pstats.Stats, name: str) -> float:
    return sum(v[3] for k, v in stats.stats.items() if k[2] == name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--avg-degree", type=float, default=20.0)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--memory-limit", default="2GB")
    ap.add_argument("--source-blocks", type=int, default=None)
    ap.add_argument("--table-dtype", default="float32", choices=["float32", "float16"],
                    help="embed's table and projection dtype")
    ap.add_argument("--balloon", default=None, help="GB to lock with tools/balloon.py")
    ap.add_argument("--drop-caches", action="store_true")
    args = ap.parse_args()
    from lrgi_ooc.store.layout import GraphStore

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = build(work, args.nodes, args.avg_degree, args.dim, args.heads)
    print(f"load average {os.getloadavg()[0]:.2f}; graph {GraphStore(store).num_nodes:,} nodes, "
          f"{GraphStore(store).num_edges:,} stored edges", flush=True)
    runs = []
    with balloon(args.balloon, work) as available:
        for r in range(args.repeat):
            runs.append(one_run(store, r, args, available))
    if available is not None:
        print(f"\nbeside a {args.balloon} GB balloon: MemAvailable {available / 2**30:.2f} GB")
    print("\n| run | source blocks | stage s | M edges/s | " + " | ".join(PARTS) + " |")
    print("|---" * (4 + len(PARTS)) + "|")
    for row in runs:
        print(f"| {row['run']} | {row['plan']['source_blocks']} ({row['plan']['mode']}) | "
              f"{row['stage_s']:.2f} | {row['edges_per_s'] / 1e6:.2f} | "
              + " | ".join(f"{row[k]:.2f}" for k in PARTS) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


def one_run(store: Path, r: int, args: argparse.Namespace, available: int | None) -> dict:
    from lrgi_ooc.stages.embed import embed_layer
    from lrgi_ooc.store.layout import GraphStore
    GraphStore(store).clear_stage("embed/1")
    if args.drop_caches:
        drop_caches()
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    rec = embed_layer(store, 1, memory_limit=args.memory_limit,
                      source_blocks=args.source_blocks, table_dtype=args.table_dtype)
    prof.disable()
    wall = time.perf_counter() - t
    st = pstats.Stats(prof)
    row = {"run": r + 1, "stage_s": rec["seconds"], "wall_s": round(wall, 2),
           "edges": rec["edges"], "edges_per_s": rec["edges"] / max(rec["seconds"], 1e-9),
           "plan": rec["plan"], "mem_available_bytes": available,
           "table_dtype": args.table_dtype,
           **{k: round(seconds_in(st, f), 3) for k, f in PARTS.items()}}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
