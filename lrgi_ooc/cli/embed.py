"""`lrgi-ooc embed`: flags -> `lrgi_ooc.api.embed_layer`."""
from __future__ import annotations

import argparse

from lrgi_ooc import api
from lrgi_ooc.cli.common import add_dask_options, api_defaults, call

D = api_defaults(api.embed_layer)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--max-edges", type=int, default=D["max_edges"],
                   help="edges processed at once (bounds memory; default %(default)s)")
    p.add_argument("--device", default=D["device"], help="auto, cpu or cuda[:N]")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per output chunk = per task (multiple of 4096; default: ~32 MB)")
    add_budget_options(p, D)
    add_table_dtype(p, D)
    add_dask_options(p)


def add_budget_options(p: argparse.ArgumentParser, defaults: dict) -> None:
    """--memory-limit and --source-blocks (also on `layer`)."""
    p.add_argument("--memory-limit", default=defaults["memory_limit"],
                   help="memory the aggregation may use per machine; beyond it the projection "
                        "is streamed in source blocks (default %(default)s)")
    p.add_argument("--source-blocks", type=int, default=defaults["source_blocks"],
                   help="force this many source blocks (streamed; default: the planner's)")


def add_table_dtype(p: argparse.ArgumentParser, defaults: dict) -> None:
    """--table-dtype (also on `layer`): how the layer's table and projection are stored."""
    p.add_argument("--table-dtype", default=defaults["table_dtype"],
                   help="float32 or float16: the stored layer table and projection (float16: "
                        "half the disk and reads; arithmetic stays float32; default "
                        "%(default)s)")


def main(args: argparse.Namespace) -> int:
    call(api.embed_layer, args)
    return 0
