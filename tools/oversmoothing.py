"""Oversmoothing (docs/benchmarks.md "Oversmoothing"): per layer of a 6-layer model, linear-probe
test accuracy and the mean pairwise cosine similarity of the embeddings, for layer-wise LRGI
(train_layer + embed_layer, layer by layer) and for the end-to-end baseline (train_e2e).

    .venv/bin/python tools/oversmoothing.py --npz ../shared/datasets/cora.npz

Mean cosine over all pairs i != j, exactly, in one streamed pass:
sum_{i != j} cos(z_i, z_j) = ||sum_i z_i / |z_i| ||^2 - N (rows of norm 0 are left out).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def mean_pairwise_cosine(store, layer: int, rows: int = 65536) -> float:
    """Exact mean of cos(z_i, z_j) over ordered pairs i != j of table `layer`."""
    key = store.table_key(layer)
    total, n = None, 0
    for _, x in store.iter_blocks(key, rows):
        x = x.reshape(len(x), -1).astype(np.float64)
        norm = np.linalg.norm(x, axis=1)
        keep = norm > 0
        s = (x[keep] / norm[keep, None]).sum(axis=0)
        total = s if total is None else total + s
        n += int(keep.sum())
    return float((total @ total - n) / (n * (n - 1)))


def preprocess(npz: str, out: Path) -> None:
    from lrgi_ooc.cli.main import main
    rc = main(["preprocess", "--npz", npz, "--out", str(out), "--overwrite"])
    if rc:
        raise SystemExit(f"preprocess failed ({rc})")


def measure(store, layers: int, probe_epochs: int) -> list[dict]:
    from lrgi_ooc.stages.evaluate import evaluate_store
    out = []
    for l in range(layers + 1):
        r = evaluate_store(store, l, epochs=probe_epochs, num_splits=5, seed=0, device="cpu")
        out.append({"layer": l, "test": r["test_mean"], "test_std": r["test_std"],
                    "val": r["val_mean"], "splits": r["num_splits"],
                    "cosine": mean_pairwise_cosine(store, l)})
    return out


def run(args: argparse.Namespace) -> dict:
    from lrgi_ooc.stages.config import TrainConfig
    from lrgi_ooc.stages.embed import embed_layer
    from lrgi_ooc.stages.endtoend import train_e2e
    from lrgi_ooc.store.layout import GraphStore
    from lrgi_ooc.stages.train import train_layer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lw, e2e = work / "layerwise.zarr", work / "e2e.zarr"
    for p in (lw, e2e):
        preprocess(args.npz, p)
    base = dict(dim=args.dim, heads=args.heads, batch_size=args.batch_size, lr=args.lr,
                seed=args.seed, device="cpu")
    res = {"npz": args.npz, "layers": args.layers, "settings": {
        **base, "layerwise_steps_per_layer": args.steps, "e2e_steps": args.e2e_steps,
        "probe_epochs": args.probe_epochs}}
    t0 = time.time()
    for l in range(1, args.layers + 1):
        train_layer(lw, l, TrainConfig(steps=args.steps, **base))
        embed_layer(lw, l, device="cpu")
    res["layerwise_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    train_e2e(e2e, args.layers, TrainConfig(steps=args.e2e_steps, **base))
    res["e2e_seconds"] = round(time.time() - t0, 1)
    res["layerwise"] = measure(GraphStore(lw), args.layers, args.probe_epochs)
    res["e2e"] = measure(GraphStore(e2e), args.layers, args.probe_epochs)
    return res


def plot(res: dict, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, c, m in (("layerwise", "layer-wise LRGI", "C0", "o"),
                             ("e2e", "end-to-end (all layers jointly)", "C3", "s")):
        rows = res[key]
        x = [r["layer"] for r in rows]
        a.errorbar(x, [100 * r["test"] for r in rows], yerr=[100 * r["test_std"] for r in rows],
                   marker=m, color=c, label=label, capsize=2)
        b.plot(x, [r["cosine"] for r in rows], marker=m, color=c, label=label)
    s = res["settings"]
    a.set_title("linear-probe test accuracy (%)", fontsize=10)
    b.set_title("mean pairwise cosine similarity", fontsize=10)
    for ax in (a, b):
        ax.set_xlabel("layer (0 = input features)")
        ax.set_xticks(range(res["layers"] + 1))
        ax.grid(True, alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle(f"{Path(res['npz']).stem}: width {s['dim']}, {s['heads']} heads, "
                 f"{s['layerwise_steps_per_layer']} steps per layer (layer-wise), "
                 f"{s['e2e_steps']} steps (end-to-end)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(res: dict) -> str:
    lines = ["| layer | layer-wise test acc. (%) | layer-wise mean cosine | "
             "end-to-end test acc. (%) | end-to-end mean cosine |", "|---|---|---|---|---|"]
    for a, b in zip(res["layerwise"], res["e2e"]):
        lines.append(f"| {a['layer']} | {100 * a['test']:.1f} | {a['cosine']:.3f} | "
                     f"{100 * b['test']:.1f} | {b['cosine']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--npz", default=str(REPO.parent / "shared" / "datasets" / "cora.npz"))
    p.add_argument("--work", default="runs/oversmoothing", help="directory for the stores")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100, help="layer-wise: steps per layer")
    p.add_argument("--e2e-steps", type=int, default=None,
                   help="end-to-end steps (default: --steps, the same number of optimiser "
                        "steps per parameter as layer-wise)")
    p.add_argument("--probe-epochs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="runs/oversmoothing.json")
    p.add_argument("--png", default="docs/oversmoothing.png")
    p.add_argument("--plot-only", action="store_true", help="re-plot an existing --json")
    args = p.parse_args()
    if args.e2e_steps is None:
        args.e2e_steps = args.steps
    out = Path(args.json)
    if args.plot_only:
        res = json.loads(out.read_text())
    else:
        res = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
    plot(res, Path(args.png))
    print(table(res))


if __name__ == "__main__":
    main()
