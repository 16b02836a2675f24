"""`lrgi-ooc info` and `validate`: flags -> `lrgi_ooc.api`, then the report as text or JSON."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lrgi_ooc import api


def add_info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def print_info(i: dict[str, Any]) -> None:
    print(f"store        {i['path']}  (format v{i['format_version']}, "
          f"{i['bytes_on_disk'] / 2**20:.1f} MiB)")
    print(f"nodes        {i['num_nodes']:,}")
    print(f"edges        {i['num_edges']:,}  (symmetrized: {i['symmetrized']}, self loops "
          f"removed: {i['self_loops_removed']}, duplicates removed: {i['duplicates_removed']})")
    for key, a in i["arrays"].items():
        print(f"  {key:<14} {a['dtype']:<8} {a['shape']}  chunks of {a['chunk_rows']} rows")
    if i["num_features"]:
        print(f"features     {i['num_features']} x {i['feature_dtype']}")
    else:
        print("features     none (train needs node features: re-run preprocess --features)")
    d = i["in_degree"]
    if d:
        q = ", ".join(f"p{float(k) * 100:g}={v}" for k, v in d["quantiles"].items())
        print(f"in-degree    min {d['min']}, mean {d['mean']:.2f}, max {d['max']}, {q}; "
              f"zero in-degree: {d['zero_degree']:,}")
    lab = i["labels"]
    if lab is None:
        print("labels       none")
    elif lab["kind"] == "multilabel":
        print(f"labels       multi-label, {lab['num_classes']} tasks, positive rate "
              f"{lab['positive_rate']:.3f}")
    else:
        counts = lab["class_counts"]
        shown = counts if len(counts) <= 20 else counts[:20] + ["..."]
        print(f"labels       {lab['num_classes']} classes, counts {shown}, "
              f"unlabelled {lab['unlabelled']:,}")
    if i["splits"]:
        s = i["splits"][0]
        more = f" (x{len(i['splits'])} splits)" if len(i["splits"]) > 1 else ""
        print("splits       " + ", ".join(f"{p} {v:,}" for p, v in s.items()) + more)
    else:
        print("splits       none")
    ids = i.get("ids") or {}
    if ids.get("remapped"):
        print(f"ids          {ids['kind']} (remapped to 0..N-1 in the ids' order), first: "
              + ", ".join(map(str, ids["sample"])))
    else:
        print("ids          dense integers 0..N-1")
    if i["layers"]:
        print(f"layers       {i['layers']}")
    for name, t in i["stages"].items():
        print(f"stage        {name:<20} completed {t}")


def main_info(a: argparse.Namespace) -> int:
    i = api.info(a.store)
    if a.json:
        print(json.dumps(i, default=str))
    else:
        print_info(i)
    return 0


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory")


def main_validate(a: argparse.Namespace) -> int:
    problem = api.validate(a.store)
    if problem is None:
        print(f"{Path(a.store)}: OK")
        return 0
    print(f"{Path(a.store)}: CORRUPT: {problem}")
    return 1
