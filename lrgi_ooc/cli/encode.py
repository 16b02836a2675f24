"""`lrgi-ooc encode MODEL_STORE TARGET_STORE`: flags -> `lrgi_ooc.api.encode`."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.cli.common import add_dask_options, api_defaults, call

D = api_defaults(api.encode)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL_STORE", help="store whose trained layers are applied")
    p.add_argument("target", metavar="TARGET_STORE",
                   help="preprocessed store (same feature width) that receives the tables")
    p.add_argument("--layers", default=D["layers"],
                   help="layers to apply: 1..L (default: every trained layer), a..b or a,b")
    p.add_argument("--max-edges", type=int, default=D["max_edges"],
                   help="edges processed at once (bounds memory; default %(default)s)")
    p.add_argument("--device", default=D["device"], help="auto, cpu or cuda[:N]")
    add_dask_options(p)


def main(args: argparse.Namespace) -> int:
    recs = call(api.encode, args)
    print(f"{args.target}: encoded layers {', '.join(str(r['config']['layer']) for r in recs)} "
          f"with the weights of {args.model}")
    return 0
