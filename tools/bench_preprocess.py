"""Benchmark `lrgi-ooc preprocess` on random edge lists against an in-memory numpy CSR build.

    python tools/bench_preprocess.py --edges 10M,100M [--memory-limit 2GB,256MB] [--json out.json]

For each E: writes E random edges (N = E / 10) as a [2, E] int64 .npy, then runs, each in a
fresh subprocess so that peak RSS is clean: the real CLI (`python -m lrgi_ooc preprocess`, once
per memory limit) and an in-memory numpy build of the same CSR (np.load, argsort by
destination * N + source, then gather: what one would write without this tool). Peak RSS
is the child's ru_maxrss. Prints a markdown table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

NUMPY_BUILD = r"""
import sys, time, numpy as np
t = time.perf_counter()
e = np.load(sys.argv[1])
src, dst = e[0], e[1]
n = int(max(src.max(), dst.max())) + 1
order = np.argsort(dst * n + src)          # rows by destination, ascending sources inside
s, d = src[order], dst[order]
keep = np.ones(len(s), bool)
keep[1:] = (s[1:] != s[:-1]) | (d[1:] != d[:-1])
keep &= s != d
indices = s[keep].astype(np.int32)
indptr = np.zeros(n + 1, np.int64)
np.cumsum(np.bincount(d[keep], minlength=n), out=indptr[1:])
np.save(sys.argv[2], indices)
print(time.perf_counter() - t, len(indices))
"""


def parse_count(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def write_edges(path: Path, num_edges: int, num_nodes: int, seed: int = 0,
                block: int = 1 << 22) -> None:
    """[2, E] int64 .npy written block by block (bounded memory)."""
    rng = np.random.default_rng(seed)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.int64, shape=(2, num_edges))
    for s in range(0, num_edges, block):
        k = min(block, num_edges - s)
        arr[:, s:s + k] = rng.integers(0, num_nodes, (2, k))
    arr.flush()
    del arr


def measured(cmd: list[str]) -> tuple[float, int, str]:
    """Run `cmd` under a wrapper that reports the child's own ru_maxrss (clean per child)."""
    wrapper = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
               "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "w = time.perf_counter() - t; "
               "sys.stderr.write(p.stderr); sys.stdout.write(p.stdout); "
               "print('@@', w, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); "
               "sys.exit(p.returncode)")
    env = dict(os.environ, LRGI_OOC_QUIET="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True,
                       env=env)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    lines = p.stdout.strip().splitlines()
    tag = [ln for ln in lines if ln.startswith("@@ ")][-1].split()
    return float(tag[1]), int(tag[2]), "\n".join(ln for ln in lines if not ln.startswith("@@"))


def bench(num_edges: int, limits: list[str], work: Path) -> list[dict]:
    n = max(num_edges // 10, 1)
    edges = work / f"edges_{num_edges}.npy"
    t = time.perf_counter()
    write_edges(edges, num_edges, n)
    print(f"# wrote {num_edges:,} edges in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    rows = []
    ref = work / "numpy_indices.npy"
    wall, rss, out = measured([sys.executable, "-c", NUMPY_BUILD, str(edges), str(ref)])
    build_s, stored = out.split()[:2]
    rows.append({"edges": num_edges, "nodes": n, "method": "numpy in memory (argsort + gather)",
                 "memory_limit": None, "wall_s": wall, "build_s": float(build_s),
                 "edges_per_s": num_edges / wall, "peak_rss_mb": rss / 2**20,
                 "stored_edges": int(stored)})
    for lim in limits:
        out_dir = work / "store"
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "lrgi_ooc", "preprocess", "--edges", str(edges),
               "--out", str(out_dir)] + (["--memory-limit", lim] if lim != "default" else [])
        wall, rss, out = measured(cmd)
        indices = np.load(ref, mmap_mode="r")
        from lrgi_ooc.store.layout import GraphStore
        st = GraphStore(out_dir)
        mine = st.indices()
        same = mine.shape == indices.shape and all(
            np.array_equal(mine[s:s + (1 << 24)], indices[s:s + (1 << 24)])
            for s in range(0, len(indices), 1 << 24))
        del mine, st
        rows.append({"edges": num_edges, "nodes": n, "method": "lrgi-ooc preprocess",
                     "memory_limit": lim, "wall_s": wall, "edges_per_s": num_edges / wall,
                     "peak_rss_mb": rss / 2**20, "identical_indices": bool(same)})
        shutil.rmtree(out_dir, ignore_errors=True)
    edges.unlink()
    ref.unlink(missing_ok=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| edges | nodes | method | --memory-limit | wall s | edges/s | peak RSS MB "
             "| same CSR |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['edges']:,} | {r['nodes']:,} | {r['method']} | "
                     f"{r['memory_limit'] or '-'} | {r['wall_s']:.1f} | "
                     f"{r['edges_per_s'] / 1e6:.1f} M | {r['peak_rss_mb']:.0f} | "
                     f"{'yes' if r.get('identical_indices', True) else 'NO'} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edges", default="10M", help="comma-separated edge counts (10M,100M)")
    p.add_argument("--memory-limit", default="default",
                   help="comma-separated --memory-limit values for preprocess ('default')")
    p.add_argument("--workdir", help="scratch directory (default: a temp dir)")
    p.add_argument("--json", default="bench_preprocess.json", help="JSON output file")
    a = p.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench_preprocess_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for e in a.edges.split(","):
            rows += bench(parse_count(e), a.memory_limit.split(","), work)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
