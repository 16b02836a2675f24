"""`lrgi-ooc export` throughput and peak RSS against N: is memory independent of the table?

    python tools/bench_export.py [--work /tmp/bench_export] [--sizes 1000000,10000000]
                                 [--dim 64] [--formats parquet,npy] [--subset 1000000]

Builds once per N (kept in --work and reused) a store whose layer-1 table is random float32
[N, dim], written chunk by chunk (65,536 rows at a time: bounded memory). Then, per N and
format, runs `python -m lrgi_ooc export STORE --layer 1 --out X.<format> --overwrite` in a
fresh process and reports wall time, rows/s and that process's peak RSS (ru_maxrss of a
wrapper's only child). With --subset M > 0 it also exports M random node ids (`--nodes`) to
.npy. The table is read from the page cache when it fits in memory (a warm cache: the cost
measured is the export's own, not the disk's). Prints a markdown table. --work holds about
N x dim x 4 bytes per store plus the largest output: delete it afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lrgi_ooc.store.layout import GraphStore  # noqa: E402

WRITE_ROWS = 65536


def build_store(path: Path, n: int, dim: int) -> GraphStore:
    """A store with only a random float32 layer-1 table (reused when already complete)."""
    if path.exists():
        store = GraphStore(path)
        if store.meta.get("bench_table_complete"):
            return store
        import shutil
        shutil.rmtree(path)
    t0 = time.perf_counter()
    store = GraphStore.create(path, {"num_nodes": n, "num_edges": 0})
    key = store.table_key(1)
    store.create_array(key, (n, dim), np.float32)
    w = store.stream_writer(key)
    rng = np.random.default_rng(0)
    for s in range(0, n, WRITE_ROWS):
        w.write(rng.standard_normal((min(WRITE_ROWS, n - s), dim), dtype=np.float32))
    w.close()
    store.update_meta(bench_table_complete=True)
    print(f"built {path} ({n:,} x {dim}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return store


def child(argv: list[str]) -> None:
    """Wrapper mode: run argv, print JSON {rc, wall_s, peak_rss_bytes} of that one child."""
    env = dict(os.environ, LRGI_OOC_QUIET="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    r = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"rc": r.returncode, "wall_s": wall, "peak_rss_bytes": rss,
                      "stdout": r.stdout.strip(), "stderr": r.stderr.strip()}))


def measure(argv: list[str]) -> dict:
    """One export in a fresh wrapper process, so ru_maxrss covers that export alone."""
    r = subprocess.run([sys.executable, __file__, "--_child", json.dumps(argv)],
                       capture_output=True, text=True, check=True)
    res = json.loads(r.stdout)
    if res["rc"] != 0:
        raise SystemExit(f"export failed: {res['stderr']}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench_export")
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--formats", default="parquet,npy")
    ap.add_argument("--subset", type=int, default=1_000_000,
                    help="also export this many random node ids (--nodes) to .npy; 0: skip")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child is not None:
        child(json.loads(args._child))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows_out = []
    for n in (int(s) for s in args.sizes.split(",")):
        store = build_store(work / f"n{n}.zarr", n, args.dim)
        runs = [(f, None) for f in args.formats.split(",")]
        if args.subset:
            ids = np.random.default_rng(1).integers(0, n, args.subset, dtype=np.int64)
            np.save(work / "ids.npy", ids)
            runs.append(("npy", work / "ids.npy"))
        for fmt, nodes in runs:
            out = work / f"out.{fmt}"
            argv = [sys.executable, "-m", "lrgi_ooc", "export", str(store.path), "--layer",
                    "1", "--out", str(out), "--overwrite"]
            if nodes is not None:
                argv += ["--nodes", str(nodes)]
            res = measure(argv)
            rows = args.subset if nodes is not None else n
            rows_out.append((n, fmt + (f" --nodes ({rows:,} random ids)" if nodes else ""),
                             rows, res["wall_s"], rows / res["wall_s"],
                             res["peak_rss_bytes"] / 2**20, out.stat().st_size / 2**20))
            out.unlink()
            print(f"N={n:,} {fmt}{' nodes' if nodes else ''}: {res['stdout']}", file=sys.stderr)
    print("\n| N | format | rows | wall (s) | rows/s | peak RSS (MiB) | file (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for n, fmt, rows, wall, rate, rss, size in rows_out:
        print(f"| {n:,} | {fmt} | {rows:,} | {wall:.1f} | {rate / 1e6:.2f} M | {rss:.0f} | "
              f"{size:,.0f} |")


if __name__ == "__main__":
    main()
