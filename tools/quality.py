#!/usr/bin/env python
"""Quality check with DEFAULT settings, linear probes, on the five shared datasets.

For each dataset: the raw-feature probe (layer 0), a randomly initialised, untrained encoder
of the same shape, trained LRGI per layer (LRGI.md's probe: no weight decay, one layer), the
concatenation of layers 1..L under the same probe, and the `l2` probe (weight decay chosen on
validation, as GraphMAE / BGRL tune theirs) of layer L and of the concatenation, over several
training seeds. Chameleon and Tolokers use their 10 stored splits, Amazon Photo and Coauthor
CS 5 random 10/10/80 splits, Cora its public split; each figure uses the metric its labels
call for (Tolokers: ROC-AUC). Prints one markdown table and writes JSON.

    .venv/bin/python tools/quality.py --seeds 0,1,2 --out bench-results/quality.json
    .venv/bin/python tools/quality.py --datasets cora --seeds 0 --steps 5 --epochs 20  # smoke
    .venv/bin/python tools/quality.py --table-dtype float16 --out bench-results/quality-f16.json
    .venv/bin/python tools/quality.py --probes lrgi --label lr5e-4 --layer-args "--lr 5e-4"  # sweep

`--layer-args` passes training options to every `lrgi-ooc layer` (a setting of the defaults
sweep); `--probes lrgi` keeps only LRGI.md's probe (raw, each layer, the concatenation and
the residual sum), the quick form a sweep uses. "sum L-1+L" probes H^(L-1) + H^L: with
`--no-residual`, what the last table would be with a residual from the previous one added at
embed time; under the default `--residual` (H^L is already H^(L-1) + f(H^(L-1))) it weighs the
previous table twice.

`--table-dtype float16` stores the trained layers' tables as float16 (the untrained baseline
stays float32); compare its JSON with a float32 run's (issue 12: within 0.3 points).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
ALL = "cora,amazon_photo,coauthor_cs,chameleon,tolokers"
os.environ.setdefault("LRGI_OOC_QUIET", "1")


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lrgi_ooc", *args], check=True, cwd=ROOT)


def untrained(store_path: Path, seed: int, layers: int, probe: dict[str, Any]) -> list[float]:
    """Probe scores of layers 1..L of a freshly initialised encoder (default shape); it
    overwrites the store's layer tables, so it runs after the trained layers' probes."""
    from lrgi_ooc.stages.config import TrainConfig
    from lrgi_ooc.stages.embed import block_forward
    from lrgi_ooc.stages.evaluate import evaluate_store
    from lrgi_ooc.stages.train import build_model, uses_residual
    from lrgi_ooc.store.layout import GraphStore, embeddings_key

    s = GraphStore(store_path)
    cfg = TrainConfig(seed=seed)
    x = np.asarray(s.table(0), dtype=np.float32)
    out = []
    for layer in range(1, layers + 1):
        block = build_model(x.shape[1], cfg, uses_residual(cfg, layer, x.shape[1])).block.eval()
        x = block_forward(block, x, s.indptr(), s.indices(), np.arange(s.num_nodes))
        key = embeddings_key(layer)
        s.create_array(key, x.shape, np.float32)
        w = s.stream_writer(key)
        w.write(x)
        w.close()
        out.append(evaluate_store(s, layer, **probe)["test_mean"])
    return out


def residual_sum(g: Any, depth: int, spare: int, probe: dict[str, Any]) -> float:
    """Probe score of H^(depth-1) + H^depth, written as table `spare` (the store is a copy)."""
    from lrgi_ooc.stages.evaluate import evaluate_store
    from lrgi_ooc.store.layout import embeddings_key

    x = (np.asarray(g.table(depth), dtype=np.float32)
         + np.asarray(g.table(depth - 1), dtype=np.float32))
    key = embeddings_key(spare)
    g.create_array(key, x.shape, np.float32)
    w = g.stream_writer(key)
    w.write(x)
    w.close()
    return evaluate_store(g, spare, **probe)["test_mean"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=ALL, help=f"comma-separated (default {ALL})")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds")
    ap.add_argument("--layers", type=int, default=2, help="LRGI layers (default 2)")
    ap.add_argument("--probe-layer", type=int, default=None,
                    help="layer of the concat, sum, l2 and untrained probes (default: "
                         "min(--layers, 2), the default model's last layer)")
    ap.add_argument("--num-splits", type=int, default=5,
                    help="random splits where the dataset has none")
    ap.add_argument("--epochs", type=int, default=1000, help="probe epochs (default 1000)")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps per layer (default: the training default; for smoke runs)")
    ap.add_argument("--table-dtype", default="float32", choices=["float32", "float16"],
                    help="`layer --table-dtype` for the trained layers (default float32)")
    ap.add_argument("--layer-args", default="", help="extra `lrgi-ooc layer` options (quoted)")
    ap.add_argument("--deep-layer-args", default="",
                    help="extra options for layers 2.. only, after --layer-args (quoted)")
    ap.add_argument("--probes", default="full", choices=["full", "lrgi"],
                    help="full: every probe and the untrained encoder; lrgi: LRGI.md's probe only")
    ap.add_argument("--label", default="defaults", help="name of the setting (in the JSON)")
    ap.add_argument("--out", default="bench-results/quality.json")
    args = ap.parse_args()
    from lrgi_ooc.stages.evaluate import evaluate_store
    from lrgi_ooc.store.layout import GraphStore

    seeds = [int(s) for s in args.seeds.split(",")]
    trained = args.layers
    depth = args.probe_layer or min(trained, 2)
    if not 1 <= depth <= trained:
        raise SystemExit("--probe-layer: must be in 1..--layers")
    probe = {"num_splits": args.num_splits, "epochs": args.epochs}
    rows = []
    work = Path(tempfile.mkdtemp(prefix="lrgi-quality-"))
    try:
        for name in args.datasets.split(","):
            base = work / f"{name}.zarr"
            cli("preprocess", "--npz", str(DATASETS / f"{name}.npz"), "--out", str(base))
            raw = evaluate_store(GraphStore(base), 0, **probe)
            res: dict[str, list] = {f"lrgi{i}": [] for i in range(1, trained + 1)}
            res.update({f"untrained{i}": [] for i in range(1, depth + 1)})
            res.update({"concat": [], "sum": [], "l2_probe": [], "l2_probe_concat": [],
                        "l2_weight_decays": [], "sec": []})
            for seed in seeds:
                st = work / f"{name}-{seed}.zarr"
                shutil.copytree(base, st)
                t0 = time.time()
                steps = ["--steps", str(args.steps)] if args.steps else []
                for layer in range(1, trained + 1):
                    cli("layer", str(st), "--layer", str(layer), "--seed", str(seed), *steps,
                        "--table-dtype", args.table_dtype, *shlex.split(args.layer_args),
                        *(shlex.split(args.deep_layer_args) if layer > 1 else []))
                res["sec"].append(time.time() - t0)
                g = GraphStore(st)
                for layer in range(1, trained + 1):
                    res[f"lrgi{layer}"].append(evaluate_store(g, layer, **probe)["test_mean"])
                res["concat"].append(evaluate_store(g, depth, concat=True, **probe)["test_mean"])
                if depth >= 2:
                    res["sum"].append(residual_sum(g, depth, trained + 1, probe))
                if args.probes == "full":
                    l2 = evaluate_store(g, depth, probe="l2", **probe)
                    res["l2_probe"].append(l2["test_mean"])
                    res["l2_weight_decays"].append([s["weight_decay"] for s in l2["per_split"]])
                    res["l2_probe_concat"].append(evaluate_store(g, depth, probe="l2",
                                                                 concat=True, **probe)["test_mean"])
                    for i, v in enumerate(untrained(st, seed, depth, probe), start=1):
                        res[f"untrained{i}"].append(v)
                shutil.rmtree(st, ignore_errors=True)
                partial(args.out, rows, dataset_row(args, name, raw, seeds[:len(res["sec"])],
                                                    res, trained, depth))
            row = dataset_row(args, name, raw, seeds, res, trained, depth)
            rows.append(row)
            print(json.dumps(row), flush=True)
            save(args.out, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows, trained, depth))
    return 0


def dataset_row(args: argparse.Namespace, name: str, raw: dict[str, Any], seeds: list[int],
                res: dict[str, list], trained: int, depth: int) -> dict[str, Any]:
    """One dataset's JSON row over the seeds done so far."""
    return {"dataset": name, "metric": raw["metric"], "num_splits": raw["num_splits"],
            "split_source": raw["split_source"], "raw": raw["test_mean"],
            "seeds": seeds, "layers": trained, "probe_layer": depth,
            "probe_epochs": args.epochs, "steps": args.steps, "table_dtype": args.table_dtype,
            "label": args.label, "layer_args": args.layer_args,
            "deep_layer_args": args.deep_layer_args, **res}


