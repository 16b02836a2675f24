"""Sampler throughput on a memory-mapped store CSR versus in-RAM copies, plus loader rows/s.

    .venv/bin/python tools/bench_sampler.py [--nodes 1000000] [--edges 10000000] [--dim 128]

Writes a generated power-law graph (and a float16 table) into a fresh store in a temporary
directory through GraphStore.create_array + stream_writer, then times [10, 5] batches of 512
seeds: sampled edges/s (prop + conv edges) with the memmapped arrays and with in-RAM copies,
interleaved rounds, warm page cache, best and median of the rounds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lrgi_ooc.sample.onehop import OneHopSampler                      # noqa: E402
from lrgi_ooc.store.layout import FEATURES, INDICES, INDPTR, GraphStore  # noqa: E402


def write_graph(store: GraphStore, n: int, m: int, dim: int, seed: int,
                degrees: str = "poisson") -> None:
    """Random CSR with m edges: Poisson in-degrees (uniform endpoints) or Pareto(1.5) ones."""
    rng = np.random.default_rng(seed)
    deg = np.zeros(n, np.int64)
    if degrees == "pareto":
        w = rng.pareto(1.5, n) + 1e-3
        deg = np.floor(w / w.sum() * m).astype(np.int64)
    deg += np.bincount(rng.integers(0, n, m - int(deg.sum())), minlength=n)
    store.create_array(INDPTR, (n + 1,), np.int64)
    w = store.stream_writer(INDPTR)
    w.write(np.concatenate([[0], np.cumsum(deg)]))
    w.close()
    store.create_array(INDICES, (m,), np.int32)
    w = store.stream_writer(INDICES)
    for s in range(0, m, 1 << 22):
        w.write(rng.integers(0, n, min(1 << 22, m - s), dtype=np.int32))
    w.close()
    if dim:
        store.create_array(FEATURES, (n, dim), np.float16)
        w = store.stream_writer(FEATURES)
        for s in range(0, n, 1 << 16):
            w.write(rng.standard_normal((min(1 << 16, n - s), dim), dtype=np.float32))
        w.close()


def time_epoch(sampler: OneHopSampler, batches: list[np.ndarray]) -> tuple[float, int]:
    edges = 0
    t = time.perf_counter()
    for step, seeds in enumerate(batches):
        b = sampler.sample(seeds, 0, step)
        edges += b.conv_src.size + b.prop_src.size
    return time.perf_counter() - t, edges


def bench_loader(store: GraphStore, sampler: OneHopSampler, n: int, batches: int) -> str:
    from lrgi_ooc.sample.loader import BatchLoader
    table = store.table(0)
    np.add.reduce(table[::64], axis=0)                          # touch: warm-ish cache
    seeds = np.arange(n)
    loader = BatchLoader(sampler, table, seeds, 512, prefetch=3)
    rows, t0 = 0, time.perf_counter()
    for i, tb in enumerate(loader):
        rows += tb.x.shape[0]
        if i + 1 == batches:
            break
    loader.close()
    dt = time.perf_counter() - t0
    return (f"loader (sample + gather float16 -> float32 tensor, prefetch 3, no model): "
            f"{batches / dt:.0f} batches/s, {rows / dt / 1e6:.2f} M rows/s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=128, help="float16 table width (0: skip)")
    ap.add_argument("--batches", type=int, default=200, help="batches per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--degrees", choices=("poisson", "pareto"), default="poisson")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        store = GraphStore.create(Path(tmp) / "bench.lrgi",
                                  {"num_nodes": a.nodes, "num_edges": a.edges})
        t = time.perf_counter()
        write_graph(store, a.nodes, a.edges, a.dim, a.seed, a.degrees)
        print(f"wrote {a.nodes:,} nodes / {a.edges:,} edges ({a.degrees} in-degrees) in "
              f"{time.perf_counter() - t:.1f} s")
        mm = OneHopSampler(store.indptr(), store.indices(), (10, 5), seed=1)
        ram = OneHopSampler(np.array(store.indptr()), np.array(store.indices()), (10, 5), seed=1)
        batches = mm.epoch_batches(np.arange(a.nodes), 512, 0)[:a.batches]
        for s in (mm, ram):                                      # JIT + warm page cache
            time_epoch(s, batches)
            np.add.reduce(s.indices[::1024])
        res: dict[str, list[float]] = {"memmap": [], "in-RAM": []}
        per_batch = {}
        for _ in range(a.rounds):
            for name, s in (("memmap", mm), ("in-RAM", ram)):
                dt, edges = time_epoch(s, batches)
                res[name].append(edges / dt)
                per_batch[name] = dt / len(batches)
                per_batch["edges"] = edges / len(batches)
        print(f"[10, 5], 512 seeds: {per_batch['edges']:.0f} sampled edges per batch")
        for name, r in res.items():
            print(f"{name:7s}: best {max(r) / 1e6:.1f} M sampled edges/s, median "
                  f"{statistics.median(r) / 1e6:.1f} M ({per_batch[name] * 1e3:.2f} ms/batch)")
        print(f"memmap / in-RAM (medians): "
              f"{statistics.median(res['memmap']) / statistics.median(res['in-RAM']):.2f}")
        if a.dim:
            print(bench_loader(store, mm, a.nodes, a.batches))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
