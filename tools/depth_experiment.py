"""Depth experiment (docs/benchmarks.md "Depth"): per-batch rows and peak memory for L = 1..6.

(a) layer-wise LRGI, training layer L on the [N, 128] table of layer L-1: a one-hop
    [10, 5] sample whatever L; (b) end-to-end training of all L layers at once with
    `[10] * L + [5]` sampling (lrgi_ooc.stages.endtoend). Same batch size, width, heads, loss.

Rows: sampled in this process over `--batches` batches. Peak memory: one fresh subprocess
per configuration running `--steps` training steps (peak RSS via getrusage), watched from
here and killed above `--limit`; an end-to-end configuration whose memory, extrapolated from
the previous depth's measurement, exceeds the limit is reported as "does not fit".

    .venv/bin/python -m lrgi_ooc synth --out /tmp/depthexp/synth --nodes 2000000 \
        --avg-degree 20 --feature-dim 128
    .venv/bin/python -m lrgi_ooc preprocess --edges /tmp/depthexp/synth/edges \
        --features /tmp/depthexp/synth/features.npy --labels /tmp/depthexp/synth/labels.npy \
        --undirected --out /tmp/depthexp/graph.zarr
    .venv/bin/python tools/depth_experiment.py --store /tmp/depthexp/graph.zarr
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
GB = 1 << 30


def make_sampler(store, mode: str, L: int, seed: int):
    from lrgi_ooc.sample.multihop import MultiHopSampler, depth_fanouts
    from lrgi_ooc.sample.onehop import OneHopSampler
    indptr, indices = store.indptr(), store.indices()
    if mode == "layerwise":
        return OneHopSampler(indptr, indices, (10, 5), seed=seed)
    return MultiHopSampler(indptr, indices, depth_fanouts(L), seed=seed)


def batch_stats(store, mode: str, L: int, batch_size: int, batches: int, seed: int,
                max_seconds: float = 1e9) -> dict:
    """Rows, conv edges and targets per batch (seed batches of epoch 0; at least 3 batches,
    fewer than `batches` when they take more than `max_seconds`)."""
    s = make_sampler(store, mode, L, seed)
    seeds = s.epoch_batches(np.arange(store.num_nodes), batch_size, 0)[:batches]
    rows, edges, units = [], [], []
    t0 = time.time()
    for step, sd in enumerate(seeds):
        if step >= 3 and time.time() - t0 > max_seconds:
            break
        b = s.sample(sd, 0, step)
        sizes = getattr(b, "hop_sizes", [b.num_targets, b.num_nodes])
        hops = getattr(b, "hop_src", [b.conv_src])
        rows.append(b.num_nodes)
        edges.append(sum(h.size for h in hops))
        # activation units of the encoder: edges (+ one self loop per target) of every block
        units.append(sum(h.size for h in hops) + sum(int(t) for t in sizes[:-1]))
    return {"rows_mean": float(np.mean(rows)), "rows_max": int(np.max(rows)),
            "edges_mean": float(np.mean(edges)), "units_mean": float(np.mean(units)),
            "batches": len(rows)}


# ------------------------------------------------------------------ worker (subprocess)
def worker(args: argparse.Namespace) -> None:
    import torch
    from lrgi_ooc.stages.endtoend import EndToEndEncoder, MultiHopLoader
    from lrgi_ooc.stages.train import train_step
    from lrgi_ooc.sample.loader import BatchLoader
    from lrgi_ooc.nn.model import LRGILayer
    from lrgi_ooc.store.layout import GraphStore

    store = GraphStore(args.store)
    table = store.table(0)                     # width 128: stands for table L-1 as well
    F = int(table.shape[1])
    torch.manual_seed(0)
    s = make_sampler(store, args.mode, args.layers, args.seed)
    if args.mode == "layerwise":
        model = LRGILayer(F, args.dim, heads=args.heads)
        loader = BatchLoader(s, table, np.arange(store.num_nodes), args.batch_size, prefetch=0)
    else:
        model = EndToEndEncoder(F, args.dim, args.layers, heads=args.heads)
        loader = MultiHopLoader(s, table, np.arange(store.num_nodes), args.batch_size,
                                prefetch=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, rows, secs = time.time(), [], []
    with loader:
        for tb in loader:
            t1 = time.time()
            train_step(model, opt, tb, (25.0, 10.0, 1.0))
            secs.append(time.time() - t1)
            rows.append(int(tb.x.shape[0]))
            if len(rows) >= args.steps:
                break
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # pages of the memory-mapped store count in RSS (more of them when the page cache is
    # warm: fault-around); still mapped at the end, so peak - mapped ~ the process's own peak
    with open("/proc/self/status") as f:
        kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f)
              if k in ("RssFile", "RssShmem")}
    mapped = 1024 * sum(kb.values())
    print(json.dumps({"peak_rss": peak, "mapped_file_rss": mapped,
                      "peak_own_rss": peak - mapped, "rss_before_training": base, "rows": rows,
                      "step_seconds": secs, "seconds": time.time() - t0}))


def run_worker(args: argparse.Namespace, mode: str, L: int, limit: int) -> dict:
    """Fresh interpreter; polled, killed (by its pid) when its RSS passes `limit`."""
    import psutil
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--layers", str(L),
           "--store", args.store, "--steps", str(args.steps), "--dim", str(args.dim),
           "--heads", str(args.heads), "--batch-size", str(args.batch_size),
           "--seed", str(args.seed)]
    env = dict(os.environ, LRGI_OOC_QUIET="1")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=REPO)
    proc, seen, killed, t0 = psutil.Process(p.pid), 0, None, time.time()
    while p.poll() is None:
        try:
            seen = max(seen, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        if seen > limit:
            killed = f"RSS passed the {limit / GB:.1f} GB limit"
        elif time.time() - t0 > args.timeout:
            killed = f"took more than {args.timeout} s"
        if killed:
            p.kill()
            break
        time.sleep(0.2)
    out, err = p.communicate()
    if killed:
        return {"status": "killed", "why": killed, "seen_rss": seen}
    if p.returncode != 0:
        return {"status": "failed", "why": err.strip().splitlines()[-1:], "seen_rss": seen}
    return {"status": "ok", **json.loads(out.strip().splitlines()[-1])}


# ------------------------------------------------------------------ the experiment
def predict(runs: list[dict], row: dict, limit: int) -> str | None:
    """Why `row` cannot fit in `limit`, extrapolating peak RSS linearly in the activation
    units (edges + targets of every block) from the two deepest measured runs of its mode;
    None when it may fit (it then runs, watched)."""
    mine = [r for r in runs if r["mode"] == row["mode"] and r["units_mean"] < row["units_mean"]]
    ok = sorted((r for r in mine if r["status"] == "ok"), key=lambda r: r["units_mean"])
    if len(ok) >= 2:
        a, b = ok[-2], ok[-1]
        slope = (b["peak_rss"] - a["peak_rss"]) / max(b["units_mean"] - a["units_mean"], 1.0)
        row["predicted_rss"] = b["peak_rss"] + slope * (row["units_mean"] - b["units_mean"])
    if any(r["status"] != "ok" for r in mine):
        return "a smaller configuration already did not fit"
    if row.get("predicted_rss", 0) > limit:
        return f"predicted {row['predicted_rss'] / GB:.1f} GB > limit {limit / GB:.1f} GB"
    return None


def experiment(args: argparse.Namespace) -> dict:
    import psutil
    from lrgi_ooc.store.layout import GraphStore
    store = GraphStore(args.store)
    res = {"store": args.store, "num_nodes": store.num_nodes, "num_edges": store.num_edges,
           "batch_size": args.batch_size, "dim": args.dim, "heads": args.heads,
           "steps": args.steps, "limit_gb": args.limit / GB, "runs": []}
    done = {}
    if args.resume and Path(args.json).exists():
        done = {(r["mode"], r["L"]): r for r in json.loads(Path(args.json).read_text())["runs"]}
    for L in range(1, args.max_layers + 1):
        for mode in ("layerwise", "e2e"):
            if (mode, L) in done:
                res["runs"].append(done[(mode, L)])
                continue
            st = batch_stats(store, mode, L, args.batch_size, args.batches, args.seed,
                             args.stat_seconds)
            row = {"mode": mode, "L": L, **st}
            limit = int(min(args.limit, psutil.virtual_memory().available - 2 * GB))
            why = predict(res["runs"], row, limit)
            if why:
                row.update(status="does not fit", why=why)
            else:
                row.update(run_worker(args, mode, L, limit))
            print(json.dumps(row), flush=True)
            res["runs"].append(row)
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


def plot(res: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, e, b) = plt.subplots(1, 3, figsize=(15, 4.2))
    style = {"layerwise": ("layer-wise LRGI (layer L, one-hop [10, 5])", "C0", "o"),
             "e2e": ("end-to-end, L layers at once ([10]*L + [5])", "C3", "s")}
    for mode, (label, c, m) in style.items():
        runs = [r for r in res["runs"] if r["mode"] == mode]
        Ls = [r["L"] for r in runs]
        a.plot(Ls, [r["rows_mean"] for r in runs], marker=m, color=c, label=label)
        a.plot(Ls, [r["rows_max"] for r in runs], ls=":", color=c, lw=1)
        e.plot(Ls, [r["edges_mean"] for r in runs], marker=m, color=c, label=label)
        ok = [r for r in runs if r["status"] == "ok"]
        b.plot([r["L"] for r in ok], [r["peak_rss"] / GB for r in ok], marker=m, color=c,
               label=label)
        b.plot([r["L"] for r in ok], [r["peak_own_rss"] / GB for r in ok], ls="--", lw=1,
               color=c)
        for r in runs:
            if r["status"] != "ok":
                y = r.get("predicted_rss", r.get("seen_rss", 0)) / GB
                if y <= 0:
                    continue
                b.scatter([r["L"]], [y], marker=m, facecolors="none", edgecolors=c)
                b.annotate("predicted: does not fit" if r["status"] == "does not fit"
                           else r["status"],
                           (r["L"], y), textcoords="offset points", xytext=(4, 4),
                           fontsize=7, color=c)
    a.axhline(res["num_nodes"], color="gray", ls="--", lw=1)
    a.text(4.2, res["num_nodes"] * 0.6, f"N = {res['num_nodes']:,}", fontsize=8, color="gray")
    b.axhline(res["limit_gb"], color="gray", ls="--", lw=1)
    b.text(1, res["limit_gb"] * 1.08, f"limit {res['limit_gb']:.0f} GiB", fontsize=8,
           color="gray")
    for ax, t in ((a, "sampled rows per batch (mean; dotted: max)"),
                  (e, "sampled conv edges per batch (all hops, mean)"),
                  (b, "peak RSS, GiB (dashed: without mapped store pages)")):
        ax.set_yscale("log")
        ax.set_xlabel("depth L")
        ax.set_title(t, fontsize=10)
        ax.set_xticks(range(1, max(r["L"] for r in res["runs"]) + 1))
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8, loc="center right")
    fig.suptitle(f"N = {res['num_nodes']:,}, E = {res['num_edges']:,}, batch "
                 f"{res['batch_size']}, width {res['dim']}, {res['heads']} heads", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(res: dict) -> str:
    by = {(r["mode"], r["L"]): r for r in res["runs"]}
    lines = ["| L | layer-wise rows (mean / max) | end-to-end rows (mean / max) | rows ratio | "
             "layer-wise peak RSS (own) | end-to-end peak RSS (own) | RSS ratio (own) |",
             "|---|---|---|---|---|---|---|"]
    for L in sorted({r["L"] for r in res["runs"]}):
        a, b = by[("layerwise", L)], by[("e2e", L)]
        mem = lambda r: (f"{r['peak_rss'] / GB:.2f} GiB ({r['peak_own_rss'] / GB:.2f})"
                         if r["status"] == "ok" else
                         f"does not fit ({r.get('why', r['status'])})")
        ratio = (f"{b['peak_rss'] / a['peak_rss']:.1f}x "
                 f"({b['peak_own_rss'] / a['peak_own_rss']:.1f}x)"
                 if b["status"] == "ok" and a["status"] == "ok" else "-")
        lines.append(f"| {L} | {a['rows_mean']:,.0f} / {a['rows_max']:,} | "
                     f"{b['rows_mean']:,.0f} / {b['rows_max']:,} | "
                     f"{b['rows_mean'] / a['rows_mean']:.1f}x | {mem(a)} | {mem(b)} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--max-layers", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="training steps per memory run")
    p.add_argument("--batches", type=int, default=20, help="batches for the row statistics")
    p.add_argument("--stat-seconds", type=float, default=60,
                   help="stop the row statistics after this long (at least 3 batches)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=float, default=16, help="memory limit per run, GB")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--json", default="runs/depth.json")
    p.add_argument("--png", default="docs/depth.png")
    p.add_argument("--plot-only", action="store_true", help="re-plot an existing --json")
    p.add_argument("--resume", action="store_true",
                   help="keep the configurations already in --json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["layerwise", "e2e"], help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    args.limit = int(args.limit * GB)
    out = Path(args.json)
    if args.plot_only:
        res = json.loads(out.read_text())
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        res = experiment(args)
    plot(res, Path(args.png))
    print(table(res))


if __name__ == "__main__":
    main()
