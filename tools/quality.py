#!/usr/bin/env python
"""Quality check with DEFAULT settings (2 layers), linear probe, on the shared datasets.

For each dataset: the raw-feature probe (layer 0), a randomly initialised, untrained
encoder of the same shape under the same probe, and trained LRGI (layers 1 and 2), over
several training seeds. Prints a markdown table and writes JSON.

    .venv/bin/python tools/quality.py --datasets cora,amazon_photo,coauthor_cs \
        --seeds 0,1,2 --out bench-results/quality.json
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

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
os.environ.setdefault("LRGI_OOC_QUIET", "1")


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lrgi_ooc", *args], check=True, cwd=ROOT)


def untrained(store_path: Path, seed: int, num_splits: int) -> list[float]:
    """Probe scores of layers 1..2 of a freshly initialised encoder (default shape)."""
    from lrgi_ooc.stages.config import TrainConfig
    from lrgi_ooc.stages.embed import block_forward
    from lrgi_ooc.stages.evaluate import evaluate_store
    from lrgi_ooc.store.layout import GraphStore, embeddings_key
    from lrgi_ooc.stages.train import build_model

    s = GraphStore(store_path)
    cfg = TrainConfig(seed=seed)
    x = np.asarray(s.table(0), dtype=np.float32)
    out = []
    for layer in (1, 2):
        block = build_model(x.shape[1], cfg).block.eval()
        x = block_forward(block, x, s.indptr(), s.indices(), np.arange(s.num_nodes))
        key = embeddings_key(layer)
        s.create_array(key, x.shape, np.float32)
        w = s.stream_writer(key)
        w.write(x)
        w.close()
        out.append(evaluate_store(s, layer, num_splits=num_splits)["test_mean"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="cora,amazon_photo,coauthor_cs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--num-splits", type=int, default=5)
    ap.add_argument("--out", default="bench-results/quality.json")
    args = ap.parse_args()
    from lrgi_ooc.stages.evaluate import evaluate_store
    from lrgi_ooc.store.layout import GraphStore

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="lrgi-quality-"))
    try:
        for name in args.datasets.split(","):
            base = work / f"{name}.zarr"
            cli("preprocess", "--npz", str(DATASETS / f"{name}.npz"), "--out", str(base))
            raw = evaluate_store(GraphStore(base), 0, num_splits=args.num_splits)["test_mean"]
            res: dict[str, list] = {"l1": [], "l2": [], "u1": [], "u2": [], "sec": []}
            for seed in seeds:
                st = work / f"{name}-{seed}.zarr"
                shutil.copytree(base, st)
                t0 = time.time()
                for layer in (1, 2):
                    cli("layer", str(st), "--layer", str(layer), "--seed", str(seed))
                res["sec"].append(time.time() - t0)
                for layer in (1, 2):
                    r = evaluate_store(GraphStore(st), layer, num_splits=args.num_splits)
                    res[f"l{layer}"].append(r["test_mean"])
                u = untrained(st, seed, args.num_splits)
                res["u1"].append(u[0])
                res["u2"].append(u[1])
            row = {"dataset": name, "raw": raw, "seeds": seeds,
                   **{k: [float(v) for v in vs] for k, vs in res.items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    pct = lambda v: f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}"
    print("| dataset | raw features | untrained L1 | untrained L2 | LRGI L1 | LRGI L2 | train+embed s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {100 * r['raw']:.2f} | {pct(r['u1'])} | {pct(r['u2'])} | "
              f"{pct(r['l1'])} | {pct(r['l2'])} | {np.mean(r['sec']):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
