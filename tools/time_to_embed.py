"""Time to embeddings (issue 13): preprocess, then `layer 1` and `layer 2` with the defaults,
each command a fresh process, one dataset at a time. Prints one row per dataset: steps a
layer, train / embed seconds (stage records), wall of each `layer` command, peak RSS.

    .venv/bin/python tools/time_to_embed.py --datasets cora,chameleon --work /tmp/tte

Run it alone on the machine (it is a timing); numba's cache should be warm (any earlier run).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench_preprocess import measured  # the fresh-process wall / ru_maxrss wrapper

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"


def _run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS MiB) of one `lrgi-ooc` command in a fresh process."""
    try:
        wall, rss, _ = measured([sys.executable, "-m", "lrgi_ooc", *args])
    except RuntimeError as e:
        sys.exit(f"time_to_embed: {' '.join(args[:2])} failed: {str(e)[-500:]}")
    return wall, rss // 2**20


def one(name: str, work: Path) -> dict:
    from lrgi_ooc.store.layout import GraphStore, embed_stage, train_stage
    store = work / f"{name}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    _run(["preprocess", "--npz", str(DATASETS / f"{name}.npz"), "--out", str(store)])
    row: dict = {"dataset": name}
    for layer in (1, 2):
        wall, rss = _run(["layer", str(store), "--layer", str(layer)])
        g = GraphStore(store)
        tr, em = g.stage_record(train_stage(layer)), g.stage_record(embed_stage(layer))
        row[f"layer{layer}"] = {"steps": tr.get("steps"), "train_s": tr.get("seconds"),
                                "embed_s": em.get("seconds"), "wall_s": round(wall, 1),
                                "peak_rss_mib": rss}
    row["total_wall_s"] = round(row["layer1"]["wall_s"] + row["layer2"]["wall_s"], 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="cora,chameleon,amazon_photo,coauthor_cs,tolokers")
    ap.add_argument("--work", type=Path, default=Path("/tmp/time_to_embed"))
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| dataset | steps a layer | layer 1 train / embed / wall (s) "
          "| layer 2 train / embed / wall (s) | total wall (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for name in a.datasets.split(","):
        r = one(name, a.work)
        rows.append(r)
        l1, l2 = r["layer1"], r["layer2"]
        print(f"| {name} | {l1['steps']} | {l1['train_s']} / {l1['embed_s']} / {l1['wall_s']} "
              f"| {l2['train_s']} / {l2['embed_s']} / {l2['wall_s']} | {r['total_wall_s']} "
              f"| {max(l1['peak_rss_mib'], l2['peak_rss_mib'])} |", flush=True)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