def save(out: str, rows: list[dict[str, Any]]) -> None:
    """The JSON so far, written tmp + rename: a run stopped (or killed) after any seed keeps
    every seed it finished."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(rows, indent=2))
    os.replace(tmp, path)


def partial(out: str, rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """After each seed: the finished datasets and this one's row, marked partial."""
    save(out, rows + [{**row, "partial": True}])


def table(rows: list[dict[str, Any]], trained: int, depth: int) -> str:
    """dataset | metric | raw | untrained L1..L | LRGI L1..L | concat | sum | l2 | l2 concat | s
    (columns a `--probes lrgi` run did not fill are left out)."""
    pct = lambda v: f"{100 * np.mean(v):.2f} ± {100 * np.std(v):.2f}" if len(v) else ""
    names = ([("raw", "raw")] + [(f"untrained L{i}", f"untrained{i}") for i in range(1, depth + 1)]
             + [(f"LRGI L{i}", f"lrgi{i}") for i in range(1, trained + 1)]
             + [(f"concat 1..{depth}", "concat"), (f"sum L{depth - 1}+L{depth}", "sum"),
                (f"l2 L{depth}", "l2_probe"), (f"l2 concat 1..{depth}", "l2_probe_concat")])
    names = [(c, k) for c, k in names if k == "raw" or any(len(r.get(k, [])) for r in rows)]
    cols = ["dataset", "metric"] + [c for c, _ in names] + ["train+embed s per seed"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = ([r["dataset"], r["metric"]]
                 + [f"{100 * r['raw']:.2f}" if k == "raw" else pct(r.get(k, []))
                    for _, k in names] + [f"{np.mean(r['sec']):.0f}"])
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
