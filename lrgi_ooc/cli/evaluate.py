"""`lrgi-ooc evaluate`: flags -> `lrgi_ooc.api.evaluate`, then the result as a table."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.cli.common import api_defaults, call

D = api_defaults(api.evaluate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="the graph store (a directory)")
    p.add_argument("--layer", type=int, required=True, help="table to probe: 0 = raw features")
    p.add_argument("--json", metavar="OUT", help="write the result as JSON")
    p.add_argument("--num-splits", type=int, default=D["num_splits"],
                   help="random 10/10/80 splits when the store has none (default 5)")
    p.add_argument("--seed", type=int, default=D["seed"],
                   help="seed of the random splits (when the store has none)")
    p.add_argument("--epochs", type=int, default=D["epochs"],
                   help="full-batch epochs (default 1000)")
    p.add_argument("--stream", action="store_const", const=True, default=D["stream"],
                   help="stream mini-batches from disk (default: only above --memory-limit)")
    p.add_argument("--memory-limit", default=D["memory_limit"],
                   help="resident rows budget (default 2GB)")
    p.add_argument("--batch-rows", type=int, default=D["batch_rows"],
                   help="rows per streamed batch")
    p.add_argument("--device", choices=["cpu", "cuda"], default=D["device"])
    p.add_argument("--probe", default=D["probe"],
                   help="lrgi: LRGI.md's protocol, no weight decay (default); l2: weight decay "
                        "chosen on validation from a grid of 1e-6 .. 1e-1")
    p.add_argument("--concat", action="store_true", default=D["concat"],
                   help="probe layers 1..L side by side (L = --layer)")
    p.add_argument("--concat-raw", action="store_true", default=D["concat_raw"],
                   help="probe layers 0..L side by side (the raw features too)")
    p.add_argument("--metric", default=D["metric"],
                   help="accuracy, roc_auc or micro_f1 (default: accuracy for classes, "
                        "roc_auc (and accuracy) for binary labels, micro_f1 for multi-label)")
    p.add_argument("--weight-decays", metavar="W,W,...", default=None,
                   help="the l2 probe's grid (default 1e-6 .. 1e-1, half decades: 11 values)")


def main(args: argparse.Namespace) -> int:
    from lrgi_ooc.stages.evaluate import format_table
    if args.weight_decays is not None:      # numbers checked, with the flag named, by the API
        args.weight_decays = [v.strip() for v in args.weight_decays.split(",")]
    print(format_table([call(api.evaluate, args)]))
    return 0
