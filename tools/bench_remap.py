#!/usr/bin/env python3
"""Preprocess with remapped ids against dense ids, on the same graph (issue 16).

Writes three Parquet edge lists of the same topology (N nodes, E directed edges, uniform
endpoints): dense ids 0..N-1, random int64 ids (a pool of N distinct random 64-bit values),
and string ids (`user-<16 hex digits>`, 21 bytes). Then runs the real CLI on each, in a fresh
process (`python -m lrgi_ooc preprocess --edges ... --undirected --memory-limit M`), and
prints wall seconds, input edges/s and peak RSS. `--repeat R` runs R rounds, each of every
kind in turn, and reports the best wall time and each round's ratio to its own dense run (on
this VM, runs minutes apart differ by up to 2x). `--read-only` times only what every
preprocess of that input must do first, reading the id columns as the remap reads them
(`ingest.edges.open_id_edges`): a floor under each kind's preprocess time.

    .venv/bin/python tools/bench_remap.py --work /tmp/bench_remap --edges 100000000 \\
        --nodes 10000000 --memory-limit 4GB
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 1 << 22


def pools(n: int, seed: int) -> dict[str, pa.Array]:
    rng = np.random.default_rng(seed)
    ints = np.unique(rng.integers(-2**63, 2**63 - 1, size=int(n * 1.01), dtype=np.int64))
    ints = rng.permutation(ints)[:n]
    hexes = np.char.add("user-", np.char.zfill(np.char.mod("%x", rng.integers(
        0, 2**62, size=n, dtype=np.int64)), 16))
    return {"dense": pa.array(np.arange(n, dtype=np.int64)), "int64": pa.array(ints),
            "string": pa.array(hexes.astype(str))}


def write_inputs(work: Path, n: int, e: int, seed: int) -> dict[str, Path]:
    out = {k: work / f"edges-{k}.parquet" for k in ("dense", "int64", "string")}
    if all(p.exists() for p in out.values()):
        return out
    pool = pools(n, seed)
    rng = np.random.default_rng(seed + 1)
    writers = {k: pq.ParquetWriter(out[k], pa.schema([("src", pool[k].type),
                                                      ("dst", pool[k].type)]))
               for k in out}
    for a in range(0, e, BLOCK):
        k = min(BLOCK, e - a)
        s = pa.array(rng.integers(0, n, k))
        d = pa.array(rng.integers(0, n, k))
        for kind, w in writers.items():
            w.write_table(pa.table({"src": pool[kind].take(s), "dst": pool[kind].take(d)}),
                          row_group_size=1 << 20)
    for w in writers.values():
        w.close()
    return out


WRAPPER = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(u.ru_maxrss, u.ru_utime + u.ru_stime); "
           "sys.exit(p.returncode)")


def run(edges: Path, out: Path, limit: str,
        partitioned: bool = False) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of one preprocess process (a wrapper reads
    its rusage). CPU time leaves out the time a busy VM host takes the cores away."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    rss, cpu = _last_line([WRAPPER, sys.executable, "-m", "lrgi_ooc", "preprocess", "--edges",
                           str(edges), "--undirected", "--memory-limit", limit, "--out",
                           str(out)],
                          {"LRGI_OOC_QUIET": "1",
                           "LRGI_OOC_REMAP_IN_MEMORY": "0" if partitioned else "1"})
    return time.time() - t0, int(rss) / 1024, float(cpu)


def _last_line(args: list[str], env: dict[str, str]) -> list[str]:
    """The fields of the last line printed by `python -c ARGS...` (the benchmark stops with
    the child's error if it fails)."""
    p = subprocess.run([sys.executable, "-c", *args], cwd=ROOT, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin", **env})
    if p.returncode:
        sys.exit(p.stderr[-3000:])
    return p.stdout.strip().splitlines()[-1].split()


READ = ("import resource, sys, time; from lrgi_ooc.ingest.edges import open_id_edges; "
        "t = time.time(); [None for _ in open_id_edges(sys.argv[1]).chunks()]; "
        "u = resource.getrusage(resource.RUSAGE_SELF); "
        "print(time.time() - t, u.ru_utime + u.ru_stime, u.ru_maxrss)")


def read_only(edges: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds) of reading `edges`' id columns once, in a
    fresh process, as the remap's first pass reads them (nothing hashed or written)."""
    wall, cpu, rss = _last_line([READ, str(edges)], {})
    return float(wall), int(rss) / 1024, float(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_remap"))
    ap.add_argument("--edges", type=int, default=100_000_000)
    ap.add_argument("--nodes", type=int, default=10_000_000)
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--kinds", default="dense,int64,string")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partitioned", action="store_true",
                    help="force the bucket-file passes even when the dictionary fits")
    ap.add_argument("--read-only", action="store_true",
                    help="time only the reading of each input's id columns (a floor)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    inputs = write_inputs(a.work, a.nodes, a.edges, a.seed)
    print(f"inputs ready ({time.time() - t0:.0f} s): "
          + ", ".join(f"{k} {p.stat().st_size / 2**30:.2f} GiB" for k, p in inputs.items()))
    kinds = a.kinds.split(",")
    # rounds interleave the kinds, so that a VM's slow minutes hit every kind alike; each
    # round's ratios are to that round's dense run
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    rss: dict[str, float] = {}
    for r in range(a.repeat):
        for kind in kinds:
            wall, peak, cpu = read_only(inputs[kind]) if a.read_only else \
                run(inputs[kind], a.work / f"{kind}.zarr", a.memory_limit,
                    a.partitioned and kind != "dense")
            walls[kind].append(wall)
            cpus[kind].append(cpu)
            rss[kind] = max(rss.get(kind, 0.0), peak)
            shutil.rmtree(a.work / f"{kind}.zarr", ignore_errors=True)
        print(f"round {r + 1}: " + ", ".join(f"{k} {walls[k][-1]:.1f} s ({cpus[k][-1]:.1f} s "
                                             "CPU)" for k in kinds), flush=True)
    print("| ids | wall (s), best | CPU (s), best | input edges/s | peak RSS (MiB) | "
          "vs dense, best | vs dense, per round |")
    print("|---|---|---|---|---|---|---|")
    dense = walls.get("dense")
    for kind in kinds:
        best = min(walls[kind])
        ratio = per = ""
        if dense:
            ratio = f"{best / min(dense):.2f}x"
            per = " / ".join(f"{w / d:.2f}x" for w, d in zip(walls[kind], dense))
        print(f"| {kind} | {best:.1f} | {min(cpus[kind]):.1f} | {a.edges / best / 1e6:.2f} M | "
              f"{rss[kind]:.0f} | "
              f"{ratio} | {per} |", flush=True)

if __name__ == "__main__":
    main()
