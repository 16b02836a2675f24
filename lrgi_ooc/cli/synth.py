"""`lrgi-ooc synth`: flags -> `lrgi_ooc.api.synth`, then a one-line summary."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrgi_ooc import api
from lrgi_ooc.cli.common import api_defaults, call
from lrgi_ooc.ingest.synth import RAW_ACCURACY

D = api_defaults(api.synth)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output directory (must not exist)")
    p.add_argument("--nodes", type=int, default=D["nodes"], help="N (default %(default)s)")
    p.add_argument("--avg-degree", type=float, default=D["avg_degree"],
                   help="mean undirected degree; E = N * D / 2 edges (default %(default)s)")
    p.add_argument("--classes", type=int, default=D["classes"], help="default %(default)s")
    p.add_argument("--feature-dim", type=int, default=D["feature_dim"],
                   help="default %(default)s")
    p.add_argument("--homophily", type=float, default=D["homophily"],
                   help="fraction of edges inside a class (default %(default)s)")
    p.add_argument("--seed", type=int, default=D["seed"], help="default %(default)s")
    p.add_argument("--degree-exponent", type=float, default=D["degree_exponent"],
                   help="power-law exponent of the degree tail, > 2 (default %(default)s)")
    p.add_argument("--max-degree", type=float, default=None,
                   help="clip of the largest expected degree (default sqrt(N * D))")
    p.add_argument("--signal", type=float, default=None,
                   help=f"class-mean scale, noise std 1 (default: raw Bayes accuracy "
                        f"{RAW_ACCURACY:.2f})")
    p.add_argument("--edges-per-part", type=int, default=D["edges_per_part"],
                   help="edges per Parquet part file (default %(default)s)")
    p.add_argument("--labelled-fraction", type=float, default=D["labelled_fraction"],
                   help="fraction of nodes that keep their label (-1 elsewhere); below 1, "
                        "train/val/test.npy split them 11:1:2, as ogbn-papers100M "
                        "(default %(default)s: all, no split)")
    p.add_argument("--feature-dtype", default=D["feature_dtype"],
                   help="float32 or float16 (half the bytes) (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synth output")


def main(args: argparse.Namespace) -> int:
    info = call(api.synth, args)
    c, s = info["counts"], info["_seconds"]
    print(f"synth: {args.out}: {args.nodes:,} nodes, {c['edges_written']:,} edges "
          f"({c['self_loops_dropped']:,} self loops dropped), homophily "
          f"{c['realised_homophily']:.3f}, {info['bytes']['per_edge']:.2f} B/edge, "
          f"{c['edges_written'] / max(s['edges'], 1e-9) / 1e6:.3g} M edges/s, "
          f"{s['total']:.1f} s", file=sys.stderr)
    return 0
