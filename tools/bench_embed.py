#!/usr/bin/env python
"""Benchmark `embed` in-process: stage seconds, edges/s and where the time goes.

    python tools/bench_embed.py --work DIR [--nodes 1000000] [--avg-degree 20] [--dim 64]
                                [--heads 4] [--repeat 3] [--json out.json]

Builds DIR/graph.zarr once (`lrgi-ooc synth`, `preprocess --undirected`, `train --layer 1
--steps 5`), then runs `embed_layer` `--repeat` times in this process (the first run also
loads numba's cached kernels; later runs are warm). Each run is profiled with cProfile: the
breakdown gives the seconds in the projection pass (`project_rows`), the aggregation kernel
(`gatkernel.accumulate`), its set-up and finish (`init_state`, `finish`), and reading / writing.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

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
    args = ap.parse_args()
    from lrgi_ooc.stages.embed import embed_layer
    from lrgi_ooc.store.layout import GraphStore

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = build(work, args.nodes, args.avg_degree, args.dim, args.heads)
    print(f"load average {os.getloadavg()[0]:.2f}; graph {GraphStore(store).num_nodes:,} nodes, "
          f"{GraphStore(store).num_edges:,} stored edges", flush=True)
    runs = []
    for r in range(args.repeat):
        GraphStore(store).clear_stage("embed/1")
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.enable()
        rec = embed_layer(store, 1)
        prof.disable()
        wall = time.perf_counter() - t
        st = pstats.Stats(prof)
        row = {"run": r + 1, "stage_s": rec["seconds"], "wall_s": round(wall, 2),
               "edges": rec["edges"], "edges_per_s": rec["edges"] / rec["seconds"],
               **{k: round(seconds_in(st, f), 3) for k, f in PARTS.items()}}
        runs.append(row)
        print(json.dumps(row), flush=True)
    print("\n| run | stage s | M edges/s | " + " | ".join(PARTS) + " |")
    print("|---" * (3 + len(PARTS)) + "|")
    for row in runs:
        print(f"| {row['run']} | {row['stage_s']:.2f} | {row['edges_per_s'] / 1e6:.2f} | "
              + " | ".join(f"{row[k]:.2f}" for k in PARTS) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
